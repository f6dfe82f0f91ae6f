//! Load with integrity: hundreds of concurrent sessions each carrying checksummed data, and a
//! thousand tenants connected at once, reconnecting as a storm after an SP restart and
//! settling without flapping.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{PATIENCE, TestSp, TestTenant, echo_checked, eventually, pattern, quick_config};
use rac::net::tenant_redirector::AgentState;
use rac::wire::protocol::TenantStatus;

/// 200 sessions open at the same time over four tenants; then each moves 256 KiB of its own
/// pseudo-random bytes through the echo service and back while all the others do too. Every
/// byte comes back in order (SHA-256 compared), and every session's audit row counts exactly
/// its bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_sessions_carry_checksummed_data_intact() {
    const SESSIONS: usize = 200;
    const BYTES: usize = 256 * 1024;
    let sp = TestSp::start(rac::sp::config::SpConfig {
        // Hundreds of handshakes at once on a shared machine: wait for tenants generously.
        session_open_timeout_secs: 60,
        ..quick_config()
    })
    .await;
    let mut tenants = Vec::new();
    for i in 0..4 {
        let name = format!("load{i}");
        let secret = sp.add_tenant(&name);
        let mut t = TestTenant::start(sp.tenant_config(&name, &secret));
        t.online().await;
        tenants.push(t);
    }
    let console = sp.console().await;
    let all_open = Arc::new(tokio::sync::Barrier::new(SESSIONS));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..SESSIONS {
        let console = console.clone();
        let all_open = all_open.clone();
        tasks.push(tokio::spawn(async move {
            let session = console
                .open_session(&format!("load{}", i % 4), "echo", |_, _| {})
                .await
                .expect("session opens");
            // Nobody sends before all 200 are open: they really are concurrent.
            all_open.wait().await;
            echo_checked(session.stream, pattern(i as u64 + 1, BYTES)).await
        }));
    }
    let mut digests = std::collections::HashSet::new();
    for task in tasks {
        let digest = tokio::time::timeout(PATIENCE * 4, task)
            .await
            .expect("session in time")
            .expect("data intact");
        digests.insert(digest);
    }
    assert_eq!(digests.len(), SESSIONS, "each session carried its own data");
    eprintln!(
        "{SESSIONS} sessions x {BYTES} bytes each way in {:?}",
        started.elapsed()
    );

    let entries = eventually(PATIENCE, "every session audited", async || {
        let entries = sp.registry.audit_entries(SESSIONS + 1).expect("audit");
        let closed = entries.iter().filter(|e| e.ended_at.is_some()).count();
        (closed == SESSIONS).then_some(entries)
    })
    .await;
    assert_eq!(entries.len(), SESSIONS);
    for e in &entries {
        common::assert_carried(e.bytes_to_tenant, BYTES as u64);
        common::assert_carried(e.bytes_from_tenant, BYTES as u64);
    }
}

/// Counts a tenant's arrivals at `Online` and its connection attempts.
struct Counts {
    online: AtomicUsize,
    attempts: AtomicUsize,
}

fn count_states(tenant: &TestTenant, counts: Arc<Counts>) {
    let mut state = tenant.state.clone();
    tokio::spawn(async move {
        while state.changed().await.is_ok() {
            match &*state.borrow_and_update() {
                AgentState::Online { .. } => counts.online.fetch_add(1, Ordering::SeqCst),
                AgentState::Connecting => counts.attempts.fetch_add(1, Ordering::SeqCst),
                _ => 0,
            };
        }
    });
}

async fn all_online(tenants: &mut [TestTenant]) {
    for t in tenants.iter_mut() {
        t.online().await;
    }
}

async fn online_at_sp(console: &rac::net::console::ConsoleClient) -> usize {
    console
        .tenants()
        .await
        .expect("list")
        .iter()
        .filter(|t| t.status == TenantStatus::Online)
        .count()
}

/// A few sessions to tenants spread over the thousand, each with checksummed data.
async fn sample_sessions(console: &Arc<rac::net::console::ConsoleClient>, tenants: usize) {
    let mut tasks = Vec::new();
    for i in (0..tenants).step_by(tenants / 10) {
        let console = console.clone();
        tasks.push(tokio::spawn(async move {
            let session = console
                .open_session(&format!("t{i:04}"), "echo", |_, _| {})
                .await
                .expect("session");
            echo_checked(session.stream, pattern(i as u64, 64 * 1024)).await
        }));
    }
    for task in tasks {
        task.await.expect("sample session");
    }
}

/// A thousand tenant redirectors connected to one SP at once, all usable; then the SP restarts
/// and all thousand reconnect at the same moment (with jittered backoff). The storm settles:
/// every tenant is back exactly once — none refused, dropped or flapping — and stays online.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_tenants_connect_at_once_and_settle_after_an_sp_restart() {
    const TENANTS: usize = 1000;
    let heartbeat = Duration::from_secs(2);
    let mut sp = TestSp::start(rac::sp::config::SpConfig {
        heartbeat_secs: heartbeat.as_secs(),
        dead_after_secs: 10,
        session_open_timeout_secs: 30,
        ..quick_config()
    })
    .await;
    let started = Instant::now();
    let mut tenants = Vec::with_capacity(TENANTS);
    for i in 0..TENANTS {
        let name = format!("t{i:04}");
        let secret = sp.add_tenant(&name);
        let mut config = sp.tenant_config(&name, &secret);
        // The production backoff shape: 0.5 s doubling, capped.
        config.backoff_base = Duration::from_millis(500);
        config.backoff_max = Duration::from_secs(5);
        tenants.push(TestTenant::start(config));
    }
    all_online(&mut tenants).await;
    let console = sp.console().await;
    assert_eq!(online_at_sp(&console).await, TENANTS);
    eprintln!("{TENANTS} tenants online after {:?}", started.elapsed());
    sample_sessions(&console, TENANTS).await;

    let counts = Arc::new(Counts {
        online: AtomicUsize::new(0),
        attempts: AtomicUsize::new(0),
    });
    for t in &tenants {
        count_states(t, counts.clone());
    }
    let restarted = Instant::now();
    sp.restart().await;
    // Everyone noticed (the SP said goodbye), then everyone is back.
    eventually(PATIENCE * 2, "all tenants back", async || {
        (counts.online.load(Ordering::SeqCst) >= TENANTS).then_some(())
    })
    .await;
    all_online(&mut tenants).await;
    eprintln!(
        "storm settled after {:?}: {} connection attempts for {TENANTS} tenants",
        restarted.elapsed(),
        counts.attempts.load(Ordering::SeqCst)
    );
    // Settled: a few heartbeats later nobody has dropped or come back again.
    tokio::time::sleep(heartbeat * 2).await;
    assert_eq!(
        counts.online.load(Ordering::SeqCst),
        TENANTS,
        "each tenant came back exactly once"
    );
    assert_eq!(online_at_sp(&console).await, TENANTS);
    assert!(
        tenants
            .iter()
            .all(|t| matches!(*t.state.borrow(), AgentState::Online { .. })),
        "every redirector is online"
    );
    sample_sessions(&console, TENANTS).await;
}
