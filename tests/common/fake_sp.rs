//! A hand-made SP for tests of what an SP can make a tenant redirector do: real TLS with a
//! real SP certificate and a grant key of its own, but the test writes every frame (the
//! welcome, `open_data` with any grant it likes, `ready`) and may break any rule.

use std::collections::BTreeMap;
use std::time::Duration;

use rac::net::tenant_redirector::{RedirectorConfig, ServiceTarget};
use rac::net::tls::{ReadAhead, Trust};
use rac::sp::config::StateDir;
use rac::wire::frame::{MAX_FRAME_LEN, read_frame, write_frame};
use rac::wire::protocol::{
    GRANT_MAX_SECS, Grant, GrantBody, GrantKey, Hello, HelloReply, Role, Welcome,
};
use tokio::net::TcpListener;

use super::PATIENCE;

pub struct FakeSp {
    pub listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    pub ca: std::path::PathBuf,
    /// The key this SP signs grants with (and sends in its welcome).
    pub grant_key: GrantKey,
    _dir: tempfile::TempDir,
}

pub type FakeStream = tokio_rustls::server::TlsStream<ReadAhead>;

impl FakeSp {
    pub async fn start() -> FakeSp {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(dir.path().join("sp"));
        let init = rac::sp::init_state_dir(&state, "admin", &[], None).expect("init");
        let acceptor = rac::net::tls::server_acceptor(&state.server_chain(), &state.server_key())
            .expect("acceptor");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        FakeSp {
            listener,
            acceptor,
            ca: init.ca_cert,
            grant_key: GrantKey::generate().expect("grant key"),
            _dir: dir,
        }
    }

    /// The next connection's TLS and hello.
    pub async fn accept(&self) -> (FakeStream, Hello) {
        let (tcp, _) = tokio::time::timeout(PATIENCE, self.listener.accept())
            .await
            .expect("a connection in time")
            .expect("accept");
        let mut tls = self
            .acceptor
            .accept(ReadAhead::new(tcp))
            .await
            .expect("TLS");
        let hello: Hello = read_frame(&mut tls, MAX_FRAME_LEN)
            .await
            .expect("read hello")
            .expect("hello");
        (tls, hello)
    }

    /// Accepts the tenant's control connection and welcomes it with `gateways` and this
    /// SP's grant key.
    pub async fn control(&self, gateways: Vec<String>) -> FakeStream {
        let (mut control, hello) = self.accept().await;
        assert!(
            matches!(hello.role, Role::TenantControl { .. }),
            "{hello:?}"
        );
        let welcome = HelloReply::Welcome(Welcome {
            server: "fake".into(),
            heartbeat_secs: 30,
            dead_after_secs: 95,
            gateways,
            token: None,
            token_expires_in_secs: None,
            grant_key: Some(self.grant_key.public_hex()),
            now: Some(rac::util::now_unix_secs()),
        });
        write_frame(&mut control, &welcome).await.expect("welcome");
        control
    }

    /// A grant for `session_id` to `service` on `acme` for `console_key`, valid for the
    /// longest a grant may be, signed by this SP.
    pub fn grant(&self, session_id: &str, service: &str, console_key: &str) -> Grant {
        self.grant_key.sign(&GrantBody {
            session_id: session_id.into(),
            tenant: "acme".into(),
            service: service.into(),
            operator: "admin".into(),
            console_key: console_key.into(),
            expires: rac::util::now_unix_secs() + GRANT_MAX_SECS,
        })
    }

    /// A tenant redirector for `acme` that connects to this SP.
    pub fn tenant_config(&self, services: BTreeMap<String, ServiceTarget>) -> RedirectorConfig {
        RedirectorConfig {
            tenant: "acme".into(),
            secret: "00".repeat(32),
            endpoints: vec![self.listener.local_addr().expect("addr").to_string()],
            trust: Trust::CaFile(self.ca.clone()),
            server_name: "localhost".into(),
            services,
            backoff_base: Duration::from_millis(50),
            backoff_max: Duration::from_millis(500),
            identity: Some(super::wire::test_tenant_identity("acme")),
            ..RedirectorConfig::defaults()
        }
    }
}
