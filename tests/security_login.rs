//! Logins under attack and operator accounts after a leak, over real TLS on loopback: the
//! per-source limit holds against concurrent guesses, a login flood from many addresses stays
//! within a memory budget and still lets an honest login in, and a revoked, expired or
//! re-scoped operator loses their tenant feed and sessions at once. `docs/SECURITY.md` names
//! these tests next to its claims.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{PATIENCE, TestSp, loopback, quick_config, tcp_from};
use rac::net::console::{ConsoleClient, ConsoleError, TenantFeed};
use rac::net::tls::{TlsClient, Trust};
use rac::wire::frame::{MAX_FRAME_LEN, read_frame, write_frame};
use rac::wire::protocol::{ApiResponse, ErrorCode, Hello, HelloReply, Role};
use tokio::io::AsyncReadExt;

const RAC: &str = env!("CARGO_BIN_EXE_rac");

fn reply_code(reply: &HelloReply) -> Option<ErrorCode> {
    match reply {
        HelloReply::Error(e) => Some(e.code),
        HelloReply::Welcome(_) => None,
    }
}

/// Forty wrong passwords sent at the same moment from one address, each sent again while
/// the SP answers `busy`: the limit (5) holds, because an attempt is counted before its
/// password is checked. The rest are refused without a check (`rate_limited`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_wrong_logins_from_one_address_are_checked_at_most_five_times() {
    let sp = Arc::new(
        TestSp::start(rac::sp::config::SpConfig {
            // Admission must let all forty through to the login: this test is about the limiter.
            max_pending_per_source: 100,
            ..quick_config()
        })
        .await,
    );
    let attacker = loopback(60);
    let start = Arc::new(tokio::sync::Barrier::new(40));
    let busy = Arc::new(AtomicUsize::new(0));
    let attempts: Vec<_> = (0..40)
        .map(|i| {
            let sp = sp.clone();
            let start = start.clone();
            let busy = busy.clone();
            tokio::spawn(async move {
                let hello = Hello::new(Role::Operator {
                    user: "admin".into(),
                    password: Some(format!("guess {i}")),
                    token: None,
                    console_key: None,
                });
                // Connect first, then send every hello at once.
                let mut stream = sp.raw_from(attacker).await;
                start.wait().await;
                loop {
                    write_frame(&mut stream, &hello).await.expect("hello");
                    let reply: HelloReply = read_frame(&mut stream, MAX_FRAME_LEN)
                        .await
                        .expect("read")
                        .expect("reply");
                    match &reply {
                        HelloReply::Error(e) if e.code == ErrorCode::Busy => assert_eq!(
                            e.message,
                            "the SP is busy checking other logins; try again in a moment"
                        ),
                        _ => return reply,
                    }
                    busy.fetch_add(1, Ordering::Relaxed);
                    stream = sp.raw_from(attacker).await;
                }
            })
        })
        .collect();
    let mut checked = 0;
    let mut limited = 0;
    for attempt in attempts {
        let reply = tokio::time::timeout(PATIENCE, attempt)
            .await
            .expect("answered in time")
            .expect("task");
        match reply_code(&reply) {
            Some(ErrorCode::AuthFailed) => checked += 1,
            Some(ErrorCode::RateLimited) => limited += 1,
            other => panic!("unexpected answer {other:?}: {reply:?}"),
        }
    }
    eprintln!(
        "40 concurrent wrong logins from one address: {checked} checked, {limited} rate_limited \
         (after {} busy answers, each sent again)",
        busy.load(Ordering::Relaxed)
    );
    assert!(
        checked <= 5,
        "{checked} of 40 concurrent guesses were checked (limit 5)"
    );
    assert_eq!(checked + limited, 40);
    // Another address is not affected.
    let reply = sp.login_from(loopback(61), "admin", &sp.password).await;
    assert_eq!(reply_code(&reply), None, "{reply:?}");
}

/// `rac sp run` as a child process, its address, and a thread that drains its stderr.
struct SpProcess {
    child: Child,
    addr: SocketAddr,
    ca: std::path::PathBuf,
    password: String,
    _dir: tempfile::TempDir,
}

impl Drop for SpProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl SpProcess {
    fn start() -> SpProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("sp");
        let state_s = state.to_str().expect("utf8 path");
        let out = Command::new(RAC)
            .args(["sp", "init", "--state-dir", state_s, "--json"])
            .env_remove("RUST_LOG")
            .output()
            .expect("rac sp init");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let init: serde_json::Value = serde_json::from_slice(&out.stdout).expect("init json");
        let mut child = Command::new(RAC)
            .args([
                "sp",
                "run",
                "--state-dir",
                state_s,
                "--listen",
                "127.0.0.1:0",
            ])
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("rac sp run");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads every line, so the SP never blocks on a full pipe while it logs the flood.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("SP listening on ") {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        let addr = rx
            .recv_timeout(PATIENCE)
            .expect("the SP printed its address")
            .parse()
            .expect("address");
        SpProcess {
            child,
            addr,
            ca: init["ca_cert"].as_str().expect("ca").into(),
            password: init["password"].as_str().expect("password").into(),
            _dir: dir,
        }
    }

    /// A field of /proc/PID/status in KiB (VmRSS, VmHWM).
    fn status_kib(&self, field: &str) -> u64 {
        status_kib(self.child.id(), field).expect("the SP process is alive")
    }
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// One operator login by hand from `source`: the reply's code (`None`: welcome).
async fn login_once(
    tls: &TlsClient,
    addr: SocketAddr,
    source: std::net::IpAddr,
    user: &str,
    password: &str,
) -> Result<Option<ErrorCode>, String> {
    let tcp = tcp_from(source, addr).await.map_err(|e| e.to_string())?;
    let mut stream = tls.handshake(tcp).await.map_err(|e| e.to_string())?;
    let hello = Hello::new(Role::Operator {
        user: user.into(),
        password: Some(password.into()),
        token: None,
        console_key: None,
    });
    write_frame(&mut stream, &hello)
        .await
        .map_err(|e| e.to_string())?;
    match read_frame::<HelloReply, _>(&mut stream, MAX_FRAME_LEN).await {
        Ok(Some(reply)) => Ok(reply_code(&reply)),
        Ok(None) => Err("closed without a reply".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Tallies flood outcomes by answer.
type Tally = std::collections::BTreeMap<String, usize>;

/// One flood slot: the answer to each login it sent.
type Slot = tokio::task::JoinHandle<Vec<Result<Option<ErrorCode>, String>>>;

/// `slots` logins at once from 127.0.0.2 to 127.0.0.251 (wrong passwords and unknown users).
/// With `until`, each slot sends its login again as soon as it is answered, until then.
fn flood(
    tls: &Arc<TlsClient>,
    addr: SocketAddr,
    slots: usize,
    until: Option<Instant>,
) -> Vec<Slot> {
    (0..slots)
        .map(|i| {
            let tls = tls.clone();
            let source = loopback(2 + (i % FLOOD_ADDRESSES) as u8);
            tokio::spawn(async move {
                let user = if i % 2 == 0 { "admin" } else { "nobody" };
                let mut outcomes = Vec::new();
                for round in 0.. {
                    let guess = format!("guess {i} {round}");
                    outcomes.push(login_once(&tls, addr, source, user, &guess).await);
                    if until.is_none_or(|t| Instant::now() >= t) {
                        break;
                    }
                }
                outcomes
            })
        })
        .collect()
}

async fn tally(flood: Vec<Slot>, codes: &mut Tally) {
    for slot in flood {
        let outcomes = tokio::time::timeout(PATIENCE, slot)
            .await
            .expect("every flood login is answered in time")
            .expect("task");
        for outcome in outcomes {
            let key = match outcome {
                Ok(Some(code)) => format!("{code:?}"),
                Ok(None) => "Welcome".into(),
                Err(e) => format!("no reply ({e})"),
            };
            *codes.entry(key).or_default() += 1;
        }
    }
}

/// A correct password login from 127.0.0.253, sent again on `busy` every 50 ms as a console
/// would (faster): how long until it got in, and how many `busy` answers it had.
fn honest_login(
    tls: &Arc<TlsClient>,
    addr: SocketAddr,
    password: &str,
) -> tokio::task::JoinHandle<(Duration, usize)> {
    let (tls, password) = (tls.clone(), password.to_string());
    tokio::spawn(async move {
        let began = Instant::now();
        let mut busy = 0;
        loop {
            match login_once(&tls, addr, loopback(253), "admin", &password).await {
                Ok(None) => return (began.elapsed(), busy),
                Ok(Some(ErrorCode::Busy)) => busy += 1,
                other => panic!("the honest login failed: {other:?}"),
            }
            assert!(began.elapsed() < PATIENCE, "the honest login never got in");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

const FLOOD_ADDRESSES: usize = 250;

/// 500 logins at once from 250 addresses against `rac sp run` in its own process, first as
/// one burst, then kept up for 4 s (each sent again as soon as it is answered). The SP's
/// memory grows by less than 200 MiB: password checks run a few at a time, in memory kept for
/// them, and the rest are told `busy` or `rate_limited` at once. A correct login from another
/// address, sent with the burst and retried on `busy`, gets in. During the sustained flood,
/// the same operator logs in again from that address, now known (it logged in before), while
/// the flood is still on; and an operator already logged in keeps reading the tenant list (a
/// token needs no password check).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_flood_stays_within_memory_and_an_honest_login_gets_in() {
    const FLOOD: usize = 500;
    const BUDGET_KIB: u64 = 200 * 1024;
    const SUSTAINED: Duration = Duration::from_secs(4);
    let sp = SpProcess::start();
    let tls = Arc::new(TlsClient::new(&Trust::CaFile(sp.ca.clone()), "localhost").expect("tls"));
    let baseline_kib = sp.status_kib("VmRSS");

    // A guard for the machine: if the SP balloons (as it did before the cap), stop it early.
    let pid = sp.child.id();
    let peak_kib = Arc::new(AtomicU64::new(baseline_kib));
    let watching = Arc::new(AtomicBool::new(true));
    let watchdog = {
        let (peak_kib, watching) = (peak_kib.clone(), watching.clone());
        std::thread::spawn(move || {
            while watching.load(Ordering::Relaxed) {
                let Some(rss) = status_kib(pid, "VmRSS") else {
                    return;
                };
                peak_kib.fetch_max(rss, Ordering::Relaxed);
                if rss > baseline_kib + 4 * BUDGET_KIB {
                    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };

    // The burst, and the honest login sent together with it.
    let mut burst_codes = Tally::new();
    let started = Instant::now();
    let burst = flood(&tls, sp.addr, FLOOD, None);
    let honest = honest_login(&tls, sp.addr, &sp.password);
    tally(burst, &mut burst_codes).await;
    let burst_time = started.elapsed();
    let (honest_time, honest_busy) = tokio::time::timeout(PATIENCE, honest)
        .await
        .expect("the honest login ended")
        .expect("honest task");

    // The sustained flood, with a logged-in console reading the list, and the honest operator
    // logging in again from its address, known now.
    let console = ConsoleClient::new(rac::net::console::ConsoleConfig {
        route: rac::net::dial::Route::Direct(sp.addr.to_string()),
        trust: Trust::CaFile(sp.ca.clone()),
        server_name: "localhost".into(),
        user: "admin".into(),
        keys: rac::net::console::ConsoleKeys::in_memory().expect("console key"),
    })
    .expect("client");
    console
        .login(&sp.password)
        .await
        .expect("login before the flood");
    let mut sustained_codes = Tally::new();
    let ends = Instant::now() + SUSTAINED;
    let sustained = flood(&tls, sp.addr, FLOOD, Some(ends));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let honest = honest_login(&tls, sp.addr, &sp.password);
    let mut lists = Vec::new();
    while Instant::now() + Duration::from_millis(500) < ends {
        let asked = Instant::now();
        console
            .tenants()
            .await
            .expect("a logged-in console reads the tenant list during the flood");
        lists.push(asked.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let listed_during = Instant::now() < ends;
    tally(sustained, &mut sustained_codes).await;
    let (sustained_honest_time, sustained_honest_busy) = tokio::time::timeout(PATIENCE, honest)
        .await
        .expect("the honest login ended")
        .expect("honest task");
    // It began 500 ms into the flood.
    let honest_during = sustained_honest_time + Duration::from_millis(500) < SUSTAINED;

    watching.store(false, Ordering::Relaxed);
    watchdog.join().expect("watchdog");
    let hwm_kib = sp.status_kib("VmHWM");
    let growth_kib = hwm_kib.saturating_sub(baseline_kib);
    eprintln!(
        "burst of {FLOOD} logins from {FLOOD_ADDRESSES} addresses: {burst_codes:?} in \
         {burst_time:?}; honest login in {honest_time:?} after {honest_busy} busy answers"
    );
    eprintln!(
        "sustained {SUSTAINED:?}: {sustained_codes:?}; tenant list by token {} times, slowest \
         {:?}; honest password login (known address) in {sustained_honest_time:?} after \
         {sustained_honest_busy} busy answers",
        lists.len(),
        lists.iter().max()
    );
    eprintln!(
        "SP RSS {} MiB before, peak {} MiB (sampled {} MiB), growth {} MiB",
        baseline_kib / 1024,
        hwm_kib / 1024,
        peak_kib.load(Ordering::Relaxed) / 1024,
        growth_kib / 1024,
    );
    assert!(
        growth_kib < BUDGET_KIB,
        "the SP grew by {} MiB under the flood (budget 200 MiB)",
        growth_kib / 1024
    );
    for codes in [&burst_codes, &sustained_codes] {
        assert_eq!(codes.get("Welcome"), None, "no wrong password got in");
        assert!(
            codes
                .keys()
                .all(|k| ["AuthFailed", "Busy", "RateLimited"].contains(&k.as_str())),
            "every flood login got a clear answer: {codes:?}"
        );
        assert!(
            codes.get("Busy").is_some_and(|&n| n > 0),
            "logins past the cap are told busy: {codes:?}"
        );
    }
    assert!(
        !lists.is_empty() && listed_during,
        "the console read its list during the flood"
    );
    assert!(
        honest_during,
        "the known address logged in during the flood (took {sustained_honest_time:?})"
    );
}

/// A `busy` refusal reads as a clear message, for the console window and the CLI alike.
#[test]
fn busy_is_explained_in_words() {
    assert_eq!(
        ErrorCode::Busy.describe(),
        "the SP is busy checking other logins; try again in a moment"
    );
    assert_eq!(
        serde_json::to_string(&ErrorCode::Busy).expect("json"),
        "\"busy\""
    );
}

/// The next frame of a feed, under the hang guard.
async fn next(feed: &mut TenantFeed) -> Result<Option<ApiResponse>, ConsoleError> {
    tokio::time::timeout(PATIENCE, feed.next())
        .await
        .expect("the feed answered in time")
}

/// Waits until the feed says why it ends (an error frame) and then closes.
async fn feed_ends_with(feed: &mut TenantFeed) -> (ErrorCode, String) {
    loop {
        match next(feed).await.expect("read feed") {
            Some(ApiResponse::Error { code, message }) => {
                assert!(
                    matches!(next(feed).await, Ok(None) | Err(_)),
                    "the SP closes the feed after saying why"
                );
                return (code, message);
            }
            Some(_) => continue,
            None => panic!("the feed closed without saying why"),
        }
    }
}

/// A live tenant feed of a token ends when the token is revoked (here by a second process,
/// as `rac sp operator revoke` does) and when it expires, each with an error frame saying
/// why, which the console shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_or_expired_token_loses_its_live_feed() {
    let sp = TestSp::start(rac::sp::config::SpConfig {
        token_ttl_secs: 2,
        ..quick_config()
    })
    .await;
    // A token that outlives the test, so only the revocation can end its feed.
    let long = sp
        .registry
        .create_token("admin", Duration::from_secs(3600))
        .expect("token");
    let console = ConsoleClient::new(sp.console_config()).expect("client");
    console.set_token(long);
    let mut feed = console.subscribe().await.expect("subscribe");
    assert!(matches!(
        next(&mut feed).await,
        Ok(Some(ApiResponse::TenantPage(_)))
    ));
    let other = rac::sp::registry::Registry::open(&sp.state.registry()).expect("open");
    let revoked_at = Instant::now();
    assert_eq!(other.revoke_operator_tokens("admin").expect("revoke"), 1);
    let (code, message) = feed_ends_with(&mut feed).await;
    eprintln!("feed ended {:?} after the revoke", revoked_at.elapsed());
    assert_eq!(code, ErrorCode::AuthFailed);
    assert!(message.contains("revoked"), "{message}");
    // The console's words are the SP's.
    let e = ConsoleError::Refused { code, message };
    assert!(
        rac::ui::engine::describe_error(&e).contains("token was revoked"),
        "{e}"
    );

    // Expiry: the feed ends at the token's expiry, not later (whole seconds: by 2 s + 1).
    let console = sp.console().await;
    let logged_in = Instant::now();
    let mut feed = console.subscribe().await.expect("subscribe");
    let (code, message) = feed_ends_with(&mut feed).await;
    let after = logged_in.elapsed();
    assert_eq!(code, ErrorCode::TokenExpired, "{message}");
    assert!(message.contains("expired"), "{message}");
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(4),
        "the feed ended {after:?} after a login with a 2 s token"
    );
}

/// Runs `rac sp operator ARGS... --state-dir DIR` and returns its stdout.
fn operator_cmd(sp: &TestSp, args: &[&str], env_password: Option<&str>) -> String {
    let mut cmd = Command::new(RAC);
    cmd.args(["sp", "operator"])
        .args(args)
        .arg("--state-dir")
        .arg(&sp.state.root)
        .env_remove("RUST_LOG")
        .env_remove("RAC_PASSWORD")
        .stdin(Stdio::null());
    if let Some(pw) = env_password {
        cmd.env("RAC_PASSWORD", pw);
    }
    let out = cmd.output().expect("run rac");
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8")
}

/// What a logged-in operator holds open: a live feed and a session.
struct Holding {
    feed: TenantFeed,
    session: rac::net::console::Session,
}

async fn hold(sp: &TestSp, user: &str, password: &str) -> Holding {
    let mut config = sp.console_config();
    config.user = user.into();
    let console = ConsoleClient::new(config).expect("client");
    console.login(password).await.expect("login");
    let mut feed = console.subscribe().await.expect("subscribe");
    assert!(matches!(
        next(&mut feed).await,
        Ok(Some(ApiResponse::TenantPage(_)))
    ));
    let session = console
        .open_session("acme", "echo", |_, _| {})
        .await
        .expect("session");
    Holding { feed, session }
}

/// After the command, the session ends and the feed ends with a reason, within the poll.
async fn both_end(holding: &mut Holding) -> String {
    let mut rest = Vec::new();
    tokio::time::timeout(PATIENCE, holding.session.stream.read_to_end(&mut rest))
        .await
        .expect("the session ends")
        .ok();
    let (code, message) = feed_ends_with(&mut holding.feed).await;
    assert_eq!(code, ErrorCode::AuthFailed, "{message}");
    message
}

async fn login_code(sp: &TestSp, user: &str, password: &str) -> Option<ErrorCode> {
    reply_code(&sp.login_from(loopback(70), user, password).await)
}

/// `rac sp operator passwd`, `set-tenants` and `remove` against a running SP: each ends the
/// operator's open sessions and live feeds (the running SP sees the registry change), and is
/// in the audit log; after `passwd` the old password no longer logs in and the new one does;
/// after `set-tenants` a new login sees the new scope; after `remove` nothing logs in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_passwd_set_tenants_and_remove_end_tokens_feeds_and_sessions() {
    let sp = TestSp::start(quick_config()).await;
    let _acme = sp.online_tenant("acme").await;
    let _globex = sp.online_tenant("globex").await;
    sp.registry
        .add_operator("bob", "bob's first password", "*")
        .expect("operator");

    // passwd, the new password from RAC_PASSWORD.
    let mut held = hold(&sp, "bob", "bob's first password").await;
    let out = operator_cmd(&sp, &["passwd", "bob"], Some("bob's second password"));
    assert!(out.contains("revoked 1 token(s)"), "{out}");
    let message = both_end(&mut held).await;
    assert!(message.contains("revoked"), "{message}");
    assert_eq!(
        login_code(&sp, "bob", "bob's first password").await,
        Some(ErrorCode::AuthFailed),
        "the old password no longer logs in"
    );
    assert_eq!(login_code(&sp, "bob", "bob's second password").await, None);

    // passwd with nothing given (no variable, no terminal): generated and printed once.
    let mut held = hold(&sp, "bob", "bob's second password").await;
    let out = operator_cmd(&sp, &["passwd", "bob", "--json"], None);
    let printed: serde_json::Value = serde_json::from_str(&out).expect("json");
    let generated = printed["password"].as_str().expect("generated password");
    assert_eq!(generated.len(), 32);
    both_end(&mut held).await;
    assert_eq!(
        login_code(&sp, "bob", "bob's second password").await,
        Some(ErrorCode::AuthFailed)
    );

    // set-tenants: the old scope's session and feed end; a new login sees the new scope.
    let mut held = hold(&sp, "bob", generated).await;
    let out = operator_cmd(&sp, &["set-tenants", "bob", "globex"], None);
    assert!(out.contains("may now open: globex"), "{out}");
    both_end(&mut held).await;
    let mut config = sp.console_config();
    config.user = "bob".into();
    let console = ConsoleClient::new(config).expect("client");
    console.login(generated).await.expect("login");
    let names: Vec<_> = console
        .tenants()
        .await
        .expect("tenants")
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["globex"]);
    assert!(matches!(
        console.open_session("acme", "echo", |_, _| {}).await,
        Err(ConsoleError::Refused {
            code: ErrorCode::AccessDenied,
            ..
        })
    ));

    // remove: everything ends, nothing logs in, and the feed says why.
    operator_cmd(&sp, &["set-tenants", "bob", "*"], None);
    let mut held = hold(&sp, "bob", generated).await;
    operator_cmd(&sp, &["remove", "bob"], None);
    let message = both_end(&mut held).await;
    assert!(message.contains("operator bob was removed"), "{message}");
    assert_eq!(
        login_code(&sp, "bob", generated).await,
        Some(ErrorCode::AuthFailed)
    );

    // Audited, each with what it did; the sessions it cut say so too.
    let audit = sp.registry.audit_entries(100).expect("audit");
    let account: Vec<_> = audit
        .iter()
        .filter(|e| e.service == "account")
        .map(|e| e.outcome.as_str())
        .collect();
    assert_eq!(account.len(), 5, "{account:?}");
    assert!(account[0].starts_with("operator removed;"), "{account:?}");
    assert!(
        account[2].starts_with("tenant scope set to \"globex\""),
        "{account:?}"
    );
    assert!(account[4].starts_with("password changed;"), "{account:?}");
    assert_eq!(
        audit
            .iter()
            .filter(|e| e.outcome == "ended: operator token revoked")
            .count(),
        4
    );
}

/// A password someone chooses must not be trivially short; nothing changes then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_passwd_refuses_a_short_password() {
    let sp = TestSp::start(quick_config()).await;
    let out = Command::new(RAC)
        .args(["sp", "operator", "passwd", "admin", "--state-dir"])
        .arg(&sp.state.root)
        .env("RAC_PASSWORD", "short")
        .stdin(Stdio::null())
        .output()
        .expect("run rac");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("at least 12 characters"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(login_code(&sp, "admin", &sp.password).await, None);
}
