//! `sockpest SOCKET CLIENTS SECONDS`: every second for SECONDS, opens CLIENTS connections to
//! SOCKET at once; half send nothing, the other half garbage (a junk line, bytes without a
//! newline, or a line over the 64 KiB request limit); all are held open until the next round.
//! Prints how many connections were made and refused, so a PID 1 that stops accepting shows.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: sockpest SOCKET CLIENTS SECONDS");
        std::process::exit(2);
    }
    let (path, clients, seconds) = (&args[1], num(&args[2]), num(&args[3]));
    let garbage: [Vec<u8>; 3] = [
        b"{\"version\": 99, \"request\": \"nonsense\"\n".to_vec(),
        vec![0xff; 300],
        vec![b'x'; 70 * 1024],
    ];
    let (mut made, mut refused) = (0u64, 0u64);
    let end = Instant::now() + Duration::from_secs(seconds as u64);
    while Instant::now() < end {
        let round = Instant::now();
        let mut held = Vec::with_capacity(clients);
        for i in 0..clients {
            match UnixStream::connect(path) {
                Ok(mut s) => {
                    made += 1;
                    if i % 2 == 1 {
                        let _ = s.set_nonblocking(true);
                        let _ = s.write(&garbage[i / 2 % garbage.len()]);
                    }
                    held.push(s);
                }
                Err(_) => refused += 1,
            }
        }
        std::thread::sleep(Duration::from_secs(1).saturating_sub(round.elapsed()));
        drop(held);
    }
    println!("SOCKPEST connections={made} refused={refused}");
}

fn num(s: &str) -> usize {
    s.parse().unwrap_or_else(|_| {
        eprintln!("sockpest: {s:?} is not a number");
        std::process::exit(2)
    })
}
