//! The frame decoder over arbitrary bytes: every frame it yields respects the limit, and a
//! stream of frames ends in a clean end, a truncation, or an oversize refusal — never a panic
//! or an allocation beyond the limit.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use rac::wire::frame::{FrameError, MAX_HELLO_LEN, read_frame_bytes};

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
});

fuzz_target!(|data: &[u8]| {
    // The first byte picks a small limit sometimes, so the limit check is reached often.
    let (max, mut input) = match data.split_first() {
        Some((b, rest)) if b % 2 == 0 => (usize::from(*b) * 4, rest),
        Some((_, rest)) => (MAX_HELLO_LEN, rest),
        None => (MAX_HELLO_LEN, data),
    };
    RUNTIME.block_on(async {
        loop {
            let before = input.len();
            match read_frame_bytes(&mut input, max).await {
                Ok(Some(body)) => {
                    assert!(body.len() <= max);
                    assert_eq!(before - input.len(), body.len() + 4);
                    // Whatever the body is, decoding it as JSON must not panic either.
                    let _ = serde_json::from_slice::<serde_json::Value>(&body);
                }
                Ok(None) => {
                    assert!(input.is_empty());
                    break;
                }
                Err(FrameError::TooLarge { len, max: m }) => {
                    assert!(len > m);
                    break;
                }
                Err(_) => break,
            }
        }
    });
});
