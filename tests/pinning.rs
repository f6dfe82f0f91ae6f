//! A pinned fingerprint must authenticate the SP, not merely appear somewhere in its chain.
//!
//! The SP's CA certificate is public (every handshake sends it), so a man in the middle — a
//! cloud gateway is on the path by design — can present its own leaf with the real CA beside
//! it. Each client that trusts by fingerprint (the CLI, the tenant redirector, the window's
//! pinned profile) is pointed at such a fake SP here, and the fake SP must receive no byte of
//! application data: no password, no tenant secret.

mod common;
mod ui_support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eframe::egui;
use egui::accesskit::Role;
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

use common::{PATIENCE, TestSp, quick_config};
use rac::ui::ConsoleApp;
use ui_support::fill;

const RAC: &str = env!("CARGO_BIN_EXE_rac");

/// A TLS server that presents [its own leaf, the real SP's CA] and writes down whatever a
/// client sends it once a handshake completes.
struct FakeSp {
    addr: SocketAddr,
    attempts: Arc<AtomicUsize>,
    completed: Arc<AtomicUsize>,
    received: Arc<Mutex<Vec<u8>>>,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl FakeSp {
    async fn start(real_ca: &Path) -> FakeSp {
        let dir = tempfile::tempdir().expect("tempdir");
        let attacker = rac::sp::pki::generate(&[]).expect("attacker certificates");
        let real_ca_pem = std::fs::read_to_string(real_ca).expect("real CA");
        let chain = dir.path().join("chain.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(
            &chain,
            format!("{}{}", attacker.server_cert_pem, real_ca_pem),
        )
        .expect("chain");
        std::fs::write(&key, &attacker.server_key_pem).expect("key");
        let acceptor = rac::net::tls::server_acceptor(&chain, &key).expect("acceptor");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let attempts = Arc::new(AtomicUsize::new(0));
        let completed = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let (attempts, completed, received) =
                (attempts.clone(), completed.clone(), received.clone());
            async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    attempts.fetch_add(1, Ordering::SeqCst);
                    let acceptor = acceptor.clone();
                    let (completed, received) = (completed.clone(), received.clone());
                    tokio::spawn(async move {
                        let Ok(mut tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        completed.fetch_add(1, Ordering::SeqCst);
                        let mut buf = [0u8; 4096];
                        while let Ok(Ok(n)) =
                            tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await
                        {
                            if n == 0 {
                                break;
                            }
                            received.lock().expect("lock").extend_from_slice(&buf[..n]);
                        }
                    });
                }
            }
        });
        FakeSp {
            addr,
            attempts,
            completed,
            received,
            _dir: dir,
            task,
        }
    }

    fn attempts(&self) -> usize {
        self.attempts.load(Ordering::SeqCst)
    }

    /// Nothing got through: no handshake completed and no application byte arrived.
    fn assert_learned_nothing(&self, secret: &str) {
        let received = self.received.lock().expect("lock").clone();
        assert!(
            !String::from_utf8_lossy(&received).contains(secret),
            "the fake SP received the secret"
        );
        assert!(received.is_empty(), "the fake SP received {received:?}");
        assert_eq!(
            self.completed.load(Ordering::SeqCst),
            0,
            "a client finished a TLS handshake with the fake SP"
        );
    }
}

impl Drop for FakeSp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn ca_pin(sp: &TestSp) -> String {
    rac::net::tls::pem_fingerprint(&sp.ca).expect("fingerprint")
}

/// `rac tenants --fingerprint PIN` as a user runs it, off the runtime that serves the SP.
async fn rac_tenants(
    sp: &SocketAddr,
    pin: &str,
    user: &str,
    password: &str,
) -> std::process::Output {
    let mut cmd = Command::new(RAC);
    cmd.args(["tenants", "--sp", &sp.to_string(), "--fingerprint", pin])
        .args(["--user", user, "--json"])
        .env("RAC_PASSWORD", password)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("rac tenants")
}

#[tokio::test]
async fn the_cli_sends_no_password_to_a_fake_sp_showing_the_real_ca() {
    let sp = TestSp::start(quick_config()).await;
    let fake = FakeSp::start(&sp.ca).await;
    let pin = ca_pin(&sp);

    // Against the real SP the pin works…
    let ok = rac_tenants(&sp.addr, &pin, &sp.operator, &sp.password).await;
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    // …and against the fake one the handshake fails before the password leaves.
    let out = rac_tenants(&fake.addr, &pin, &sp.operator, &sp.password).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "rac tenants trusted the fake SP");
    assert!(stderr.contains("certificate not trusted"), "{stderr}");
    assert!(fake.attempts() >= 1, "the CLI never reached the fake SP");
    // Give a leaked write time to arrive before looking.
    tokio::time::sleep(Duration::from_millis(200)).await;
    fake.assert_learned_nothing(&sp.password);
}

#[tokio::test]
async fn the_tenant_redirector_sends_no_secret_to_a_fake_sp_showing_the_real_ca() {
    let sp = TestSp::start(quick_config()).await;
    let fake = FakeSp::start(&sp.ca).await;
    let secret = sp.add_tenant("acme");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("tenant.toml");
    std::fs::write(
        &config,
        format!(
            "name = \"acme\"\nsecret = \"{secret}\"\nca_fingerprint = \"{}\"\n\
             endpoints = [\"{}\"]\nallow_provider_access = true\n[services]\necho = \"127.0.0.1:9\"\n",
            ca_pin(&sp),
            fake.addr
        ),
    )
    .expect("config");
    let mut child = Command::new(RAC)
        .args(["tenant", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("rac tenant");
    // The redirector retries with backoff: two attempts show it tried and was refused.
    let deadline = Instant::now() + PATIENCE;
    while fake.attempts() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        fake.attempts() >= 2,
        "the redirector never reached the fake SP"
    );
    fake.assert_learned_nothing(&secret);
}

#[test]
fn the_windows_pinned_profile_sends_no_password_to_a_fake_sp_showing_the_real_ca() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (sp, fake) = runtime.block_on(async {
        let sp = TestSp::start(quick_config()).await;
        let fake = FakeSp::start(&sp.ca).await;
        (sp, fake)
    });
    let handle = runtime.handle().clone();
    let mut h = Harness::builder()
        .with_size(egui::vec2(1280.0, 800.0))
        .build_eframe(move |cc| ConsoleApp::console(cc, &handle));
    h.run_steps(2);

    fill(
        &mut h,
        Role::TextInput,
        "SP address",
        &fake.addr.to_string(),
    );
    h.get_by_label("Pinned fingerprint").click();
    h.run_steps(2);
    // First contact shows the last certificate presented: the real CA, as the operator expects.
    h.get_by_label("Fetch from the SP").click();
    ui_support::wait_until(&mut h, "the fetched fingerprint", |h| {
        h.query_by_label_contains("I compared this fingerprint")
            .is_some()
    });
    let shown = h
        .get_by_role_and_label(Role::TextInput, "SHA-256 fingerprint")
        .value()
        .expect("fingerprint text");
    assert_eq!(shown, ca_pin(&sp), "the fake SP shows the real CA");
    h.get_by_label_contains("I compared this fingerprint")
        .click();
    h.run_steps(2);
    fill(&mut h, Role::TextInput, "Operator", &sp.operator);
    fill(&mut h, Role::PasswordInput, "Password", &sp.password);
    let before = fake.attempts();
    h.get_by_label("Connect").click();
    ui_support::wait_until(&mut h, "the refusal", |h| {
        ui_support::shown(h, "certificate not trusted")
    });
    assert!(
        fake.attempts() > before,
        "the window never reached the fake SP"
    );
    std::thread::sleep(Duration::from_millis(200));
    fake.assert_learned_nothing(&sp.password);
    drop(h);
    drop(fake);
    drop(sp);
}
