//! The SP's `sp.toml` loader: TOML parse, validate, and the duration helpers on what passed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rac::sp::config::SpConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = toml::from_str::<SpConfig>(text)
        && config.validate().is_ok()
    {
        let _ = (
            config.heartbeat(),
            config.dead_after(),
            config.session_open_timeout(),
            config.handshake_timeout(),
        );
        // A valid config survives the trip through the file format the tests and CLI write.
        let written = toml::to_string(&config).expect("a valid config serializes");
        let again: SpConfig = toml::from_str(&written).expect("a written config parses");
        assert_eq!(again, config);
    }
});
