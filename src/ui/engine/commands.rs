//! The dispatcher: one task that owns the engine's state (the SP client, the lab, each tab's
//! tasks) and gives each [`Command`] a function of its own. Work that waits on the network or
//! the desktop runs in a task of its own, so the next command never waits for it.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::lab::{Lab, LabOptions};
use crate::net::console::{ConsoleClient, ConsoleConfig};

use super::EventSink;
use super::desktop_link::{self, ToDesktop};
use super::feed;
use super::messages::{
    BackupRequest, Command, ConnState, DesktopRequest, DesktopUpdate, Event, PathPurpose,
    SessionEvent, TabId,
};
use super::session;

/// A client ready to use, and the lab it logs in to (kept alive by the dispatcher).
type Ready = (Arc<ConsoleClient>, Option<Lab>);

/// Per tab: its session task's stop, its backup requests, its forwards.
struct TabTasks {
    stop: CancellationToken,
    backup: Option<mpsc::UnboundedSender<BackupRequest>>,
    forwards: HashMap<u64, CancellationToken>,
}

struct Dispatcher {
    sink: EventSink,
    stop: CancellationToken,
    client: Option<Arc<ConsoleClient>>,
    /// Where a lab task hands over its client and lab once they are up.
    ready: mpsc::UnboundedSender<Ready>,
    /// Ends the tenant feed task of the current connection.
    connection: Option<CancellationToken>,
    lab: Option<Lab>,
    tabs: HashMap<TabId, TabTasks>,
    /// Each tab's desktop: its stop and its input. Apart from `tabs`, so retrying a tab's
    /// session leaves its desktop alone.
    desktops: HashMap<TabId, (CancellationToken, mpsc::UnboundedSender<ToDesktop>)>,
    next_forward: u64,
}

/// Runs commands until the window drops its handle, then stops the lab.
pub(super) async fn dispatch(
    mut commands: mpsc::UnboundedReceiver<Command>,
    sink: EventSink,
    stop: CancellationToken,
) {
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<Ready>();
    let mut d = Dispatcher {
        sink,
        stop: stop.clone(),
        client: None,
        ready: ready_tx,
        connection: None,
        lab: None,
        tabs: HashMap::new(),
        desktops: HashMap::new(),
        next_forward: 1,
    };
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                Some(command) => d.handle(command),
                None => break,
            },
            Some((client, lab)) = ready_rx.recv() => {
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
    fn handle(&mut self, command: Command) {
        match command {
            Command::StartLab(options) => self.start_lab(*options),
            Command::Connect { config, password } => self.connect(config, password),
            Command::Disconnect => self.disconnect(),
            Command::ForgetTenantKey { tenant } => {
                if let Some(client) = &self.client
                    && let Err(e) = client.forget_tenant_key(&tenant)
                {
                    tracing::warn!(?tenant, "could not forget the tenant's key: {e}");
                }
            }
            Command::OpenSession {
                tab,
                tenant,
                service,
            } => self.open_session(tab, tenant, service),
            Command::CloseSession { tab } => {
                self.close_tab(tab);
                self.close_desktop(tab);
            }
            Command::OpenDesktop { tab, request } => self.open_desktop(tab, request),
            Command::DesktopInput { tab, input } => self.to_desktop(tab, ToDesktop::Input(input)),
            Command::DesktopClipboard { tab, text } => {
                self.to_desktop(tab, ToDesktop::Clipboard(text));
            }
            Command::DesktopResize { tab, width, height } => {
                self.to_desktop(tab, ToDesktop::Resize { width, height });
            }
            Command::CloseDesktop { tab } => self.close_desktop(tab),
            Command::Backup { tab, request } => self.backup(tab, request),
            Command::Forward {
                tab,
                tenant,
                service,
                listen,
            } => self.forward(tab, tenant, service, listen),
            Command::StopForward { tab, forward } => self.stop_forward(tab, forward),
            Command::PickPath {
                purpose,
                save,
                suggested_name,
            } => {
                tokio::spawn(pick_path(purpose, save, suggested_name, self.sink.clone()));
            }
            Command::ProbeFingerprint {
                address,
                server_name,
            } => {
                tokio::spawn(probe_fingerprint(address, server_name, self.sink.clone()));
            }
            Command::WriteFile { path, contents } => {
                tokio::spawn(write_file(path, contents, self.sink.clone()));
            }
        }
    }

    /// Ends the current connection's feed; returns the stop of the next one.
    fn replace_connection(&mut self) -> CancellationToken {
        self.drop_connection();
        let cancel = self.stop.child_token();
        self.connection = Some(cancel.clone());
        cancel
    }

    fn start_lab(&mut self, options: LabOptions) {
        let cancel = self.replace_connection();
        tokio::spawn(feed::start_lab_and_follow(
            options,
            self.sink.clone(),
            self.ready.clone(),
            cancel,
        ));
    }

    fn connect(&mut self, config: ConsoleConfig, password: String) {
        let cancel = self.replace_connection();
        let client = match ConsoleClient::new(config) {
            Ok(client) => client,
            Err(e) => {
                self.sink.send(Event::Conn(ConnState::Failed(format!(
                    "certificate setup: {e}"
                ))));
                return;
            }
        };
        self.client = Some(client.clone());
        tokio::spawn(feed::follow_tenants(
            client,
            password,
            self.sink.clone(),
            cancel,
        ));
    }

    fn disconnect(&mut self) {
        self.drop_connection();
        self.client = None;
        self.sink.send(Event::Conn(ConnState::Idle));
    }

    fn open_session(&mut self, tab: TabId, tenant: String, service: String) {
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
        tokio::spawn(session::run_session(
            client,
            tab,
            tenant,
            service,
            self.sink.clone(),
            backup_rx,
            stop,
        ));
    }

    fn open_desktop(&mut self, tab: TabId, request: DesktopRequest) {
        self.close_desktop(tab);
        let Some(client) = self.client.clone() else {
            self.sink.session(
                tab,
                SessionEvent::Desktop(DesktopUpdate::Ended("not connected to an SP yet".into())),
            );
            return;
        };
        let stop = self.stop.child_token();
        let (tx, rx) = mpsc::unbounded_channel();
        self.desktops.insert(tab, (stop.clone(), tx));
        tokio::spawn(desktop_link::run(
            client,
            tab,
            request,
            rx,
            self.sink.clone(),
            stop,
        ));
    }

    /// Passes something on to a tab's desktop, in order with what went before.
    fn to_desktop(&self, tab: TabId, message: ToDesktop) {
        if let Some((_, tx)) = self.desktops.get(&tab) {
            // A desktop that has ended drops what comes after; its tab says it ended.
            let _ = tx.send(message);
        }
    }

    fn close_desktop(&mut self, tab: TabId) {
        if let Some((stop, _)) = self.desktops.remove(&tab) {
            stop.cancel();
        }
    }

    fn close_tab(&mut self, tab: TabId) {
        if let Some(tasks) = self.tabs.remove(&tab) {
            tasks.stop.cancel();
        }
    }

    fn backup(&mut self, tab: TabId, request: BackupRequest) {
        if let Some(tx) = self.tabs.get(&tab).and_then(|t| t.backup.as_ref()) {
            let _ = tx.send(request);
        }
    }

    fn forward(&mut self, tab: TabId, tenant: String, service: String, listen: String) {
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
        tokio::spawn(serve_forward(
            Forward {
                client,
                tab,
                id: forward,
                tenant,
                service,
                listen,
            },
            self.sink.clone(),
            cancel,
        ));
    }

    fn stop_forward(&mut self, tab: TabId, forward: u64) {
        if let Some(cancel) = self
            .tabs
            .get_mut(&tab)
            .and_then(|t| t.forwards.remove(&forward))
        {
            cancel.cancel();
        }
    }

    fn drop_connection(&mut self) {
        if let Some(cancel) = self.connection.take() {
            cancel.cancel();
        }
    }
}

/// One port forward a tab asked for.
struct Forward {
    client: Arc<ConsoleClient>,
    tab: TabId,
    id: u64,
    tenant: String,
    service: String,
    listen: String,
}

/// Listens on the forward's address and gives each local connection its own session.
async fn serve_forward(forward: Forward, sink: EventSink, cancel: CancellationToken) {
    let Forward {
        client,
        tab,
        id,
        tenant,
        service,
        listen,
    } = forward;
    let listener = match TcpListener::bind(&listen).await {
        Ok(l) => l,
        Err(e) => {
            sink.session(
                tab,
                SessionEvent::ForwardFailed(format!("cannot listen on {listen}: {e}")),
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
            forward: id,
            service: service.clone(),
            local,
        },
    );
    if let Err(e) = crate::net::console::forward(client, tenant, service, listener, cancel).await {
        sink.session(tab, SessionEvent::ForwardFailed(format!("{e:#}")));
    }
    sink.session(tab, SessionEvent::ForwardStopped { forward: id });
}

/// Asks the desktop's file dialog; says nothing when it is dismissed (or there is none).
async fn pick_path(purpose: PathPurpose, save: bool, suggested_name: String, sink: EventSink) {
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
}

async fn probe_fingerprint(address: String, server_name: String, sink: EventSink) {
    let result = crate::net::tls::probe_fingerprint(&address, &server_name)
        .await
        .map_err(|e| format!("{address}: {e}"));
    sink.send(Event::FingerprintProbed(result));
}

async fn write_file(path: PathBuf, contents: String, sink: EventSink) {
    match write_atomically(&path, contents.as_bytes()).await {
        Ok(()) => sink.send(Event::FileWritten { path }),
        Err(e) => sink.send(Event::FileFailed {
            path,
            reason: e.to_string(),
        }),
    }
}

/// [`crate::util::files::write_atomically`], off the async threads.
async fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let (path, bytes) = (path.to_owned(), bytes.to_vec());
    tokio::task::spawn_blocking(move || crate::util::files::write_atomically(&path, &bytes))
        .await
        .map_err(io::Error::other)?
}
