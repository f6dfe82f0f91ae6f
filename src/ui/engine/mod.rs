//! The console's engine room: tokio tasks that log in, follow the tenant list, open sessions,
//! forward ports and touch files. The window talks to it only through [`EngineHandle`]:
//! [`Command`]s in, [`Event`]s out, each event waking the window with `request_repaint`.
//! Nothing here blocks the UI thread: the runtime handle is injected.
//!
//! This folder is the only part of `ui/` that names tokio. The drawing modules see the plain
//! data in [`messages`], re-exported here.
//!
//! - `commands`: the dispatcher task, one function per command
//! - `feed`: logging in and following the tenant list, reconnecting with backoff
//! - `session`: one tab's session: open it, measure it, talk over it
//! - `backup_link`: a session's conversation with the tenant backup service
//! - `desktop_link`: a tab's remote desktop (RDP) on a session of its own
//! - `screen`: the desktop picture the engine paints and the window uploads (no tokio)

use eframe::egui;

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};

mod backup_link;
mod commands;
mod desktop_link;
mod feed;
pub mod messages;
mod screen;
mod session;

pub use feed::describe_error;
pub use messages::{
    BackupRequest, BackupUpdate, Command, ConnState, DesktopRequest, DesktopStats, DesktopUpdate,
    Event, LabFacts, PathPurpose, RunChange, Sample, SessionEvent, SessionFacts, TabId,
};
pub use screen::{Region, ScreenChange, SharedScreen};

/// The runtime the engine's tasks run on. The window is handed one and passes it to [`start`].
pub type Runtime = tokio::runtime::Handle;

/// A runtime of its own for the window (`rac`, `rac lab`, `rac console`).
pub fn build_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("rac-console")
        .build()
        .context("starting the console's tokio runtime")
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

    /// Wakes the window without an event (a desktop's picture changed).
    fn repaint(&self) {
        self.repaint.request_repaint();
    }
}

/// The window's end of the engine. Dropping it stops every task (and the lab).
pub struct EngineHandle {
    commands: mpsc::UnboundedSender<Command>,
    events: mpsc::UnboundedReceiver<Event>,
    _stop: DropGuard,
}

impl EngineHandle {
    /// Queues a command; never blocks.
    pub fn send(&self, command: Command) {
        if self.commands.send(command).is_err() {
            tracing::warn!("console engine has stopped; command dropped");
        }
    }

    /// The next waiting event, if there is one; never waits.
    pub fn try_next_event(&mut self) -> Option<Event> {
        self.events.try_recv().ok()
    }
}

/// Starts the engine on `runtime`.
pub fn start(runtime: &Runtime, repaint: egui::Context) -> EngineHandle {
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (event_tx, event_rx) = mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let sink = EventSink {
        tx: event_tx,
        repaint,
    };
    runtime.spawn(commands::dispatch(cmd_rx, sink, stop.clone()));
    EngineHandle {
        commands: cmd_tx,
        events: event_rx,
        _stop: stop.drop_guard(),
    }
}
