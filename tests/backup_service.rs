//! The tenant backup service over real TCP: inventory, every action and refusals through
//! `BackupClient`, live events while a job runs, state surviving a restart and a `kill -9`
//! during writes, and bad bytes on one connection leaving the others alone.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rac::net::backup_host::run;
use rac::tenant::backup::model::{
    JobKind, JobSource, Notifications, ProxyKind, ProxyState, RepositoryKind, RunState, Schedule,
};
use rac::tenant::backup::protocol::BackupEvent;
use rac::tenant::backup::{
    BackupAction, BackupClient, BackupService, Inventory, JobSpec, PoolSpec, ProxySpec,
    RepositorySpec, ServiceConfig, Shape, Store, generate_with_shape,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Only a guard against hangs; nothing here is expected to take more than a few seconds.
const HANG_GUARD: Duration = Duration::from_secs(60);
const THUMBPRINT: &str = "A1B2C3D4E5F60718293A4B5C6D7E8F9012345678";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A small generated tenant whose jobs only run when started (no surprise scheduled runs).
fn fresh_tenant() -> Inventory {
    let mut inv = generate_with_shape(7, Shape::Small, "acme", now());
    for job in &mut inv.jobs {
        job.schedule = Schedule::Manual;
        job.next_run_unix_secs = None;
        job.enabled = true;
    }
    inv
}

struct Running {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(HANG_GUARD, self.task)
            .await
            .expect("service stops in time")
            .expect("service task")
            .expect("service result");
    }
}

async fn start(path: &Path, config: ServiceConfig) -> Running {
    let service =
        BackupService::open(Store::new(path), config, fresh_tenant).expect("open the service");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run(service, listener, shutdown.clone()));
    Running {
        addr,
        shutdown,
        task,
    }
}

async fn connect(addr: SocketAddr) -> BackupClient<TcpStream> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let mut client = BackupClient::new(stream);
    let hello = guard(client.hello("test")).await.expect("hello");
    assert_eq!(hello.service, "backup");
    client
}

async fn guard<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(HANG_GUARD, f).await.expect("no hang")
}

fn proxy(name: &str, kind: ProxyKind, thumbprint: Option<&str>) -> ProxySpec {
    ProxySpec {
        name: name.into(),
        host: format!("{name}.acme.local"),
        kind,
        certificate_thumbprint: thumbprint.map(str::to_owned),
        max_concurrent_tasks: 16,
    }
}

fn repository(name: &str) -> RepositorySpec {
    RepositorySpec {
        name: name.into(),
        kind: RepositoryKind::ObjectStorage,
        path: None,
        bucket: Some(format!("{}-bucket", name.to_lowercase())),
        capacity_bytes: 50 << 40,
        retention_days: 365,
    }
}

fn m365_job(name: &str, org: &str, pool: &str, repository: &str) -> JobSpec {
    JobSpec {
        name: name.into(),
        kind: JobKind::M365,
        source: JobSource::Organization(org.into()),
        proxy: None,
        pool: Some(pool.into()),
        repository: repository.into(),
        schedule: Schedule::Manual,
        enabled: true,
    }
}

#[tokio::test]
async fn inventory_has_the_eight_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let service = start(&dir.path().join("state.json"), ServiceConfig::default()).await;
    let mut client = connect(service.addr).await;
    let json = guard(client.inventory_json()).await.expect("inventory");
    let mut keys: Vec<&str> = json
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "azure",
            "jobs",
            "organizations",
            "proxies",
            "proxy_pools",
            "repositories",
            "server",
            "sessions"
        ]
    );
    let info = guard(client.info()).await.expect("info");
    assert_eq!(info.name, "vbo-acme");
    let text = rac::tenant::backup::summary_text(&guard(client.inventory()).await.expect("inv"));
    assert!(text.contains("Backup server vbo-acme"), "{text}");
    service.stop().await;
}

#[tokio::test]
async fn every_action_and_refusals_over_tcp() {
    let dir = tempfile::tempdir().expect("tempdir");
    let service = start(&dir.path().join("state.json"), ServiceConfig::default()).await;
    let mut c = connect(service.addr).await;
    let inv = guard(c.inventory()).await.expect("inventory");
    let org = inv.organizations[0].id.clone();
    let job = inv.jobs[0].id.clone();

    // Refusal codes arrive with the server's message.
    let refusal = |r: Result<_, rac::tenant::backup::ClientError>| {
        let e = r.expect_err("must be refused");
        assert!(!e.to_string().is_empty());
        e.code().expect("a server refusal").as_str().to_owned()
    };

    // Proxies.
    let err = guard(c.action(BackupAction::AddProxy {
        proxy: proxy("wg01", ProxyKind::Workgroup, None),
    }))
    .await;
    assert_eq!(refusal(err), "certificate_required");
    let wg = guard(c.action(BackupAction::AddProxy {
        proxy: proxy("wg01", ProxyKind::Workgroup, Some(THUMBPRINT)),
    }))
    .await
    .expect("add workgroup proxy")
    .target;
    let px = guard(c.action(BackupAction::AddProxy {
        proxy: proxy("px01", ProxyKind::Domain, None),
    }))
    .await
    .expect("add domain proxy")
    .target;
    guard(c.action(BackupAction::EditProxy {
        id: px.clone(),
        proxy: ProxySpec {
            max_concurrent_tasks: 32,
            ..proxy("px01", ProxyKind::Domain, None)
        },
    }))
    .await
    .expect("edit proxy");
    guard(c.action(BackupAction::SetProxyMaintenance {
        id: wg.clone(),
        maintenance: true,
    }))
    .await
    .expect("maintenance on");
    guard(c.action(BackupAction::SetProxyMaintenance {
        id: wg.clone(),
        maintenance: false,
    }))
    .await
    .expect("maintenance off");
    let err = guard(c.action(BackupAction::SetProxyMaintenance {
        id: "proxy-99".into(),
        maintenance: true,
    }))
    .await;
    assert_eq!(refusal(err), "not_found");

    // Pools.
    let pool = guard(c.action(BackupAction::AddPool {
        pool: PoolSpec {
            name: "Pool A".into(),
            members: vec![px.clone()],
        },
    }))
    .await
    .expect("add pool")
    .target;
    guard(c.action(BackupAction::EditPool {
        id: pool.clone(),
        pool: PoolSpec {
            name: "Pool A".into(),
            members: vec![px.clone(), wg.clone()],
        },
    }))
    .await
    .expect("edit pool");
    let err = guard(c.action(BackupAction::RemoveProxy { id: px.clone() })).await;
    assert_eq!(refusal(err), "in_use");

    // Repositories.
    let repo = guard(c.action(BackupAction::AddRepository {
        repository: repository("Cloud"),
    }))
    .await
    .expect("add repository")
    .target;
    guard(c.action(BackupAction::EditRepository {
        id: repo.clone(),
        repository: RepositorySpec {
            retention_days: 90,
            ..repository("Cloud")
        },
    }))
    .await
    .expect("edit repository");

    // Jobs.
    let new_job = guard(c.action(BackupAction::AddJob {
        job: m365_job("Pool job", &org, &pool, &repo),
    }))
    .await
    .expect("add job")
    .target;
    guard(c.action(BackupAction::EditJob {
        id: new_job.clone(),
        job: JobSpec {
            schedule: Schedule::Daily {
                hour: 22,
                minute: 30,
            },
            ..m365_job("Pool job", &org, &pool, &repo)
        },
    }))
    .await
    .expect("edit job");
    let err = guard(c.action(BackupAction::RemoveRepository { id: repo.clone() })).await;
    assert_eq!(refusal(err), "in_use");
    let err = guard(c.action(BackupAction::RemovePool { id: pool.clone() })).await;
    assert_eq!(refusal(err), "in_use");

    guard(c.action(BackupAction::DisableJob { job: job.clone() }))
        .await
        .expect("disable");
    let err = guard(c.action(BackupAction::StartJob { job: job.clone() })).await;
    assert_eq!(refusal(err), "job_disabled");
    guard(c.action(BackupAction::EnableJob { job: job.clone() }))
        .await
        .expect("enable");
    let started = guard(c.action(BackupAction::StartJob { job: job.clone() }))
        .await
        .expect("start");
    assert!(started.session.is_some());
    let err = guard(c.action(BackupAction::StartJob { job: job.clone() })).await;
    assert_eq!(refusal(err), "job_running");
    let err = guard(c.action(BackupAction::RemoveJob { id: job.clone() })).await;
    assert_eq!(refusal(err), "job_running");
    guard(c.action(BackupAction::StopJob { job: job.clone() }))
        .await
        .expect("stop");
    let err = guard(c.action(BackupAction::StopJob { job: job.clone() })).await;
    assert_eq!(refusal(err), "job_not_running");
    let err = guard(c.action(BackupAction::StartJob {
        job: "job-999".into(),
    }))
    .await;
    assert_eq!(refusal(err), "not_found");

    // Notifications.
    guard(c.action(BackupAction::SetNotifications {
        notifications: Notifications {
            enabled: true,
            smtp_server: "smtp.acme.example".into(),
            smtp_port: 587,
            use_tls: true,
            from: "backup@acme.example".into(),
            to: vec!["ops@acme.example".into()],
            on_success: true,
            on_warning: true,
            on_failure: true,
        },
    }))
    .await
    .expect("notifications");

    // Tear down in dependency order.
    guard(c.action(BackupAction::RemoveJob {
        id: new_job.clone(),
    }))
    .await
    .expect("remove job");
    guard(c.action(BackupAction::RemovePool { id: pool.clone() }))
        .await
        .expect("remove pool");
    guard(c.action(BackupAction::RemoveRepository { id: repo.clone() }))
        .await
        .expect("remove repository");
    guard(c.action(BackupAction::RemoveProxy { id: wg.clone() }))
        .await
        .expect("remove proxy");

    let inv = guard(c.inventory()).await.expect("inventory");
    assert!(inv.job(&new_job).is_none() && inv.pool(&pool).is_none());
    assert!(inv.proxy(&wg).is_none());
    let px = inv.proxy(&px).expect("px01 stays");
    assert_eq!(
        (px.max_concurrent_tasks, px.state),
        (32, ProxyState::Online)
    );
    assert!(inv.server.notifications.enabled);
    let session = inv
        .sessions
        .iter()
        .find(|s| Some(&s.id) == started.session.as_ref())
        .expect("the session");
    assert_eq!(session.state, RunState::Stopped);
    service.stop().await;
}

#[tokio::test]
async fn events_arrive_while_a_job_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = ServiceConfig {
        tick_interval: Duration::from_millis(20),
        sim_speed: 2000.0,
        ..ServiceConfig::default()
    };
    let service = start(&dir.path().join("state.json"), config).await;
    let mut watcher = connect(service.addr).await;
    guard(watcher.subscribe()).await.expect("subscribe");
    let mut operator = connect(service.addr).await;
    let inv = guard(operator.inventory()).await.expect("inventory");
    let job = inv.jobs[0].id.clone();
    let session = guard(operator.action(BackupAction::StartJob { job: job.clone() }))
        .await
        .expect("start")
        .session
        .expect("session id");

    let (mut progress, mut logs, mut started) = (0, 0, false);
    let end = loop {
        let event = guard(watcher.next_event())
            .await
            .expect("event")
            .expect("connection open");
        match event {
            BackupEvent::SessionState {
                session: s, state, ..
            } if s == session => {
                if state == RunState::Running {
                    started = true;
                } else {
                    break state;
                }
            }
            BackupEvent::JobProgress {
                session: s,
                progress: p,
                ..
            } if s == session => {
                assert!((0.0..=1.0).contains(&p));
                progress += 1;
            }
            BackupEvent::LogLine { session: s, .. } if s == session => logs += 1,
            _ => {}
        }
    };
    assert!(started, "the start was announced");
    assert!(
        progress > 0 && logs > 0,
        "{progress} progress, {logs} log events"
    );
    assert_ne!(end, RunState::Stopped);
    let inv = guard(operator.inventory()).await.expect("inventory");
    let s = inv
        .sessions
        .iter()
        .find(|s| s.id == session)
        .expect("session");
    assert!(s.simulated);
    assert_eq!(s.state, end);
    assert!(inv.job(&job).and_then(|j| j.last_result).is_some());
    service.stop().await;
}

#[tokio::test]
async fn acknowledged_changes_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.json");
    let first = start(&path, ServiceConfig::default()).await;
    let mut c = connect(first.addr).await;
    let inv = guard(c.inventory()).await.expect("inventory");
    let job = inv.jobs[0].id.clone();
    guard(c.action(BackupAction::DisableJob { job: job.clone() }))
        .await
        .expect("disable");
    let repo = guard(c.action(BackupAction::AddRepository {
        repository: repository("Kept"),
    }))
    .await
    .expect("add")
    .target;
    let other = inv.jobs.get(1).map(|j| j.id.clone());
    if let Some(other) = &other {
        guard(c.action(BackupAction::StartJob { job: other.clone() }))
            .await
            .expect("start");
    }
    drop(c);
    // No graceful shutdown: the task is dropped as a crash would drop it.
    first.task.abort();
    let _ = first.task.await;

    let second = start(&path, ServiceConfig::default()).await;
    let mut c = connect(second.addr).await;
    let inv = guard(c.inventory()).await.expect("inventory");
    assert!(!inv.job(&job).expect("job").enabled);
    assert!(
        inv.repositories
            .iter()
            .any(|r| r.id == repo && r.name == "Kept")
    );
    if let Some(other) = &other {
        // A run cut off by the restart is reported as failed, not left running forever.
        assert!(inv.running_session(other).is_none());
    }
    second.stop().await;

    // A graceful stop keeps everything too.
    let third = start(&path, ServiceConfig::default()).await;
    let mut c = connect(third.addr).await;
    let inv = guard(c.inventory()).await.expect("inventory");
    assert!(!inv.job(&job).expect("job").enabled);
    third.stop().await;
}

#[tokio::test]
async fn garbage_on_one_connection_does_not_harm_another() {
    let dir = tempfile::tempdir().expect("tempdir");
    let service = start(&dir.path().join("state.json"), ServiceConfig::default()).await;
    let mut good = connect(service.addr).await;

    // An HTTP request: its first four bytes read as a huge length, so that connection ends.
    let mut http = TcpStream::connect(service.addr).await.expect("connect");
    http.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    // A cut-off frame, then close.
    let mut cut = TcpStream::connect(service.addr).await.expect("connect");
    cut.write_all(&[0, 0, 0, 50, b'{']).await.expect("write");
    drop(cut);
    // A well-framed but malformed request gets an answer and the connection stays usable.
    let mut odd = BackupClient::new(TcpStream::connect(service.addr).await.expect("connect"));
    let mut raw = odd.into_inner();
    let body = br#"{"id": 1, "type": "explode"}"#;
    raw.write_all(&(body.len() as u32).to_be_bytes())
        .await
        .expect("write");
    raw.write_all(body).await.expect("write");
    let answer: serde_json::Value = guard(rac::wire::frame::read_frame(&mut raw, 1 << 20))
        .await
        .expect("read")
        .expect("a frame");
    assert_eq!(answer["error"]["code"], "bad_request");
    odd = BackupClient::new(raw);
    guard(odd.info()).await.expect("still served");

    // The good connection, opened before, and a new one both work.
    guard(good.inventory()).await.expect("inventory");
    let mut later = connect(service.addr).await;
    guard(later.inventory()).await.expect("inventory");
    drop(http);
    service.stop().await;
}

/// Runs only as the child of `kill_dash_nine_during_writes_loses_nothing_acknowledged`:
/// adds repositories one after another and prints each acknowledged one.
#[tokio::test]
async fn child_writer_for_kill_test() {
    let Ok(path) = std::env::var("RAC_BACKUP_KILL_TEST_STATE") else {
        return;
    };
    let service = BackupService::open(Store::new(&path), ServiceConfig::default(), fresh_tenant)
        .expect("open");
    for i in 0..100_000u32 {
        service
            .act(&BackupAction::AddRepository {
                repository: repository(&format!("r{i}")),
            })
            .await
            .expect("act");
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "ack r{i}").expect("stdout");
        out.flush().expect("flush");
    }
}

#[test]
fn kill_dash_nine_during_writes_loses_nothing_acknowledged() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.json");
    let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "child_writer_for_kill_test",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("RAC_BACKUP_KILL_TEST_STATE", &path)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the child");
    let stdout = child.stdout.take().expect("child stdout");
    let mut acked = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("line");
        if let Some(name) = line.strip_prefix("ack ") {
            acked.push(name.to_owned());
            if acked.len() == 25 {
                break;
            }
        }
    }
    // Kill at an arbitrary point of a later write (SIGKILL on Unix).
    child.kill().expect("kill");
    child.wait().expect("wait");
    assert_eq!(acked.len(), 25, "the child acknowledged writes");
    let inv = Store::new(&path)
        .load()
        .expect("the state file is readable")
        .expect("and present");
    for name in &acked {
        assert!(
            inv.repositories.iter().any(|r| &r.name == name),
            "acknowledged {name} was lost"
        );
    }
}
