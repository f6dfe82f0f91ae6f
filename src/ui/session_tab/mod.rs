//! One session tab (steps 5–9 seen from the desk): the stages while it opens, the reason and
//! a Retry button when it fails, then the tenant's backup server in five views and port
//! forwards. This file holds the tab's state and how engine events change it; the drawing is
//! one file per view, under the frame that switches between them ([`frame`]).

use eframe::egui;
use std::time::{Duration, Instant};

use egui::{Color32, Ui};

use crate::tenant::backup::BackupAction;
use crate::tenant::backup::Inventory;
use crate::tenant::backup::model::{JobRun, Severity};
use crate::wire::protocol::ErrorCode;

use super::engine::{BackupUpdate, PathPurpose, Sample, SessionEvent, SessionFacts, TabId};
use super::export::ExportForm;
use crate::util::format;

mod connection;
pub mod desktop;
mod desktop_keys;
mod frame;
mod infrastructure;
mod jobs;
mod opening;
mod overview;
mod runs;

pub use desktop::{DesktopPane, DesktopState};
pub use frame::session_tab_ui;

/// The views of an open session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Overview,
    Infrastructure,
    Jobs,
    /// The job runs; the backup product calls them sessions, and so does the view's label.
    Runs,
    Connection,
    /// The tenant server's screen (tenants that offer a desktop).
    Desktop,
}

const VIEWS: [(View, &str); 6] = [
    (View::Overview, "Overview"),
    (View::Infrastructure, "Infrastructure"),
    (View::Jobs, "Jobs"),
    (View::Runs, "Sessions"),
    (View::Connection, "Connection"),
    (View::Desktop, "Desktop"),
];

/// Where the tab is in its life.
#[derive(Debug, Clone, PartialEq)]
pub enum TabState {
    Opening,
    Open,
    Failed {
        code: Option<ErrorCode>,
        reason: String,
    },
    Closed(String),
}

/// A local port forward of this tab.
#[derive(Debug, Clone)]
pub struct ForwardRow {
    pub id: u64,
    pub service: String,
    pub local: String,
}

/// A stop waiting for the operator's yes.
#[derive(Debug, Clone)]
pub struct Confirm {
    pub action: BackupAction,
    pub question: String,
}

/// Everything one tab shows; plain data.
pub struct SessionTab {
    pub id: TabId,
    pub tenant: String,
    pub service: String,
    pub started: Instant,
    pub state: TabState,
    /// Each stage with its time since the request began.
    pub stages: Vec<(String, Duration)>,
    pub facts: Option<SessionFacts>,
    pub samples: Vec<Sample>,
    pub view: View,
    pub inventory: Option<Inventory>,
    /// Why the backup views are empty, when they are.
    pub backup_note: Option<String>,
    /// What happened in this tab, newest last (stages, actions, answers).
    pub activity: Vec<String>,
    pub confirm: Option<Confirm>,
    pub forwards: Vec<ForwardRow>,
    pub forward_service: String,
    pub forward_listen: String,
    pub forward_error: Option<String>,
    /// The job run whose log is shown.
    pub selected_run: Option<String>,
    pub log_export: ExportForm,
    /// The tenant's desktop, when it offers one.
    pub desktop: Option<DesktopPane>,
}

/// Samples kept for the plot (one a second: an hour).
const MAX_SAMPLES: usize = 3600;
const MAX_ACTIVITY: usize = 500;

impl SessionTab {
    pub fn new(id: TabId, tenant: String, service: String) -> Self {
        let view = if service == crate::tenant::backup::SERVICE_NAME {
            View::Overview
        } else {
            View::Connection
        };
        SessionTab {
            id,
            forward_service: service.clone(),
            log_export: ExportForm::new(
                PathPurpose::SessionLog(id),
                format!("{tenant}-session.log"),
            ),
            tenant,
            service,
            started: Instant::now(),
            state: TabState::Opening,
            stages: Vec::new(),
            facts: None,
            samples: Vec::new(),
            view,
            inventory: None,
            backup_note: None,
            activity: Vec::new(),
            confirm: None,
            forwards: Vec::new(),
            forward_listen: "127.0.0.1:0".into(),
            forward_error: None,
            selected_run: None,
            desktop: None,
        }
    }

    /// A tab for a tenant that offers only a desktop: no session of its own, the Desktop
    /// view opens one.
    pub fn desktop_only(id: TabId, tenant: String, desktop: DesktopPane) -> Self {
        let mut tab = SessionTab::new(id, tenant, desktop.service.clone());
        tab.state = TabState::Open;
        tab.view = View::Desktop;
        tab.desktop = Some(desktop);
        tab
    }

    /// The views this tab has: the Desktop view only where there is a desktop.
    pub fn views(&self) -> impl Iterator<Item = (View, &'static str)> + '_ {
        VIEWS
            .into_iter()
            .filter(|(view, _)| *view != View::Desktop || self.desktop.is_some())
    }

    /// Whether this tab's desktop holds the keyboard (the window's shortcuts then wait).
    pub fn desktop_has_keyboard(&self) -> bool {
        self.desktop.as_ref().is_some_and(|d| d.grabbed)
    }

    /// Back to the first stage, for Retry.
    pub fn reset(&mut self) {
        self.state = TabState::Opening;
        self.stages.clear();
        self.facts = None;
        self.samples.clear();
        self.inventory = None;
        self.backup_note = None;
        self.forwards.clear();
        self.started = Instant::now();
        self.note("retrying");
    }

    /// The tab's title: the server's name once known.
    pub fn title(&self) -> String {
        match &self.state {
            TabState::Failed { .. } => format!("{} (failed)", self.tenant),
            TabState::Opening => format!("{} …", self.tenant),
            _ => self.tenant.clone(),
        }
    }

    fn note(&mut self, text: impl Into<String>) {
        let line = format!(
            "{} {}",
            format::clock(crate::util::now_unix_secs()),
            text.into()
        );
        self.activity.push(line);
        if self.activity.len() > MAX_ACTIVITY {
            self.activity.remove(0);
        }
    }

    /// Applies an engine event to the tab.
    pub fn apply(&mut self, event: SessionEvent) {
        match event {
            SessionEvent::Stage(stage, at) => {
                self.note(format!("{} after {}", stage.label(), format::millis(at)));
                self.stages.push((stage.label().to_string(), at));
            }
            SessionEvent::Opened(facts) => {
                let route = if facts.via_gateway {
                    format!("through gateway {}", facts.endpoint)
                } else {
                    format!("directly to {}", facts.endpoint)
                };
                self.note(format!("session {} open {route}", facts.session_id));
                self.facts = Some(facts);
                self.state = TabState::Open;
            }
            SessionEvent::Failed { code, reason } => {
                self.note(format!("failed: {reason}"));
                self.state = TabState::Failed { code, reason };
            }
            SessionEvent::Sample(sample) => {
                self.samples.push(sample);
                if self.samples.len() > MAX_SAMPLES {
                    self.samples.remove(0);
                }
            }
            SessionEvent::Backup(update) => self.apply_backup(update),
            SessionEvent::ForwardStarted {
                forward,
                service,
                local,
            } => {
                self.note(format!("forwarding {local} to {service}"));
                self.forward_error = None;
                self.forwards.push(ForwardRow {
                    id: forward,
                    service,
                    local,
                });
            }
            SessionEvent::ForwardFailed(reason) => {
                self.note(format!("port forward failed: {reason}"));
                self.forward_error = Some(reason);
            }
            SessionEvent::ForwardStopped { forward } => {
                self.forwards.retain(|f| f.id != forward);
            }
            SessionEvent::Closed(reason) => {
                self.note(reason.clone());
                self.state = TabState::Closed(reason);
            }
            SessionEvent::Desktop(update) => {
                if let Some(note) = self.desktop.as_mut().and_then(|d| d.apply(update)) {
                    self.note(note);
                }
            }
        }
    }

    fn apply_backup(&mut self, update: BackupUpdate) {
        match update {
            BackupUpdate::Inventory(inventory) => {
                if self.inventory.is_none() {
                    let at = self.started.elapsed();
                    self.stages
                        .push(("talking to the tenant's backup service".into(), at));
                    self.note(format!("backup server {} answered", inventory.server.name));
                }
                self.inventory = Some(*inventory);
                self.backup_note = None;
            }
            BackupUpdate::Run(change) => {
                if let Some(inventory) = &mut self.inventory {
                    change.apply(inventory);
                }
            }
            BackupUpdate::ActionDone { action, summary } => {
                self.note(format!("{}: {summary}", describe_action(&action)))
            }
            BackupUpdate::ActionRefused { action, reason } => {
                self.note(format!("{} refused: {reason}", describe_action(&action)))
            }
            BackupUpdate::Unavailable(reason) => {
                self.note(format!("backup service unavailable: {reason}"));
                self.backup_note = Some(reason);
            }
        }
    }

    /// The text a log export saves: this tab's activity, then the selected run's log.
    pub fn log_text(&self) -> String {
        let mut out = format!("# console session to {} ({})\n", self.tenant, self.service);
        for line in &self.activity {
            out.push_str(line);
            out.push('\n');
        }
        if let Some(run) = self.selected_run_data() {
            out.push_str(&format!(
                "\n# job run {} of {} ({:?})\n",
                run.id, run.job_name, run.state
            ));
            for line in &run.log {
                out.push_str(&format!(
                    "{} {:?} {}\n",
                    format::clock(line.time_unix_secs),
                    line.severity,
                    line.text
                ));
            }
        }
        out
    }

    fn selected_run_data(&self) -> Option<&JobRun> {
        let inv = self.inventory.as_ref()?;
        let id = self.selected_run.as_deref()?;
        inv.sessions.iter().find(|s| s.id == id)
    }
}

/// What an action does, in words.
pub fn describe_action(action: &BackupAction) -> String {
    match action {
        BackupAction::StartJob { job } => format!("start job {job}"),
        BackupAction::StopJob { job } => format!("stop job {job}"),
        BackupAction::EnableJob { job } => format!("enable job {job}"),
        BackupAction::DisableJob { job } => format!("disable job {job}"),
        other => format!("{other:?}"),
    }
}

fn backup_missing_ui(ui: &mut Ui, tab: &SessionTab) -> bool {
    if tab.inventory.is_some() {
        return false;
    }
    ui.add_space(16.0);
    if tab.service != crate::tenant::backup::SERVICE_NAME {
        ui.label(format!(
            "This session is to the tenant's \"{}\" service, not its backup service: only the Connection view applies.",
            tab.service
        ));
    } else if let Some(note) = &tab.backup_note {
        ui.colored_label(
            ui.visuals().warn_fg_color,
            format!("The backup service is unavailable: {note}"),
        );
    } else {
        ui.horizontal(|ui| {
            ui.spinner();
            ui.label("Reading the backup server…");
        });
    }
    true
}

fn severity_color(ui: &Ui, severity: Severity) -> Color32 {
    match severity {
        Severity::Info => ui.visuals().text_color(),
        Severity::Warning => ui.visuals().warn_fg_color,
        Severity::Error => ui.visuals().error_fg_color,
    }
}
