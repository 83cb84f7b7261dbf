//! Fuzzes the control protocol's request decoder, the one piece of PID 1 that parses bytes
//! from another process. Run: `cargo +nightly fuzz run decode_request` in this directory.
#![no_main]

use libfuzzer_sys::fuzz_target;

// The protocol module depends on serde alone, so it is compiled here as it is in brig.
#[path = "../../src/control/protocol.rs"]
#[allow(dead_code)]
mod protocol;

fuzz_target!(|data: &[u8]| {
    // Whatever the bytes, decoding returns (no panic, no hang, bounded work); a decoded
    // request encodes and decodes to itself.
    if let Ok(request) = protocol::decode_request(data) {
        let envelope = protocol::Envelope { version: protocol::VERSION, request: request.clone() };
        let line = protocol::encode(&envelope);
        assert_eq!(protocol::decode_request(&line[..line.len() - 1]), Ok(request));
    }
});
