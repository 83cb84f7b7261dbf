//! brig: a minimal PID 1 init and service supervisor for network appliances.
//!
//! One static binary. Started by the kernel as PID 1 (or as `brig init`) it boots the host and
//! supervises the services of /etc/brig; otherwise it is the command-line tool.

mod boot;
mod cgroup;
mod cli;
mod config;
mod container;
mod control;
mod log;
mod seccomp;
mod shutdown;
mod storage;
mod supervisor;
mod watchdog;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The kernel passes stray command line words to init as arguments: as PID 1, anything but
    // an explicit `init` means the kernel started us.
    if std::process::id() == 1 && args.first().map(String::as_str) != Some("init") {
        boot::run(boot::Mode::Kernel);
    }
    std::process::exit(cli::main(&args));
}
