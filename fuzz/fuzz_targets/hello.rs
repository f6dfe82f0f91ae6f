//! The SP's two-step hello parse (version first, then role) on the first frame's body, the
//! first bytes an unauthenticated peer controls after TLS.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rac::net::cloud_redirector::parse_hello;
use rac::wire::protocol::{Hello, PROTOCOL_VERSION};

fuzz_target!(|data: &[u8]| {
    match parse_hello(data) {
        Ok(hello) => {
            assert_eq!(hello.version, PROTOCOL_VERSION);
            // What parsed re-encodes and parses back to itself.
            let text = serde_json::to_vec(&hello).expect("a parsed hello encodes");
            let again = parse_hello(&text).expect("an encoded hello parses");
            assert_eq!(again, hello);
            // Debug output never shows credentials.
            let _ = format!("{hello:?}");
        }
        Err(refusal) => {
            // Refusals are sent to the peer: they must stay short.
            assert!(refusal.message.len() < 4096, "{}", refusal.message.len());
        }
    }
    let _ = serde_json::from_slice::<Hello>(data);
});
