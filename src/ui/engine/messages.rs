//! What the window and the engine say to each other: [`Command`]s in, [`Event`]s out. Plain
//! data, no tokio: the drawing modules import these and nothing else of the engine.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::lab::LabOptions;
use crate::net::console::{ConsoleConfig, OpenStage};
use crate::net::rdp::DesktopInput;
use crate::net::rdp::client::{DesktopLogin, DesktopSecurity};
use crate::net::tls::TlsInfo;
use crate::tenant::backup::BackupAction;
use crate::tenant::backup::Inventory;
use crate::tenant::backup::model::{LogLine, MAX_LOG_LINES, RunStage};
use crate::wire::protocol::{ErrorCode, TenantInfo};

/// Identifies a session tab across commands and events.
pub type TabId = u64;

/// What the window asks the engine to do.
pub enum Command {
    /// Start the embedded lab, then log in to it and follow its tenant list.
    StartLab(Box<LabOptions>),
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
    /// End a tab's session, its desktop and its port forwards.
    CloseSession {
        tab: TabId,
    },
    /// Forget the key pinned for a tenant (its server was reinstalled): the next session
    /// pins the key presented then.
    ForgetTenantKey {
        tenant: String,
    },
    /// Open a remote desktop for a tab, on a session of its own (the tab's other session
    /// stays as it is).
    OpenDesktop {
        tab: TabId,
        request: DesktopRequest,
    },
    /// Keyboard and pointer input for a tab's desktop, in order.
    DesktopInput {
        tab: TabId,
        input: Vec<DesktopInput>,
    },
    /// Put text on a tab's desktop's clipboard (the operator pasted into the desktop); sent
    /// before the paste keys that follow it.
    DesktopClipboard {
        tab: TabId,
        text: String,
    },
    /// Ask a tab's desktop for another size (display control): the tab's, once it settled.
    DesktopResize {
        tab: TabId,
        width: u16,
        height: u16,
    },
    /// End a tab's desktop (the tab stays).
    CloseDesktop {
        tab: TabId,
    },
    /// A request to the tenant's backup service over the tab's session.
    Backup {
        tab: TabId,
        request: BackupRequest,
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

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Commands may carry a password: never print their fields.
        f.write_str("Command")
    }
}

/// A desktop to open. The login lives only in the engine's task once sent.
pub struct DesktopRequest {
    pub tenant: String,
    pub service: String,
    pub login: DesktopLogin,
    /// The desktop certificate's SHA-256 seen before; another one is refused. `None` on
    /// first use: whatever is presented is reported back for pinning.
    pub pin: Option<[u8; 32]>,
    /// The size asked for (the tab's); the desktop may answer with another.
    pub width: u16,
    pub height: u16,
    /// Where the engine paints the picture.
    pub screen: Arc<super::SharedScreen>,
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
    /// The console's TLS to the SP, up to `ready`.
    pub tls: TlsInfo,
    /// The channel with the tenant that carries the session.
    pub e2e: crate::net::console::EndToEnd,
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
    /// An opening stage reached, with the time since the request began.
    Stage(OpenStage, Duration),
    Opened(SessionFacts),
    Failed {
        code: Option<ErrorCode>,
        reason: String,
    },
    Sample(Sample),
    Backup(BackupUpdate),
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
    Desktop(DesktopUpdate),
}

/// A tab's desktop, as the engine sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum DesktopUpdate {
    /// How far opening has got, in words.
    Stage(String),
    Connected {
        fingerprint: [u8; 32],
        /// No pin was given: the window pins this certificate now.
        first_use: bool,
        security: DesktopSecurity,
        width: u16,
        height: u16,
        session_id: String,
    },
    /// About once a second while connected.
    Stats(DesktopStats),
    Resized {
        width: u16,
        height: u16,
    },
    /// The desktop offers no display control: it keeps its size, scaled to fit the tab.
    CannotResize,
    /// Something was copied on the desktop: the window's clipboard takes the text.
    Clipboard(String),
    /// The desktop could not open or has ended, and why.
    Ended(String),
}

/// The last second of a desktop.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct DesktopStats {
    /// Screen updates decoded a second (each a batch of painted rectangles).
    pub frames_per_sec: f64,
    pub bytes_in_per_sec: f64,
    pub bytes_out_per_sec: f64,
    /// The desktop's own round trip: the median time from a key or click to the picture's
    /// next change, over the last `round_trips` ([`crate::net::rdp::round_trip`]).
    pub round_trip_ms: Option<f64>,
    pub round_trips: usize,
}

/// What the engine tells the window.
#[derive(Debug)]
pub enum Event {
    Conn(ConnState),
    LabReady(LabFacts),
    /// A snapshot: the list starts over with these rows.
    Tenants(Vec<TenantInfo>),
    /// More rows of the same snapshot.
    MoreTenants(Vec<TenantInfo>),
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

/// What the window asks the tenant's backup service, over a tab's session.
#[derive(Debug, Clone)]
pub enum BackupRequest {
    /// Read the whole inventory again now.
    Refresh,
    /// An operator action (start, stop, enable, disable a job, ...).
    Action(BackupAction),
}

/// What the backup service answered. The window keeps the inventory: it gets it whole once
/// (and again when the events cannot describe a change), and in between only [`RunChange`]s.
#[derive(Debug, Clone)]
pub enum BackupUpdate {
    /// The whole inventory, replacing the one the tab holds.
    Inventory(Box<Inventory>),
    /// A job run moved on; apply it to the tab's inventory.
    Run(RunChange),
    ActionDone {
        action: BackupAction,
        summary: String,
    },
    /// An action was refused, with the server's reason.
    ActionRefused {
        action: BackupAction,
        reason: String,
    },
    /// The backup service cannot be used over this session (and why).
    Unavailable(String),
}

/// A change to one job run, small enough to send for every progress event.
#[derive(Debug, Clone, PartialEq)]
pub enum RunChange {
    Progress {
        run: String,
        stage: RunStage,
        /// 0..=1.
        progress: f64,
        bytes_read: u64,
        bytes_transferred: u64,
        rate_bytes_per_sec: u64,
    },
    Log {
        run: String,
        line: LogLine,
    },
}

impl RunChange {
    /// The id of the job run it changes.
    pub fn run(&self) -> &str {
        match self {
            RunChange::Progress { run, .. } | RunChange::Log { run, .. } => run,
        }
    }

    /// Applies the change to `inventory`; `false` when the inventory has no such run.
    pub fn apply(&self, inventory: &mut Inventory) -> bool {
        let Some(target) = inventory.sessions.iter_mut().find(|s| s.id == self.run()) else {
            return false;
        };
        match self {
            RunChange::Progress {
                stage,
                progress,
                bytes_read,
                bytes_transferred,
                rate_bytes_per_sec,
                ..
            } => {
                target.stage = *stage;
                target.progress = *progress;
                target.bytes_read = *bytes_read;
                target.bytes_transferred = *bytes_transferred;
                target.rate_bytes_per_sec = *rate_bytes_per_sec;
            }
            RunChange::Log { line, .. } => {
                target.log.push(line.clone());
                if target.log.len() > MAX_LOG_LINES {
                    target.log.remove(0);
                }
            }
        }
        true
    }
}
