//! The admin listener over a real SP on 127.0.0.1 port 0, spoken to with an HTTP client:
//! every endpoint of the API v1, its bearer tokens and scopes, ending a live session,
//! audit paging while rows are added, `/metrics` (checked by `promtool` where it is
//! installed), `/readyz` flipping, bad input refused with a 4xx while the listener keeps
//! serving; and a gateway's own `/metrics` and `/healthz`.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{PATIENCE, Proc, TestSp, eventually, quick_config};
use rac::sp::registry::{Actor, AdminScope};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

/// An SP with its admin listener, and a read-write and a read-only token.
struct Admin {
    sp: TestSp,
    base: String,
    http: reqwest::Client,
    rw: String,
    ro: String,
    stop: CancellationToken,
}

impl Admin {
    async fn start() -> Admin {
        Admin::start_with(quick_config()).await
    }

    async fn start_with(config: rac::sp::config::SpConfig) -> Admin {
        let sp = TestSp::start(config).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind admin");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let stop = CancellationToken::new();
        tokio::spawn(rac::net::admin::run_sp(
            sp.service.clone(),
            listener,
            stop.clone(),
        ));
        let rw = sp
            .registry
            .create_admin_token("ops", AdminScope::ReadWrite, &Actor::Local)
            .expect("rw token");
        let ro = sp
            .registry
            .create_admin_token("grafana", AdminScope::ReadOnly, &Actor::Local)
            .expect("ro token");
        Admin {
            sp,
            base,
            http: reqwest::Client::new(),
            rw,
            ro,
            stop,
        }
    }

    /// A request with the read-write token.
    fn call(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.rw)
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        send(self.call(reqwest::Method::GET, path)).await
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        send(self.call(reqwest::Method::POST, path).json(&body)).await
    }

    async fn delete(&self, path: &str) -> (StatusCode, Value) {
        send(self.call(reqwest::Method::DELETE, path)).await
    }

    /// `GET /readyz` (no token).
    async fn readyz(&self) -> (StatusCode, Value) {
        send(self.http.get(format!("{}/readyz", self.base))).await
    }

    /// Waits until `/readyz` says ready.
    async fn ready(&self) {
        eventually(PATIENCE, "ready", async || {
            (self.readyz().await.0 == StatusCode::OK).then_some(())
        })
        .await;
    }

    async fn text(&self, path: &str) -> (StatusCode, String) {
        let response = self
            .call(reqwest::Method::GET, path)
            .send()
            .await
            .expect("request");
        (response.status(), response.text().await.expect("body"))
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Sends a request; the status and the JSON body (`null` when there is none).
async fn send(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.expect("request");
    let status = response.status();
    let text = response.text().await.expect("body");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    };
    (status, body)
}

/// `rac sp ARGS --state-dir STATE`, run to its end (off the runtime's threads).
async fn rac_sp(state: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new(common::RAC);
    cmd.arg("sp")
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null());
    tokio::task::spawn_blocking(move || cmd.output().expect("run rac"))
        .await
        .expect("rac ran")
}

/// The JSON that `rac sp ARGS --json` printed on success.
async fn rac_sp_json(state: &Path, args: &[&str]) -> Value {
    let out = rac_sp(state, &[args, &["--json"]].concat()).await;
    assert!(out.status.success(), "rac sp {args:?}: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("rac sp {args:?}: {e}: {out:?}"))
}

/// The `field` of each row of a JSON array.
fn column<'a>(rows: &'a Value, field: &str) -> Vec<&'a Value> {
    rows.as_array()
        .unwrap_or_else(|| panic!("not an array: {rows}"))
        .iter()
        .map(|r| &r[field])
        .collect()
}

/// Asserts an error answer: its status and its code.
fn refused((status, body): (StatusCode, Value), want: StatusCode, code: &str) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_required_and_a_read_only_one_cannot_write() {
    let admin = Admin::start().await;
    let url = format!("{}/v1/tenants", admin.base);
    refused(
        send(admin.http.get(&url)).await,
        StatusCode::UNAUTHORIZED,
        "auth_failed",
    );
    refused(
        send(admin.http.get(&url).bearer_auth("racadm_wrong")).await,
        StatusCode::UNAUTHORIZED,
        "auth_failed",
    );
    let (status, _) = send(admin.http.get(&url).bearer_auth(&admin.ro)).await;
    assert_eq!(status, StatusCode::OK);
    refused(
        send(
            admin
                .http
                .post(&url)
                .bearer_auth(&admin.ro)
                .json(&json!({"name": "acme"})),
        )
        .await,
        StatusCode::FORBIDDEN,
        "access_denied",
    );
    // A revoked token stops at its next request.
    admin
        .sp
        .registry
        .revoke_admin_token("grafana", &Actor::Local)
        .expect("revoke");
    refused(
        send(admin.http.get(&url).bearer_auth(&admin.ro)).await,
        StatusCode::UNAUTHORIZED,
        "auth_failed",
    );
    // The health probes need no token.
    let health = admin
        .http
        .get(format!("{}/healthz", admin.base))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_account_endpoint_works_and_is_audited_with_the_token() {
    let admin = Admin::start().await;
    let (status, server) = admin.get("/v1/server").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(server["version"], rac::VERSION);
    assert!(server["node"].as_str().is_some_and(|n| !n.is_empty()));
    assert_eq!(server["serving"], true);
    // Uptime is the time since the start, and it counts.
    let now = rac::util::now_unix_secs();
    let started_at = server["started_at"].as_u64().expect("started_at");
    let uptime = server["uptime_secs"].as_u64().expect("uptime_secs");
    assert!(
        started_at <= now && now - started_at < 60 && uptime <= now - started_at,
        "{server}"
    );
    eventually(PATIENCE, "uptime grows", async || {
        (admin.get("/v1/server").await.1["uptime_secs"].as_u64() > Some(uptime)).then_some(())
    })
    .await;
    // A single SP does not drain (its tenants would have nowhere to go), and goes on serving.
    refused(
        admin.post("/v1/node/drain", json!({})).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    assert_eq!(admin.get("/v1/server").await.1["serving"], true);

    // Tenants.
    let (status, added) = admin
        .post(
            "/v1/tenants",
            json!({"name": "acme", "description": "Acme"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{added}");
    let secret = added["secret"].as_str().expect("secret").to_string();
    for name in ["globex", "initech"] {
        assert_eq!(
            admin.post("/v1/tenants", json!({"name": name})).await.0,
            StatusCode::CREATED
        );
    }
    refused(
        admin.post("/v1/tenants", json!({"name": "acme"})).await,
        StatusCode::CONFLICT,
        "already_exists",
    );
    refused(
        admin.post("/v1/tenants", json!({"name": "../etc"})).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    // The secret the API printed once works for the tenant.
    let mut tenant = common::TestTenant::start(admin.sp.tenant_config("acme", &secret));
    tenant.online().await;
    let (_, one) = admin.get("/v1/tenants/acme").await;
    assert_eq!(one["status"], "online", "{one}");
    assert_eq!(one["services"], json!(["echo"]));
    refused(
        admin.get("/v1/tenants/nobody").await,
        StatusCode::NOT_FOUND,
        "unknown_tenant",
    );
    let (_, page) = admin.get("/v1/tenants?limit=2").await;
    assert_eq!(page["tenants"].as_array().map(Vec::len), Some(2));
    assert_eq!(page["next"], "globex");
    let (_, rest) = admin.get("/v1/tenants?limit=2&after=globex").await;
    assert_eq!(rest["tenants"][0]["name"], "initech");
    assert_eq!(rest["next"], Value::Null);
    let (_, online) = admin.get("/v1/tenants?status=online").await;
    assert_eq!(online["tenants"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        admin.post("/v1/tenants/globex/disable", json!({})).await.0,
        StatusCode::OK
    );
    let (_, disabled) = admin.get("/v1/tenants?enabled=false").await;
    assert_eq!(disabled["tenants"][0]["name"], "globex", "{disabled}");
    assert_eq!(disabled["tenants"][0]["status"], "disabled", "{disabled}");
    let (_, named) = admin.get("/v1/tenants?enabled=true&name=tech").await;
    assert_eq!(
        named["tenants"].as_array().map(Vec::len),
        Some(1),
        "{named}"
    );
    assert_eq!(
        admin.post("/v1/tenants/globex/enable", json!({})).await.0,
        StatusCode::OK
    );
    let (status, rotated) = admin
        .post("/v1/tenants/initech/rotate-secret", json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(rotated["secret"].as_str().map(str::len), Some(64));
    assert_eq!(
        admin.post("/v1/tenants/acme/reset-key", json!({})).await.0,
        StatusCode::OK
    );
    assert_eq!(admin.delete("/v1/tenants/initech").await.0, StatusCode::OK);
    refused(
        admin.delete("/v1/tenants/initech").await,
        StatusCode::NOT_FOUND,
        "unknown_tenant",
    );

    // Operators.
    let (status, op) = admin
        .post("/v1/operators", json!({"name": "bob", "tenants": "acme"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{op}");
    assert_eq!(op["password"].as_str().map(str::len), Some(32));
    let (_, ops) = admin.get("/v1/operators").await;
    assert_eq!(ops["operators"].as_array().map(Vec::len), Some(2));
    let (status, pw) = admin
        .post(
            "/v1/operators/bob/passwd",
            json!({"password": "a long new password"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{pw}");
    assert_eq!(pw.get("password"), None, "a chosen password is not echoed");
    let (_, pw) = admin.post("/v1/operators/bob/passwd", json!({})).await;
    assert_eq!(pw["password"].as_str().map(str::len), Some(32));
    refused(
        admin
            .post("/v1/operators/bob/passwd", json!({"password": "short"}))
            .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    let (status, scope) = send(
        admin
            .call(reqwest::Method::PUT, "/v1/operators/bob/tenants")
            .json(&json!({"tenants": "acme,globex"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{scope}");
    assert_eq!(
        admin.post("/v1/operators/bob/revoke", json!({})).await.0,
        StatusCode::OK
    );
    assert_eq!(admin.delete("/v1/operators/bob").await.0, StatusCode::OK);
    refused(
        admin.delete("/v1/operators/bob").await,
        StatusCode::NOT_FOUND,
        "unknown_operator",
    );

    // Gateways: the pool handed to tenants and the trusted gateways.
    let (status, gateways) = admin.get("/v1/gateways").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(gateways["pool"], json!([]));

    // Every change is in the audit log with the token's name; filters narrow it.
    let (_, audit) = admin.get("/v1/audit?limit=100").await;
    let rows: Vec<&Value> = audit["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|r| r["console_addr"] != "local: rac sp admin-token create")
        .collect();
    assert_eq!(rows.len(), 14, "{audit}");
    assert!(
        rows.iter().all(|r| r["console_addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("admin api: token ops: "))),
        "{audit}"
    );
    let (_, acme) = admin.get("/v1/audit?tenant=acme").await;
    let outcomes: Vec<&str> = acme["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|r| r["outcome"].as_str())
        .collect();
    assert_eq!(outcomes, ["tenant key forgotten", "tenant added"]);
    let (_, bob) = admin
        .get("/v1/audit?operator=bob&outcome=operator%20removed")
        .await;
    assert_eq!(bob["entries"].as_array().map(Vec::len), Some(1), "{bob}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_4xx_and_the_listener_keeps_serving() {
    let admin = Admin::start().await;
    let post_raw = |body: Vec<u8>| {
        admin
            .call(reqwest::Method::POST, "/v1/tenants")
            .header("content-type", "application/json")
            .body(body)
    };
    refused(
        send(post_raw(b"{not json".to_vec())).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    let (status, body) = send(post_raw(br#"{"name": "acme", "colour": "red"}"#.to_vec())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("unknown field")),
        "{body}"
    );
    // A body over the limit is left unread, so the answer closes the connection (and
    // says so, or the client would send its next request on a closing socket).
    let too_large = post_raw(vec![b' '; 1024 * 1024])
        .send()
        .await
        .expect("request");
    assert_eq!(
        too_large.headers().get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..])
    );
    let status = too_large.status();
    let body = too_large.json().await.expect("JSON body");
    refused((status, body), StatusCode::PAYLOAD_TOO_LARGE, "too_large");
    refused(
        admin.get("/v1/audit?limit=lots").await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    refused(
        admin.get("/v1/nothing-here").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let (status, _) = send(admin.call(reqwest::Method::PATCH, "/v1/tenants")).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    // Still serving, and nothing was added.
    let (status, page) = admin.get("/v1/tenants").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["tenants"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ending_a_session_cuts_it_and_the_audit_names_the_token() {
    let admin = Admin::start().await;
    let _tenant = admin.sp.online_tenant("acme").await;
    let console = admin.sp.console().await;
    let mut open = console
        .open_session("acme", "echo", |_, _| {})
        .await
        .expect("session");
    let (_, list) = eventually(PATIENCE, "the session is listed", async || {
        let (status, list) = admin.get("/v1/sessions").await;
        (list["sessions"].as_array().map(Vec::len) == Some(1)).then_some((status, list))
    })
    .await;
    let session = &list["sessions"][0];
    assert_eq!(session["tenant"], "acme");
    assert_eq!(session["operator"], admin.sp.operator.as_str());
    assert_eq!(session["service"], "echo");
    assert_eq!(session["route"], "direct");
    assert!(
        session["bytes_to_tenant"].as_u64().is_some_and(|b| b > 0),
        "the end-to-end handshake went through: {session}"
    );
    let id = session["session_id"].as_str().expect("id").to_string();
    let (status, _) = admin.get(&format!("/v1/sessions/{id}")).await;
    assert_eq!(status, StatusCode::OK);

    let (status, ended) = admin.delete(&format!("/v1/sessions/{id}")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{ended}");
    // The console's session ends at once.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(PATIENCE, open.stream.read_to_end(&mut rest))
        .await
        .expect("the session ends");
    assert!(read.is_err() || rest.is_empty(), "{read:?}");
    // The channel only shows a cut; the console asks the SP why, on an operator connection,
    // and says the SP's reason (the window's tab and `rac connect` call the same function).
    let why = console
        .describe_session_end(&open.session_id, "the channel was cut")
        .await;
    assert_eq!(
        why, "the SP's administrator ended this session (admin token ops)",
        "{why}"
    );
    // Another operator hears nothing of it.
    admin
        .sp
        .registry
        .add_operator("bob", "bob's long password", "*")
        .expect("bob");
    let bob = rac::net::console::ConsoleClient::new(rac::net::console::ConsoleConfig {
        user: "bob".into(),
        ..admin.sp.console_config()
    })
    .expect("bob's client");
    bob.login("bob's long password").await.expect("bob logs in");
    assert_eq!(
        bob.session_end_reason(&open.session_id)
            .await
            .expect("an answer"),
        None
    );
    let row = eventually(PATIENCE, "the audit row closes", async || {
        let (_, audit) = admin.get("/v1/audit?tenant=acme&limit=1").await;
        let row = audit["entries"][0].clone();
        row["ended_at"].is_u64().then_some(row)
    })
    .await;
    assert_eq!(row["outcome"], "ended: by admin (admin token ops)", "{row}");
    refused(
        admin.delete(&format!("/v1/sessions/{id}")).await,
        StatusCode::NOT_FOUND,
        "unknown_session",
    );
    let (_, metrics) = admin.text("/metrics").await;
    assert!(
        metrics.contains("rac_sp_sessions_total{outcome=\"ended_by_admin\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_paging_is_stable_while_rows_are_added() {
    let admin = Admin::start().await;
    for i in 0..120 {
        admin
            .sp
            .registry
            .audit_start("alice", "acme", "echo", &format!("127.0.0.1:{i}"))
            .expect("row");
    }
    let (_, first) = admin.get("/v1/audit?limit=1").await;
    let newest = first["entries"][0]["id"].as_i64().expect("id");
    // Another writer adds rows all the while the pages are read.
    let writer_registry =
        rac::sp::registry::Registry::open(&admin.sp.state.registry()).expect("open");
    let writing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let still = writing.clone();
    let writer = std::thread::spawn(move || {
        let mut added = 0;
        while still.load(std::sync::atomic::Ordering::Relaxed) {
            writer_registry
                .audit_start("mallory", "acme", "echo", "127.0.0.1:1")
                .expect("row");
            added += 1;
            std::thread::sleep(Duration::from_millis(2));
        }
        added
    });
    let mut seen = Vec::new();
    let mut path = format!("/v1/audit?limit=7&before={}", newest + 1);
    loop {
        let (status, page) = admin.get(&path).await;
        assert_eq!(status, StatusCode::OK);
        seen.extend(
            page["entries"]
                .as_array()
                .expect("entries")
                .iter()
                .map(|e| e["id"].as_i64().expect("id")),
        );
        match page["next"].as_i64() {
            Some(next) => path = format!("/v1/audit?limit=7&before={next}"),
            None => break,
        }
    }
    writing.store(false, std::sync::atomic::Ordering::Relaxed);
    let added = writer.join().expect("writer");
    assert!(added > 0);
    // Each row once (the admin tokens' two and the 120), none of the new ones.
    let expected: Vec<i64> = (1..=newest).rev().collect();
    assert_eq!(seen, expected);
    assert_eq!(newest, 122);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_work_done_and_pass_promtool() {
    let admin = Admin::start_with(rac::sp::config::SpConfig {
        login_max_failures: 2,
        ..quick_config()
    })
    .await;
    let metrics = || async { admin.text("/metrics").await.1 };
    let value = |text: &str, name: &str| {
        sample(text, name).unwrap_or_else(|| panic!("{name} missing from\n{text}"))
    };
    let _tenant = admin.sp.online_tenant("acme").await;
    let console = admin.sp.console().await;
    // A live session is counted while it runs, and its bytes when it ends.
    const MOVED: usize = 64 * 1024;
    let mut session = console
        .open_session("acme", "echo", |_, _| {})
        .await
        .expect("session");
    {
        let (mut reader, mut writer) = tokio::io::split(&mut session.stream);
        let data = common::pattern(1, MOVED);
        let mut back = vec![0u8; MOVED];
        let (written, read) = tokio::join!(
            tokio::io::AsyncWriteExt::write_all(&mut writer, &data),
            reader.read_exact(&mut back)
        );
        written.expect("write");
        read.expect("echo");
        assert_eq!(back, data);
    }
    eventually(PATIENCE, "one session active", async || {
        (sample(&metrics().await, "rac_sp_sessions_active") == Some(1.0)).then_some(())
    })
    .await;
    for session in [Some(session), None] {
        let mut session = match session {
            Some(session) => session,
            None => console
                .open_session("acme", "echo", |_, _| {})
                .await
                .expect("session"),
        };
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut session.stream).await;
        let mut rest = Vec::new();
        let _ = session.stream.read_to_end(&mut rest).await;
    }
    assert!(
        console
            .open_session("nobody", "echo", |_, _| {})
            .await
            .is_err()
    );
    // Three wrong passwords from one address: two failed logins, then the limit (2).
    for _ in 0..3 {
        let reply = admin
            .sp
            .login_from(common::loopback(3), &admin.sp.operator, "wrong password")
            .await;
        assert!(
            matches!(reply, rac::wire::protocol::HelloReply::Error(_)),
            "{reply:?}"
        );
    }
    // Bytes that are not TLS: a handshake failure.
    let mut garbage = tokio::net::TcpStream::connect(admin.sp.addr)
        .await
        .expect("connect");
    tokio::io::AsyncWriteExt::write_all(&mut garbage, b"GET / HTTP/1.0\r\n\r\n")
        .await
        .expect("write");
    let _ = garbage.read_to_end(&mut Vec::new()).await;
    // Tenants connected is read at each registry poll (100 ms here), heartbeats go every
    // second.
    let text = eventually(PATIENCE, "the work counted", async || {
        let text = metrics().await;
        (sample(&text, "rac_sp_sessions_total{outcome=\"closed\"}") == Some(2.0)
            && sample(&text, "rac_sp_tenants_connected") == Some(1.0)
            && sample(&text, "rac_sp_handshake_failures_total{reason=\"tls\"}") == Some(1.0)
            && sample(&text, "rac_sp_heartbeat_rtt_seconds_count").is_some_and(|n| n > 0.0))
        .then_some(text)
    })
    .await;
    for (name, want) in [
        ("rac_sp_sessions_active", 0.0),
        ("rac_sp_control_connections_total{result=\"admitted\"}", 1.0),
        ("rac_sp_sessions_total{outcome=\"refused\"}", 1.0),
        ("rac_sp_session_setup_seconds_count", 2.0),
        ("rac_sp_logins_total{result=\"ok\"}", 1.0),
        ("rac_sp_logins_total{result=\"failed\"}", 2.0),
        ("rac_sp_shed_total{reason=\"login_rate_limited\"}", 1.0),
    ] {
        assert_eq!(value(&text, name), want, "{name}\n{text}");
    }
    // The end-to-end channel carried the 64 KiB each way, and its TLS on top.
    for direction in ["to_tenant", "from_tenant"] {
        let name = format!("rac_sp_relayed_bytes_total{{direction=\"{direction}\"}}");
        let counted = value(&text, &name);
        assert!(counted >= MOVED as f64, "{name} = {counted}\n{text}");
    }
    assert!(text.contains("rac_build_info{version=\""), "{text}");
    assert!(!text.contains("acme"), "no tenant label");
    // Every sample line is NAME{LABELS} VALUE with a number.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let value = line.rsplit(' ').next().expect("value");
        assert!(value.parse::<f64>().is_ok(), "{line}");
    }
    promtool_check(&text);
}

/// `/v1/gateways`: the pool from sp.toml, and each trusted gateway with the connections
/// this SP took from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_show_the_pool_and_the_trusted_gateways_seen() {
    let admin = Admin::start_with(rac::sp::config::SpConfig {
        gateways: vec!["gw1.example.net:6180".into()],
        trusted_proxies: vec![common::loopback(2), common::loopback(4)],
        ..quick_config()
    })
    .await;
    // A connection from 127.0.0.2, as a gateway without PROXY headers makes it.
    let _via_gateway = admin.sp.raw_from(common::loopback(2)).await;
    let (status, gateways) = admin.get("/v1/gateways").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(gateways["pool"], json!(["gw1.example.net:6180"]));
    let trusted = gateways["trusted"].as_array().expect("trusted");
    assert_eq!(trusted.len(), 2, "{gateways}");
    let seen = |address: &str| {
        trusted
            .iter()
            .find(|g| g["address"] == address)
            .unwrap_or_else(|| panic!("{address} in {gateways}"))
    };
    assert_eq!(seen("127.0.0.2")["connections"], 1, "{gateways}");
    let last_seen = seen("127.0.0.2")["last_seen"].as_u64().expect("last_seen");
    assert!(rac::util::now_unix_secs() - last_seen < 60, "{gateways}");
    assert_eq!(seen("127.0.0.4")["connections"], 0, "{gateways}");
    assert_eq!(seen("127.0.0.4")["last_seen"], Value::Null, "{gateways}");
}

/// `promtool check metrics` on the text, where Prometheus' tool is installed (`.ci/run`
/// installs it).
fn promtool_check(text: &str) {
    use std::io::Write;
    let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool is missing, and .ci/run installs it"
        );
        eprintln!("promtool not installed: skipping its check");
        return;
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_flips_on_a_locked_registry_and_on_drain() {
    let admin = Admin::start().await;
    admin.ready().await;
    // Another process holds the registry's write lock: not ready within a second.
    let holder = rusqlite::Connection::open(admin.sp.state.registry()).expect("open");
    holder.execute_batch("BEGIN EXCLUSIVE").expect("lock");
    let body = not_ready_within_a_second(&admin, Instant::now()).await;
    assert!(
        body["reasons"][0]
            .as_str()
            .is_some_and(|r| r.contains("registry")),
        "{body}"
    );
    holder.execute_batch("ROLLBACK").expect("unlock");
    admin.ready().await;
    // Draining: the SP port stops; the admin listener says why, within a second, and the
    // first answer that is not ready already gives draining as the reason.
    let asked = Instant::now();
    admin.sp.shutdown.cancel();
    assert_draining(&not_ready_within_a_second(&admin, asked).await);
    // Once the SP port's loop has ended, the reason is still the drain.
    eventually(PATIENCE, "the SP port closed", async || {
        (admin.get("/v1/server").await.1["serving"] == false).then_some(())
    })
    .await;
    let (status, body) = admin.readyz().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_draining(&body);
    let health = admin
        .http
        .get(format!("{}/healthz", admin.base))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), StatusCode::OK, "alive while draining");
}

/// Polls `/readyz` until it is not ready, which must be within a second of `changed`: the
/// first such answer's body.
async fn not_ready_within_a_second(admin: &Admin, changed: Instant) -> Value {
    let (_, body) = eventually(PATIENCE, "not ready", async || {
        let (status, body) = admin.readyz().await;
        (status == StatusCode::SERVICE_UNAVAILABLE).then_some((status, body))
    })
    .await;
    assert!(
        changed.elapsed() < Duration::from_secs(1),
        "{:?}",
        changed.elapsed()
    );
    body
}

/// A `/readyz` body whose one reason is the drain.
fn assert_draining(body: &Value) {
    assert_eq!(
        body["reasons"],
        json!(["draining: the SP is shutting down"]),
        "{body}"
    );
}

/// A drain request (what SIGTERM and `POST /v1/node/drain` make) shows in `/readyz` at
/// once, before the SP port's loop has even noticed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_request_makes_readyz_say_draining_within_a_second() {
    let admin = Admin::start().await;
    admin.ready().await;
    let asked = Instant::now();
    admin.sp.service.request_stop();
    assert_draining(&not_ready_within_a_second(&admin, asked).await);
    assert_eq!(admin.get("/v1/server").await.1["draining"], true);
}

/// A token's `last_used` is bookkeeping: while the registry cannot be written, a read with
/// a token whose use would be recorded now is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_is_served_while_the_tokens_use_cannot_be_recorded() {
    let admin = Admin::start().await;
    let fresh = admin
        .sp
        .registry
        .create_admin_token("scraper", AdminScope::ReadOnly, &Actor::Local)
        .expect("token");
    let holder = rusqlite::Connection::open(admin.sp.state.registry()).expect("open");
    holder.execute_batch("BEGIN EXCLUSIVE").expect("lock");
    // Its first use would write `last_used`, which waits for the lock and then fails.
    let (status, server) = send(
        admin
            .http
            .get(format!("{}/v1/server", admin.base))
            .bearer_auth(&fresh),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{server}");
    assert_eq!(server["version"], rac::VERSION);
    holder.execute_batch("ROLLBACK").expect("unlock");
    let tokens = admin.sp.registry.admin_tokens().expect("tokens");
    let scraper = tokens
        .iter()
        .find(|t| t.name == "scraper")
        .expect("scraper");
    assert_eq!(scraper.last_used, None, "nothing was written");
    // A bad token is still refused while the registry is locked (only the bookkeeping is
    // let go).
    holder.execute_batch("BEGIN EXCLUSIVE").expect("lock");
    refused(
        send(
            admin
                .http
                .get(format!("{}/v1/server", admin.base))
                .bearer_auth("racadm_wrong"),
        )
        .await,
        StatusCode::UNAUTHORIZED,
        "auth_failed",
    );
    holder.execute_batch("ROLLBACK").expect("unlock");
}

/// `rac gateway` with its admin listener (its backend answers nothing): the process and the
/// admin listener's address.
fn gateway_with_admin() -> (Proc, String) {
    let (gateway, line) = Proc::start(
        &[
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--backend",
            "127.0.0.1:9",
            "--admin",
            "127.0.0.1:0",
        ],
        "gateway admin listening on",
    );
    let addr = line.rsplit(' ').next().expect("address").to_string();
    (gateway, addr)
}

/// Asserts that the admin listener at `addr` answers `/healthz` with `200 {"status":"ok"}`.
async fn assert_healthy(http: &reqwest::Client, addr: &str) {
    let (status, body) = send(http.get(format!("http://{addr}/healthz"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"status": "ok"}));
}

/// `rac gateway --admin`: its own `/metrics` and `/healthz`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_serves_its_metrics_and_health() {
    let (_gateway, addr) = gateway_with_admin();
    let http = reqwest::Client::new();
    assert_healthy(&http, &addr).await;
    let text = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for line in [
        "rac_gateway_accepted_total 0",
        "rac_gateway_connections_active 0",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
    promtool_check(&text);
}

/// `/v1/openapi.json`: the document derived from the code names every path of the API, each
/// with its methods, and the bearer scheme; it needs no token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_every_path() {
    let admin = Admin::start().await;
    let (status, doc) = send(admin.http.get(format!("{}/v1/openapi.json", admin.base))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{doc}"
    );
    for (path, methods) in [
        ("/v1/server", &["get"][..]),
        ("/v1/tenants", &["get", "post"]),
        ("/v1/tenants/{name}", &["get", "delete"]),
        ("/v1/tenants/{name}/disable", &["post"]),
        ("/v1/tenants/{name}/enable", &["post"]),
        ("/v1/tenants/{name}/rotate-secret", &["post"]),
        ("/v1/tenants/{name}/reset-key", &["post"]),
        ("/v1/operators", &["get", "post"]),
        ("/v1/operators/{name}", &["delete"]),
        ("/v1/operators/{name}/passwd", &["post"]),
        ("/v1/operators/{name}/tenants", &["put"]),
        ("/v1/operators/{name}/revoke", &["post"]),
        ("/v1/sessions", &["get"]),
        ("/v1/sessions/{id}", &["get", "delete"]),
        ("/v1/audit", &["get"]),
        ("/v1/gateways", &["get"]),
        ("/v1/node/drain", &["post"]),
    ] {
        for method in methods {
            assert!(
                doc["paths"][path][method].is_object(),
                "{method} {path} missing"
            );
        }
    }
    assert_eq!(doc["paths"].as_object().map(|p| p.len()), Some(17));
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert!(doc["components"]["schemas"]["AdminError"].is_object());
}

/// Runs curl against a mutual-TLS admin listener: its exit success, the HTTP status it read
/// (`000` when there was no answer) and the body.
fn curl_tls(
    url: &str,
    ca: &Path,
    client: Option<(&Path, &Path)>,
    token: Option<&str>,
) -> (bool, String, String) {
    let body = tempfile::NamedTempFile::new().expect("body file");
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sS", "--max-time", "20", "-w", "%{http_code}", "-o"])
        .arg(body.path())
        .arg("--cacert")
        .arg(ca);
    if let Some((cert, key)) = client {
        cmd.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    if let Some(token) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    let out = cmd.arg(url).output().expect("curl runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        std::fs::read_to_string(body.path()).unwrap_or_default(),
    )
}

/// `rac sp run --admin-mutual-tls`: HTTPS with the SP's server certificate; curl gets an
/// answer only with a client certificate signed by the SP's CA (made by `rac sp admin-cert
/// create`), and the bearer token is still required.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_takes_only_clients_with_a_certificate_of_the_sp_ca() {
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "curl is missing, and .ci/run installs it"
        );
        eprintln!("curl not installed: skipping");
        return;
    }
    let sp = TestSp::start(quick_config()).await;
    let state = &sp.state;
    let acceptor = rac::net::tls::mutual_acceptor(
        &state.server_chain(),
        &state.server_key(),
        &state.ca_cert(),
    )
    .expect("acceptor");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind admin");
    let url = format!("https://{}/v1/server", listener.local_addr().expect("addr"));
    let stop = CancellationToken::new();
    tokio::spawn(rac::net::admin::run_sp_with(
        sp.service.clone(),
        listener,
        Some(acceptor),
        stop.clone(),
    ));
    let token = sp
        .registry
        .create_admin_token("ops", AdminScope::ReadOnly, &Actor::Local)
        .expect("token");
    let certs = tempfile::tempdir().expect("tempdir");
    let made = std::process::Command::new(common::RAC)
        .args(["sp", "admin-cert", "create", "ops-laptop", "--state-dir"])
        .arg(&state.root)
        .arg("--out")
        .arg(certs.path())
        .output()
        .expect("rac sp admin-cert create");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let (cert, key) = (
        certs.path().join("ops-laptop.pem"),
        certs.path().join("ops-laptop.key"),
    );
    // A certificate of another SP's CA.
    let foreign_ca = rac::sp::pki::generate(&[]).expect("another CA");
    let foreign =
        rac::sp::pki::issue_client(&foreign_ca.ca_key_pem, "mallory", 1).expect("foreign");
    let (foreign_cert, foreign_key) = (
        certs.path().join("mallory.pem"),
        certs.path().join("mallory.key"),
    );
    std::fs::write(&foreign_cert, &foreign.cert_pem).expect("write");
    std::fs::write(&foreign_key, &foreign.key_pem).expect("write");
    let ca = state.ca_cert();

    let run = move || {
        let ok = curl_tls(&url, &ca, Some((&cert, &key)), Some(&token));
        let no_token = curl_tls(&url, &ca, Some((&cert, &key)), None);
        let no_cert = curl_tls(&url, &ca, None, Some(&token));
        let wrong_cert = curl_tls(&url, &ca, Some((&foreign_cert, &foreign_key)), Some(&token));
        let plain = curl_tls(&url.replace("https://", "http://"), &ca, None, Some(&token));
        (ok, no_token, no_cert, wrong_cert, plain)
    };
    let (ok, no_token, no_cert, wrong_cert, plain) =
        tokio::task::spawn_blocking(run).await.expect("curl");
    assert_eq!((ok.0, ok.1.as_str()), (true, "200"), "{ok:?}");
    let server: Value = serde_json::from_str(&ok.2).expect("JSON");
    assert!(server["version"].is_string(), "{server}");
    assert_eq!(
        no_token.1, "401",
        "the token is still required: {no_token:?}"
    );
    for (what, refused) in [
        ("no certificate", no_cert),
        ("another CA's", wrong_cert),
        ("plain HTTP", plain),
    ] {
        assert!(!refused.0 && refused.1 == "000", "{what}: {refused:?}");
    }
    stop.cancel();
}

/// The value of the sample `name` (with its labels) in a metrics text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// `rac tenant` with `[admin] listen`: its `/metrics` counts its sessions as the SP's does
/// (active, by outcome, bytes relayed to and from the local service), checked against the
/// sessions a console ran through a real SP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_redirector_counts_its_sessions() {
    let sp = TestSp::start(quick_config()).await;
    let secret = sp.add_tenant("acme");
    let service = common::tcp_echo().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("tenant.toml");
    std::fs::write(
        &config,
        format!(
            "name = \"acme\"\nsecret = \"{secret}\"\nca_cert = \"{}\"\nendpoints = [\"{}\"]\n\
             server_name = \"localhost\"\n[services]\necho = \"{service}\"\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n",
            sp.ca.display(),
            sp.addr
        ),
    )
    .expect("write config");
    let (_tenant, line) = Proc::start(
        &["tenant", "--config", config.to_str().expect("utf8")],
        "tenant admin listening on",
    );
    let addr = line.rsplit(' ').next().expect("address").to_string();
    let http = reqwest::Client::new();
    assert_healthy(&http, &addr).await;
    let metrics = || async {
        http.get(format!("http://{addr}/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    };
    eventually(PATIENCE, "the tenant is connected", async || {
        (sample(&metrics().await, "rac_tenant_connected") == Some(1.0)).then_some(())
    })
    .await;

    let console = sp.console().await;
    // One session that carries 1000 bytes each way and ends cleanly, one an admin cuts.
    let mut session = console
        .open_session("acme", "echo", |_, _| {})
        .await
        .expect("session");
    let data = vec![7u8; 1000];
    tokio::io::AsyncWriteExt::write_all(&mut session.stream, &data)
        .await
        .expect("write");
    let mut back = vec![0u8; 1000];
    session.stream.read_exact(&mut back).await.expect("echo");
    assert_eq!(back, data);
    let (_, text) = eventually(PATIENCE, "one session active", async || {
        let text = metrics().await;
        (sample(&text, "rac_tenant_sessions_active") == Some(1.0)).then_some(((), text))
    })
    .await;
    assert_eq!(
        sample(&text, "rac_tenant_sessions_total{outcome=\"closed\"}"),
        Some(0.0)
    );
    tokio::io::AsyncWriteExt::shutdown(&mut session.stream)
        .await
        .expect("close_notify");
    let mut rest = Vec::new();
    let _ = session.stream.read_to_end(&mut rest).await;

    let cut = console
        .open_session("acme", "echo", |_, _| {})
        .await
        .expect("second session");
    // Cut only once the tenant relays it (before, its end would count as `failed`).
    eventually(PATIENCE, "the second session active", async || {
        (sample(&metrics().await, "rac_tenant_sessions_active") == Some(1.0)).then_some(())
    })
    .await;
    assert!(
        sp.service
            .sessions
            .end(&cut.session_id, Actor::AdminToken("ops".into()))
    );

    let text = eventually(PATIENCE, "both sessions counted", async || {
        let text = metrics().await;
        (sample(&text, "rac_tenant_sessions_total{outcome=\"closed\"}") == Some(1.0)
            && sample(&text, "rac_tenant_sessions_total{outcome=\"cut\"}") == Some(1.0))
        .then_some(text)
    })
    .await;
    assert_eq!(sample(&text, "rac_tenant_sessions_active"), Some(0.0));
    for outcome in ["refused", "failed", "withdrawn"] {
        let name = format!("rac_tenant_sessions_total{{outcome=\"{outcome}\"}}");
        assert_eq!(sample(&text, &name), Some(0.0), "{name}\n{text}");
    }
    // The echo's 1000 bytes each way, counted at the local service's side of the channel.
    for direction in ["to_service", "from_service"] {
        let name = format!("rac_tenant_relayed_bytes_total{{direction=\"{direction}\"}}");
        assert_eq!(sample(&text, &name), Some(1000.0), "{name}\n{text}");
    }
    promtool_check(&text);
}

/// `rac sp run` as a process, its log in a file: the process and its admin listener's
/// address.
async fn sp_process(state: &Path, log: &Path) -> (Proc, String) {
    let file = std::fs::File::create(log).expect("log file");
    let child = std::process::Command::new(common::RAC)
        .args(["sp", "run", "--listen", "127.0.0.1:0", "--state-dir"])
        .arg(state)
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(file)
        .spawn()
        .expect("spawn rac sp run");
    let sp = Proc(child);
    let admin = eventually(PATIENCE, "the admin listener", async || {
        let text = std::fs::read_to_string(log).ok()?;
        text.lines()
            .find_map(|l| l.split("SP admin listening on ").nth(1))
            .map(|a| a.trim().to_string())
    })
    .await;
    (sp, admin)
}

/// How many lines of the log at `log` contain `text`.
fn log_lines(log: &Path, text: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(text))
        .count()
}

/// SIGHUP (`systemctl reload rac-sp`) makes a running `rac sp run` re-read sp.toml: a new
/// gateway pool shows at once (the registry poll, an hour here, would not have seen it yet),
/// other changed settings are named as waiting for a restart, and a file that does not
/// load is refused while the SP goes on serving with what it has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_gateway_pool_of_a_running_sp() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("sp");
    let init = rac_sp(&state, &["init"]).await;
    assert!(init.status.success(), "{init:?}");
    let settings = |gateways: &str, heartbeat_secs: u32| {
        format!(
            "registry_poll_millis = 3600000\nheartbeat_secs = {heartbeat_secs}\n\
             gateways = [{gateways}]\n[admin]\nlisten = \"127.0.0.1:0\"\n"
        )
    };
    let config = state.join("sp.toml");
    std::fs::write(&config, settings("\"gw1.example.net:6180\"", 20)).expect("sp.toml");
    let token =
        rac_sp_json(&state, &["admin-token", "create", "ops", "--read-only"]).await["token"]
            .as_str()
            .expect("token")
            .to_string();
    let log = dir.path().join("sp.log");
    let (sp, admin) = sp_process(&state, &log).await;
    let http = reqwest::Client::new();
    let pool = || async {
        let (status, body) = send(
            http.get(format!("http://{admin}/v1/gateways"))
                .bearer_auth(&token),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["pool"].clone()
    };
    assert_eq!(pool().await, json!(["gw1.example.net:6180"]));

    std::fs::write(
        &config,
        settings("\"gw2.example.net:6180\", \"gw3.example.net:6180\"", 25),
    )
    .expect("sp.toml");
    let asked = Instant::now();
    sp.signal("HUP");
    eventually(PATIENCE, "the new pool", async || {
        (pool().await == json!(["gw2.example.net:6180", "gw3.example.net:6180"])).then_some(())
    })
    .await;
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    eventually(PATIENCE, "the reload logged", async || {
        (log_lines(&log, "reload: gateway pool changed") == 1
            && log_lines(&log, "heartbeat_secs changed") == 1)
            .then_some(())
    })
    .await;

    // A file that does not parse: refused, logged, the running settings kept.
    std::fs::write(&config, "gateways = [\"gw4.example.net:6180\"\n").expect("sp.toml");
    sp.signal("HUP");
    eventually(PATIENCE, "the refusal logged", async || {
        (log_lines(&log, "keeping the running settings") == 1).then_some(())
    })
    .await;
    // One that parses but is not valid, likewise.
    std::fs::write(&config, settings("\"no-port\"", 20)).expect("sp.toml");
    sp.signal("HUP");
    eventually(PATIENCE, "the second refusal logged", async || {
        (log_lines(&log, "keeping the running settings") == 2).then_some(())
    })
    .await;
    assert!(
        log_lines(&log, "must be host:port") == 1,
        "the log says why:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(
        pool().await,
        json!(["gw2.example.net:6180", "gw3.example.net:6180"])
    );
    let (status, ready) = send(http.get(format!("http://{admin}/readyz"))).await;
    assert_eq!(status, StatusCode::OK, "still serving: {ready}");
    let mut sp = sp;
    assert!(
        sp.0.try_wait().expect("try_wait").is_none(),
        "still running"
    );
    // SIGTERM still stops it, cleanly.
    sp.signal("TERM");
    assert!(sp.exited().success());
}

/// A gateway's settings are its command line: SIGHUP is logged and ignored, and the
/// gateway goes on serving (before, SIGHUP's default action ended it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_survives_sighup() {
    let (mut gateway, addr) = gateway_with_admin();
    for _ in 0..3 {
        gateway.signal("HUP");
    }
    let http = reqwest::Client::new();
    // Signals are delivered at once; a process they ended would be gone by the second look.
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            gateway.0.try_wait().expect("try_wait").is_none(),
            "the gateway ended on SIGHUP"
        );
        assert_healthy(&http, &addr).await;
    }
    gateway.signal("TERM");
    assert!(gateway.exited().success());
}

/// `rac sp tenant list` and `rac sp audit` take the API's filters and paging, through the
/// same code: the same rows come out of both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_with_the_apis_filters_and_paging() {
    let admin = Admin::start().await;
    let state = admin.sp.state.root.clone();
    for name in ["acme", "globex", "initech", "umbrella"] {
        assert_eq!(
            admin.post("/v1/tenants", json!({"name": name})).await.0,
            StatusCode::CREATED
        );
    }
    assert_eq!(
        admin.post("/v1/tenants/globex/disable", json!({})).await.0,
        StatusCode::OK
    );

    // Tenants: filters.
    let names = |rows: &Value| -> Vec<String> {
        column(rows, "name")
            .into_iter()
            .map(|n| n.as_str().expect("name").to_string())
            .collect()
    };
    let cli = rac_sp_json(
        &state,
        &["tenant", "list", "--enabled", "true", "--name", "e"],
    )
    .await;
    let (_, api) = admin.get("/v1/tenants?enabled=true&name=e").await;
    assert_eq!(names(&cli), ["acme", "initech", "umbrella"]);
    assert_eq!(names(&cli), names(&api["tenants"]));
    let cli = rac_sp_json(&state, &["tenant", "list", "--enabled", "false"]).await;
    assert_eq!(names(&cli), ["globex"]);
    // Tenants: paging, the cursor named on stderr.
    let out = rac_sp(&state, &["tenant", "list", "--limit", "2", "--json"]).await;
    assert!(out.status.success(), "{out:?}");
    let first: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(names(&first), ["acme", "globex"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--after globex"),
        "{out:?}"
    );
    let rest = rac_sp_json(
        &state,
        &["tenant", "list", "--after", "globex", "--limit", "2"],
    )
    .await;
    let (_, api) = admin.get("/v1/tenants?after=globex&limit=2").await;
    assert_eq!(names(&rest), ["initech", "umbrella"]);
    assert_eq!(names(&rest), names(&api["tenants"]));
    assert_eq!(api["next"], Value::Null);
    let out = rac_sp(
        &state,
        &["tenant", "list", "--after", "globex", "--limit", "2"],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    assert!(out.stderr.is_empty(), "the last page: {out:?}");
    let plain = String::from_utf8_lossy(&out.stdout);
    assert!(
        plain.contains("initech") && plain.contains("umbrella") && !plain.contains("acme"),
        "{plain}"
    );

    // Audit: sessions of two operators, beside the account changes above.
    for (operator, tenant) in [("alice", "acme"), ("bob", "globex"), ("alice", "acme")] {
        admin
            .sp
            .registry
            .audit_start(operator, tenant, "echo", "127.0.0.1:1")
            .expect("row");
    }
    let ids = |rows: &Value| -> Vec<i64> {
        column(rows, "id")
            .into_iter()
            .map(|n| n.as_i64().expect("id"))
            .collect()
    };
    for (args, query) in [
        (&["--tenant", "acme"][..], "tenant=acme"),
        (&["--operator", "bob"], "operator=bob"),
        (
            &["--outcome", "tenant disabled"],
            "outcome=tenant%20disabled",
        ),
        (
            &["--tenant", "acme", "--outcome", "open"],
            "tenant=acme&outcome=open",
        ),
        (
            &["--since", "2000-01-01", "--until", "2000-01-02"],
            "since=946684800&until=946771200",
        ),
    ] {
        let cli = rac_sp_json(&state, &[&["audit"], args].concat()).await;
        let (_, api) = admin.get(&format!("/v1/audit?{query}")).await;
        assert_eq!(ids(&cli), ids(&api["entries"]), "{args:?}");
    }
    assert_eq!(
        ids(&rac_sp_json(&state, &["audit", "--tenant", "acme", "--outcome", "open"]).await).len(),
        2
    );
    // Audit: pages of 3 by --before, as the API's cursor, cover the log once.
    let (_, all) = admin.get("/v1/audit?limit=1000").await;
    let mut seen = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let mut args = vec!["audit", "--limit", "3", "--json"];
        if let Some(before) = &before {
            args.extend(["--before", before.as_str()]);
        }
        let out = rac_sp(&state, &args).await;
        assert!(out.status.success(), "{out:?}");
        let page: Value = serde_json::from_slice(&out.stdout).expect("JSON");
        seen.extend(ids(&page));
        let stderr = String::from_utf8_lossy(&out.stderr);
        match stderr.split("--before ").nth(1) {
            Some(next) => {
                let next = next.trim().to_string();
                assert_eq!(Some(next.parse::<i64>().expect("id")), seen.last().copied());
                before = Some(next);
            }
            None => break,
        }
    }
    assert_eq!(seen, ids(&all["entries"]));
    assert!(seen.len() > 6, "{seen:?}");
    // Bad input: a time that is not one (refused by the parser), a span that is empty
    // (refused by the API's code, with its code).
    let out = rac_sp(&state, &["audit", "--since", "yesterday"]).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Unix seconds"),
        "{out:?}"
    );
    let out = rac_sp(&state, &["audit", "--since", "20", "--until", "10"]).await;
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).ends_with("(bad_request)\n"),
        "{out:?}"
    );
    refused(
        admin.get("/v1/audit?since=20&until=10").await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
}

/// One refusal, two ways in: the CLI prints the code the API answers with (and, with
/// `--json`, the API's `{code, message}`), and exits with that code's status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_has_the_same_code_in_the_cli_and_the_api() {
    let admin = Admin::start().await;
    let state = admin.sp.state.root.clone();

    let out = rac_sp(&state, &["tenant", "remove", "nobody"]).await;
    assert_eq!(out.status.code(), Some(6), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let (status, api) = admin.delete("/v1/tenants/nobody").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(api["code"], "unknown_tenant");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "error: {} (unknown_tenant)\n",
            api["message"].as_str().expect("message")
        )
    );

    rac_sp_json(&state, &["tenant", "add", "acme"]).await;
    let out = rac_sp(&state, &["tenant", "add", "acme", "--json"]).await;
    assert_eq!(out.status.code(), Some(10), "{out:?}");
    assert!(out.stdout.is_empty(), "no result on stdout: {out:?}");
    let cli: Value = serde_json::from_slice(&out.stderr).expect("a JSON error");
    let (status, api) = admin.post("/v1/tenants", json!({"name": "acme"})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(cli, api, "the same body");
    assert_eq!(cli["code"], "already_exists");

    // A failure before any account is touched has no code.
    let out = rac_sp(Path::new("/nonexistent/rac"), &["tenant", "list", "--json"]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let cli: Value = serde_json::from_slice(&out.stderr).expect("a JSON error");
    assert_eq!(cli["code"], Value::Null, "{cli}");
    assert!(cli["message"].as_str().is_some_and(|m| !m.is_empty()));
}

/// The CLI and a running SP with its admin listener share the registry file: each sees the
/// other's changes at once, however long the SP has been probing the file for `/readyz`
/// (a probe that opened the file outside SQLite once dropped the SP's locks, and the next
/// CLI command deleted the write-ahead log under it: the two diverged, and the SP's writes
/// were lost to everyone else).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_and_api_changes_see_each_other_while_readyz_probes_the_registry() {
    let admin = Admin::start().await;
    let state = admin.sp.state.root.clone();
    let started = Instant::now();
    let mut round = 0;
    // Rounds over several probes (one every 250 ms).
    while round < 3 || started.elapsed() < Duration::from_millis(1500) {
        let by_cli = format!("cli{round}");
        rac_sp_json(&state, &["tenant", "add", &by_cli]).await;
        let (status, body) = admin.get(&format!("/v1/tenants/{by_cli}")).await;
        assert_eq!(status, StatusCode::OK, "round {round}: {body}");
        let by_api = format!("api{round}");
        assert_eq!(
            admin.post("/v1/tenants", json!({"name": by_api})).await.0,
            StatusCode::CREATED
        );
        let listed = rac_sp_json(&state, &["tenant", "list", "--name", &by_api]).await;
        assert_eq!(
            column(&listed, "name"),
            [&json!(by_api)],
            "round {round}: the CLI sees the API's change"
        );
        round += 1;
    }
    // And the audit rows the SP wrote are in the file for anyone.
    let audit = rac_sp_json(&state, &["audit", "--limit", "1000"]).await;
    assert_eq!(
        column(&audit, "outcome")
            .iter()
            .filter(|o| **o == "tenant added")
            .count(),
        2 * round,
        "{audit}"
    );
}
