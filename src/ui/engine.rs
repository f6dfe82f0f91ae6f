//! The console's engine room: tokio tasks that log in, follow the tenant list, open sessions,
//! forward ports and touch files. The window talks to it only through [`EngineHandle::send`]
//! (commands in) and the event receiver (events out); each event wakes the window with
//! `request_repaint`. Nothing here blocks the UI thread: the runtime handle is injected.

use eframe::egui;
use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::lab::{Lab, LabOptions};
use crate::net::console::{ConsoleClient, ConsoleConfig, ConsoleError, OpenStage};
use crate::net::protocol::{ApiResponse, ErrorCode, TenantInfo};
use crate::net::tls::TlsInfo;

use super::backup_link;
use crate::net::splice::Counted;

/// Identifies a session tab across commands and events.
pub type TabId = u64;

/// What the window asks the engine to do.
pub enum Command {
    /// Start the embedded lab, then log in to it and follow its tenant list.
    StartLab(LabOptions),
    /// Log in to an SP and follow its tenant list. The password lives only in the task.
    Connect {
        config: ConsoleConfig,
        password: String,
    },
    /// Drop the SP connection (sessions stay until closed).
    Disconnect,
    /// Open `service` on `tenant` for a tab.
    OpenSession {
        tab: TabId,
        tenant: String,
        service: String,
    },
    /// End a tab's session and its port forwards.
    CloseSession {
        tab: TabId,
    },
    /// A request to the tenant's backup service over the tab's session.
    Backup {
        tab: TabId,
        request: backup_link::Request,
    },
    /// Forward `service` of `tenant` to a local address (`127.0.0.1:0` picks a port).
    Forward {
        tab: TabId,
        tenant: String,
        service: String,
        listen: String,
    },
    StopForward {
        tab: TabId,
        forward: u64,
    },
    /// Fetch the fingerprint an SP presents, for the operator to confirm on first contact.
    ProbeFingerprint {
        address: String,
        server_name: String,
    },
    /// Ask the desktop for a path (no answer where no portal runs: the typed path stays).
    PickPath {
        purpose: PathPurpose,
        save: bool,
        suggested_name: String,
    },
    /// Write a file off the UI thread.
    WriteFile {
        path: PathBuf,
        contents: String,
    },
}

/// Why a file dialog was opened; echoed back with the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPurpose {
    TenantCsv,
    SessionLog(TabId),
    CaFile,
}

/// How the SP connection is doing, as the status bar shows it.
#[derive(Debug, Clone, PartialEq)]
pub enum ConnState {
    Idle,
    StartingLab,
    Connecting,
    /// Logged in and following the tenant list.
    Live {
        user: String,
        endpoint: String,
    },
    /// The feed dropped; the engine retries.
    Reconnecting(String),
    Failed(String),
}

/// What a lab looks like from the window.
#[derive(Debug, Clone)]
pub struct LabFacts {
    pub sp: String,
    pub gateways: Vec<String>,
    pub operator: String,
    pub ca_fingerprint: String,
    pub tenants: usize,
}

/// The facts of an open session.
#[derive(Debug, Clone)]
pub struct SessionFacts {
    pub session_id: String,
    pub endpoint: String,
    pub via_gateway: bool,
    pub tls: TlsInfo,
}

/// One measurement of a session, about once a second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Seconds since the session opened.
    pub at_secs: f64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Round trip of the last request through the session, if one was measured.
    pub rtt_ms: Option<f64>,
}

/// Session life, as one tab hears it.
#[derive(Debug)]
pub enum SessionEvent {
    Stage(OpenStage, Duration),
    Opened(SessionFacts),
    Failed {
        code: Option<ErrorCode>,
        reason: String,
    },
    Sample(Sample),
    Backup(backup_link::Update),
    ForwardStarted {
        forward: u64,
        service: String,
        local: String,
    },
    ForwardFailed(String),
    ForwardStopped {
        forward: u64,
    },
    Closed(String),
}

/// What the engine tells the window.
#[derive(Debug)]
pub enum Event {
    Conn(ConnState),
    LabReady(LabFacts),
    Tenants(Vec<TenantInfo>),
    TenantChanged(TenantInfo),
    TenantRemoved(String),
    Session(TabId, SessionEvent),
    PathPicked {
        purpose: PathPurpose,
        path: PathBuf,
    },
    /// The fingerprint an SP presented (its CA's), or why it could not be read.
    FingerprintProbed(Result<String, String>),
    FileWritten {
        path: PathBuf,
    },
    FileFailed {
        path: PathBuf,
        reason: String,
    },
}

/// Sends events to the window and wakes it.
#[derive(Clone)]
pub struct EventSink {
    tx: mpsc::UnboundedSender<Event>,
    repaint: egui::Context,
}

impl EventSink {
    pub fn send(&self, event: Event) {
        if self.tx.send(event).is_ok() {
            self.repaint.request_repaint();
        }
    }

    fn session(&self, tab: TabId, event: SessionEvent) {
        self.send(Event::Session(tab, event));
    }
}

/// The window's end of the engine. Dropping it stops every task (and the lab).
pub struct EngineHandle {
    commands: mpsc::UnboundedSender<Command>,
    _stop: DropGuard,
}

impl EngineHandle {
    /// Queues a command; never blocks.
    pub fn send(&self, command: Command) {
        if self.commands.send(command).is_err() {
            tracing::warn!("console engine has stopped; command dropped");
        }
    }
}

/// Starts the engine on `runtime`; events arrive on the returned receiver.
pub fn start(
    runtime: &Handle,
    repaint: egui::Context,
) -> (EngineHandle, mpsc::UnboundedReceiver<Event>) {
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (event_tx, event_rx) = mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let sink = EventSink {
        tx: event_tx,
        repaint,
    };
    runtime.spawn(dispatch(cmd_rx, sink, stop.clone()));
    (
        EngineHandle {
            commands: cmd_tx,
            _stop: stop.drop_guard(),
        },
        event_rx,
    )
}

/// Per tab: its session task's stop, its backup requests, its forwards.
struct TabTasks {
    stop: CancellationToken,
    backup: Option<mpsc::UnboundedSender<backup_link::Request>>,
    forwards: HashMap<u64, CancellationToken>,
}

struct Dispatcher {
    sink: EventSink,
    stop: CancellationToken,
    client: Option<Arc<ConsoleClient>>,
    /// Ends the tenant feed task of the current connection.
    connection: Option<CancellationToken>,
    lab: Option<Lab>,
    tabs: HashMap<TabId, TabTasks>,
    next_forward: u64,
}

async fn dispatch(
    mut commands: mpsc::UnboundedReceiver<Command>,
    sink: EventSink,
    stop: CancellationToken,
) {
    let (client_tx, mut client_rx) = mpsc::unbounded_channel::<(Arc<ConsoleClient>, Option<Lab>)>();
    let mut d = Dispatcher {
        sink,
        stop: stop.clone(),
        client: None,
        connection: None,
        lab: None,
        tabs: HashMap::new(),
        next_forward: 1,
    };
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                Some(command) => d.handle(command, &client_tx),
                None => break,
            },
            Some((client, lab)) = client_rx.recv() => {
                d.client = Some(client);
                if lab.is_some() {
                    d.lab = lab;
                }
            }
            _ = stop.cancelled() => break,
        }
    }
    stop.cancel();
    if let Some(lab) = d.lab.take() {
        lab.stop().await;
    }
}

impl Dispatcher {
    fn handle(
        &mut self,
        command: Command,
        client_tx: &mpsc::UnboundedSender<(Arc<ConsoleClient>, Option<Lab>)>,
    ) {
        match command {
            Command::StartLab(options) => {
                self.drop_connection();
                let cancel = self.stop.child_token();
                self.connection = Some(cancel.clone());
                let sink = self.sink.clone();
                let client_tx = client_tx.clone();
                tokio::spawn(async move {
                    sink.send(Event::Conn(ConnState::StartingLab));
                    let lab = match Lab::start(options).await {
                        Ok(lab) => lab,
                        Err(e) => {
                            tracing::error!("lab failed to start: {e:#}");
                            sink.send(Event::Conn(ConnState::Failed(format!(
                                "the lab did not start: {e:#}"
                            ))));
                            return;
                        }
                    };
                    sink.send(Event::LabReady(LabFacts {
                        sp: lab.sp_addr.to_string(),
                        gateways: lab.gateways.iter().map(|g| g.to_string()).collect(),
                        operator: lab.operator.clone(),
                        ca_fingerprint: lab.ca_fingerprint.clone(),
                        tenants: lab.tenants.len(),
                    }));
                    let config = lab.console_config();
                    let password = lab.password.clone();
                    let client = match ConsoleClient::new(config) {
                        Ok(client) => client,
                        Err(e) => {
                            sink.send(Event::Conn(ConnState::Failed(format!(
                                "lab TLS setup: {e}"
                            ))));
                            return;
                        }
                    };
                    // The dispatcher keeps the lab alive from here on.
                    if client_tx.send((client.clone(), Some(lab))).is_err() {
                        return;
                    }
                    follow_tenants(client, password, sink, cancel).await;
                });
            }
            Command::Connect { config, password } => {
                self.drop_connection();
                let cancel = self.stop.child_token();
                self.connection = Some(cancel.clone());
                let sink = self.sink.clone();
                let client = match ConsoleClient::new(config) {
                    Ok(client) => client,
                    Err(e) => {
                        sink.send(Event::Conn(ConnState::Failed(format!(
                            "certificate setup: {e}"
                        ))));
                        return;
                    }
                };
                self.client = Some(client.clone());
                tokio::spawn(follow_tenants(client, password, sink, cancel));
            }
            Command::Disconnect => {
                self.drop_connection();
                self.client = None;
                self.sink.send(Event::Conn(ConnState::Idle));
            }
            Command::OpenSession {
                tab,
                tenant,
                service,
            } => {
                self.close_tab(tab);
                let Some(client) = self.client.clone() else {
                    self.sink.session(
                        tab,
                        SessionEvent::Failed {
                            code: None,
                            reason: "not connected to an SP yet".into(),
                        },
                    );
                    return;
                };
                let stop = self.stop.child_token();
                let (backup_tx, backup_rx) = mpsc::unbounded_channel();
                self.tabs.insert(
                    tab,
                    TabTasks {
                        stop: stop.clone(),
                        backup: Some(backup_tx),
                        forwards: HashMap::new(),
                    },
                );
                tokio::spawn(run_session(
                    client,
                    tab,
                    tenant,
                    service,
                    self.sink.clone(),
                    backup_rx,
                    stop,
                ));
            }
            Command::CloseSession { tab } => self.close_tab(tab),
            Command::Backup { tab, request } => {
                if let Some(tx) = self.tabs.get(&tab).and_then(|t| t.backup.as_ref()) {
                    let _ = tx.send(request);
                }
            }
            Command::Forward {
                tab,
                tenant,
                service,
                listen,
            } => {
                let Some(client) = self.client.clone() else {
                    self.sink.session(
                        tab,
                        SessionEvent::ForwardFailed("not connected to an SP".into()),
                    );
                    return;
                };
                let Some(tasks) = self.tabs.get_mut(&tab) else {
                    self.sink.session(
                        tab,
                        SessionEvent::ForwardFailed("the session is closed".into()),
                    );
                    return;
                };
                let forward = self.next_forward;
                self.next_forward += 1;
                let cancel = tasks.stop.child_token();
                tasks.forwards.insert(forward, cancel.clone());
                let sink = self.sink.clone();
                tokio::spawn(async move {
                    let listener = match TcpListener::bind(&listen).await {
                        Ok(l) => l,
                        Err(e) => {
                            sink.session(
                                tab,
                                SessionEvent::ForwardFailed(format!(
                                    "cannot listen on {listen}: {e}"
                                )),
                            );
                            return;
                        }
                    };
                    let local = listener
                        .local_addr()
                        .map(|a| a.to_string())
                        .unwrap_or(listen);
                    sink.session(
                        tab,
                        SessionEvent::ForwardStarted {
                            forward,
                            service: service.clone(),
                            local,
                        },
                    );
                    if let Err(e) =
                        crate::net::console::forward(client, tenant, service, listener, cancel)
                            .await
                    {
                        sink.session(tab, SessionEvent::ForwardFailed(format!("{e:#}")));
                    }
                    sink.session(tab, SessionEvent::ForwardStopped { forward });
                });
            }
            Command::StopForward { tab, forward } => {
                if let Some(cancel) = self
                    .tabs
                    .get_mut(&tab)
                    .and_then(|t| t.forwards.remove(&forward))
                {
                    cancel.cancel();
                }
            }
            Command::PickPath {
                purpose,
                save,
                suggested_name,
            } => {
                let sink = self.sink.clone();
                tokio::spawn(async move {
                    let dialog = rfd::AsyncFileDialog::new().set_file_name(suggested_name);
                    let picked = if save {
                        dialog.save_file().await
                    } else {
                        dialog.pick_file().await
                    };
                    if let Some(file) = picked {
                        sink.send(Event::PathPicked {
                            purpose,
                            path: file.path().to_path_buf(),
                        });
                    }
                });
            }
            Command::ProbeFingerprint {
                address,
                server_name,
            } => {
                let sink = self.sink.clone();
                tokio::spawn(async move {
                    let result = crate::net::tls::probe_fingerprint(&address, &server_name)
                        .await
                        .map_err(|e| format!("{address}: {e}"));
                    sink.send(Event::FingerprintProbed(result));
                });
            }
            Command::WriteFile { path, contents } => {
                let sink = self.sink.clone();
                tokio::spawn(async move {
                    match write_atomically(&path, contents.as_bytes()).await {
                        Ok(()) => sink.send(Event::FileWritten { path }),
                        Err(e) => sink.send(Event::FileFailed {
                            path,
                            reason: e.to_string(),
                        }),
                    }
                });
            }
        }
    }

    fn drop_connection(&mut self) {
        if let Some(cancel) = self.connection.take() {
            cancel.cancel();
        }
    }

    fn close_tab(&mut self, tab: TabId) {
        if let Some(tasks) = self.tabs.remove(&tab) {
            tasks.stop.cancel();
        }
    }
}

/// Writes next to the target, then renames, so a crash never leaves half a file.
async fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".part");
    let tmp = PathBuf::from(tmp);
    tokio::fs::write(&tmp, bytes).await?;
    tokio::fs::rename(&tmp, path).await
}

/// Logs in, then follows the tenant list; on a dropped feed it logs in again with backoff.
async fn follow_tenants(
    client: Arc<ConsoleClient>,
    password: String,
    sink: EventSink,
    cancel: CancellationToken,
) {
    let mut delay = Duration::from_millis(500);
    loop {
        sink.send(Event::Conn(ConnState::Connecting));
        let outcome = tokio::select! {
            outcome = login_and_follow(&client, &password, &sink) => outcome,
            _ = cancel.cancelled() => return,
        };
        let (reason, retry) = match outcome {
            Ok(()) => ("the SP closed the tenant feed".to_string(), true),
            Err(e) => {
                let retry = !matches!(
                    e.code(),
                    Some(
                        ErrorCode::AuthFailed
                            | ErrorCode::AccessDenied
                            | ErrorCode::VersionMismatch
                    )
                ) && !matches!(&e, ConsoleError::Dial(d) if d.is_untrusted());
                (describe_error(&e), retry)
            }
        };
        if !retry {
            sink.send(Event::Conn(ConnState::Failed(reason)));
            return;
        }
        sink.send(Event::Conn(ConnState::Reconnecting(reason)));
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = cancel.cancelled() => return,
        }
        delay = (delay * 2).min(Duration::from_secs(15));
    }
}

async fn login_and_follow(
    client: &ConsoleClient,
    password: &str,
    sink: &EventSink,
) -> Result<(), ConsoleError> {
    client.login(password).await?;
    let mut feed = client.subscribe().await?;
    let endpoint = client.config().route.endpoints().join(", ");
    let mut live = false;
    while let Some(message) = feed.next().await? {
        match message {
            ApiResponse::Tenants { tenants } => {
                if !live {
                    live = true;
                    sink.send(Event::Conn(ConnState::Live {
                        user: client.config().user.clone(),
                        endpoint: endpoint.clone(),
                    }));
                }
                sink.send(Event::Tenants(tenants));
            }
            ApiResponse::TenantChanged { tenant } => sink.send(Event::TenantChanged(tenant)),
            ApiResponse::TenantRemoved { name } => sink.send(Event::TenantRemoved(name)),
            ApiResponse::Error { code, message } => {
                return Err(ConsoleError::Refused { code, message });
            }
            ApiResponse::LoggedOut => return Ok(()),
        }
    }
    Ok(())
}

/// A console error in the words a tab shows.
pub fn describe_error(e: &ConsoleError) -> String {
    match e {
        ConsoleError::Refused { code, message } if message.is_empty() => {
            code.describe().to_string()
        }
        ConsoleError::Refused { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// One tab's session: open it, report stages, then serve backup requests and measure.
async fn run_session(
    client: Arc<ConsoleClient>,
    tab: TabId,
    tenant: String,
    service: String,
    sink: EventSink,
    requests: mpsc::UnboundedReceiver<backup_link::Request>,
    stop: CancellationToken,
) {
    let stage_sink = sink.clone();
    let opened = tokio::select! {
        opened = client.open_session(&tenant, &service, move |stage, at| {
            stage_sink.session(tab, SessionEvent::Stage(stage, at));
        }) => opened,
        _ = stop.cancelled() => return,
    };
    let session = match opened {
        Ok(session) => session,
        Err(e) => {
            sink.session(
                tab,
                SessionEvent::Failed {
                    code: e.code(),
                    reason: describe_error(&e),
                },
            );
            return;
        }
    };
    sink.session(
        tab,
        SessionEvent::Opened(SessionFacts {
            session_id: session.session_id.clone(),
            endpoint: session.endpoint.clone(),
            via_gateway: session.via_gateway,
            tls: session.tls.clone(),
        }),
    );
    let meter = Meter::default();
    let stream = Counted::both(session.stream, meter.read.clone(), meter.written.clone());
    let rtt = Arc::new(AtomicU64::new(u64::MAX));
    let sampler = sample_loop(tab, meter, rtt.clone(), sink.clone());
    let talk = async {
        if service == crate::tenant::backup::SERVICE_NAME {
            backup_link::run(stream, requests, rtt, tab_sink(&sink, tab)).await
        } else {
            echo_pings(stream, rtt).await
        }
    };
    let end = tokio::select! {
        end = talk => end,
        _ = sampler => Ok(()),
        _ = stop.cancelled() => return,
    };
    let reason = match end {
        Ok(()) => "the tenant closed the session".to_string(),
        Err(e) => format!("session ended: {e:#}"),
    };
    sink.session(tab, SessionEvent::Closed(reason));
}

/// Sends backup updates to one tab.
fn tab_sink(sink: &EventSink, tab: TabId) -> impl Fn(backup_link::Update) + Send + Sync + 'static {
    let sink = sink.clone();
    move |update| sink.session(tab, SessionEvent::Backup(update))
}

/// Reports bytes and round trip once a second.
async fn sample_loop(tab: TabId, meter: Meter, rtt: Arc<AtomicU64>, sink: EventSink) {
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let rtt_us = rtt.load(Ordering::Relaxed);
        sink.session(
            tab,
            SessionEvent::Sample(Sample {
                at_secs: started.elapsed().as_secs_f64(),
                bytes_sent: meter.written.load(Ordering::Relaxed),
                bytes_received: meter.read.load(Ordering::Relaxed),
                rtt_ms: (rtt_us != u64::MAX).then(|| rtt_us as f64 / 1000.0),
            }),
        );
    }
}

/// For services the window cannot render (e.g. `echo`): a small ping each second, so the
/// Connection tab still shows a round trip.
async fn echo_pings<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    rtt: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let mut buf = [0u8; 8];
    let mut seq = 0u64;
    loop {
        seq += 1;
        let sent = Instant::now();
        stream.write_all(&seq.to_be_bytes()).await?;
        stream.flush().await?;
        stream.read_exact(&mut buf).await?;
        rtt.store(sent.elapsed().as_micros() as u64, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Bytes each way through a session.
#[derive(Clone, Default)]
pub struct Meter {
    pub read: Arc<AtomicU64>,
    pub written: Arc<AtomicU64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn metered_counts_both_ways() {
        let (a, mut b) = tokio::io::duplex(64);
        let meter = Meter::default();
        let mut a = Counted::both(a, meter.read.clone(), meter.written.clone());
        a.write_all(b"hello").await.expect("write");
        let mut buf = [0u8; 5];
        b.read_exact(&mut buf).await.expect("read");
        b.write_all(b"hi").await.expect("write back");
        let mut back = [0u8; 2];
        a.read_exact(&mut back).await.expect("read back");
        assert_eq!(meter.written.load(Ordering::Relaxed), 5);
        assert_eq!(meter.read.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn refusals_read_as_words() {
        let e = ConsoleError::Refused {
            code: ErrorCode::TenantOffline,
            message: String::new(),
        };
        assert_eq!(describe_error(&e), "tenant is offline");
    }
}
