//! The PROXY protocol v2 parser on arbitrary bytes, as the SP reads them from a gateway.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rac::net::proxy_protocol::{MAX_HEADER_LEN, SIGNATURE, encode_v2, parse_v2};

fuzz_target!(|data: &[u8]| {
    // The first byte decides: even, the rest follows the signature (so the parser gets past
    // its first check); odd, the rest is taken as it is.
    let Some((flag, rest)) = data.split_first() else {
        return;
    };
    let owned;
    let input = if flag % 2 == 0 {
        owned = [&SIGNATURE[..], rest].concat();
        &owned[..]
    } else {
        rest
    };
    match parse_v2(input) {
        Ok(Some((header, consumed))) => {
            assert!(consumed <= input.len() && consumed <= MAX_HEADER_LEN);
            // Every prefix of a whole header is "incomplete" or the same error, never a
            // different header.
            for cut in 0..consumed {
                if let Ok(Some(_)) = parse_v2(&input[..cut]) {
                    panic!("a {cut}-byte prefix of a {consumed}-byte header parsed whole");
                }
            }
            // A header with addresses re-encodes to one that parses to the same addresses.
            if let (Some(src), Some(dst)) = (header.source, header.destination)
                && src.is_ipv4() == dst.is_ipv4()
            {
                let encoded = encode_v2(src, dst);
                let (again, n) = parse_v2(&encoded)
                    .expect("encoded header parses")
                    .expect("encoded header is whole");
                assert_eq!(n, encoded.len());
                assert_eq!(again, header);
            }
        }
        Ok(None) => assert!(input.len() < MAX_HEADER_LEN),
        Err(_) => {}
    }
});
