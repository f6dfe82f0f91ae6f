//! The tenant redirector's config loader (`rac tenant --config`): TOML parse, then validate.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rac::tenant::config::TenantConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = toml::from_str::<TenantConfig>(text) {
        let _ = config.validate();
        let _ = config.server_name();
        // Debug output does not depend on the secret at all, so it cannot show it.
        let mut other = config.clone();
        other.secret = format!("{}x", config.secret);
        assert_eq!(
            format!("{config:?}"),
            format!("{other:?}"),
            "the secret reaches Debug"
        );
    }
});
