//! Remote desktops (RDP, with Devolutions' IronRDP): the client the console opens a tenant's
//! desktop with, through a session, and the server the lab's tenants show their desktops
//! with. IronRDP is used here only; its TLS goes through `net::tls` like every other.

pub mod client;
mod clipboard;
mod error;
pub mod keys;
pub mod round_trip;
pub mod server;
mod stream;

/// The service name a desktop is offered under (`[services] rdp = "host:3389"`).
pub const SERVICE_NAME: &str = "rdp";

/// Input to a desktop: what the client sends and what a served desktop receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DesktopInput {
    /// A key by scan code (set 1), `extended` for the 0xE0 keys.
    Key {
        scancode: u8,
        extended: bool,
        pressed: bool,
    },
    /// A character typed as Unicode.
    Unicode {
        ch: char,
        pressed: bool,
    },
    PointerMoved {
        x: u16,
        y: u16,
    },
    Button {
        button: MouseButton,
        pressed: bool,
    },
    /// The vertical wheel; positive is away from the user.
    Wheel {
        delta: i16,
    },
}

/// A rectangle of a desktop's screen, in pixels: left, top, width, height.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub x: usize,
    pub y: usize,
    pub width: usize,
    pub height: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MouseButton {
    Left,
    Right,
    Middle,
}

#[cfg(test)]
mod tests {
    use crate::net::tenant_redirector::{RedirectorConfig, ServiceTarget};
    use crate::tenant::config::TenantConfig;

    #[test]
    fn a_plain_address_named_rdp_is_a_desktop_service() {
        let config: TenantConfig = toml::from_str(
            r#"name = "acme"
secret = "0000000000000000000000000000000000000000000000000000000000000000"
ca_cert = "/ca.pem"
endpoints = ["sp.example.net:6180"]
[services]
rdp = "10.0.0.5:3389"
"#,
        )
        .expect("parse");
        config.validate().expect("valid");
        let redirector =
            RedirectorConfig::from_file(&config, std::path::Path::new("/etc/rac/tenant.toml"))
                .expect("redirector config");
        assert!(matches!(
            &redirector.services[super::SERVICE_NAME],
            ServiceTarget::Tcp(addr) if addr == "10.0.0.5:3389"
        ));
    }
}
