//! One session tab (steps 5–9 seen from the desk): the stages while it opens, the reason and
//! a Retry button when it fails, then the tenant's backup server in five views (Overview,
//! Infrastructure, Jobs, Sessions, Connection) and port forwards.

use eframe::egui;
use std::time::{Duration, Instant};

use egui::{Color32, RichText, Ui};
use egui_extras::{Column, TableBuilder};

use crate::net::console::OpenStage;
use crate::net::protocol::ErrorCode;
use crate::tenant::backup::Action as BackupAction;
use crate::tenant::backup::Inventory;
use crate::tenant::backup::model::{
    JobResult, ProxyState, Schedule, SessionState, Severity, WorkerState,
};

use super::action::Action;
use super::engine::{
    BackupRequest, BackupUpdate, Command, PathPurpose, Sample, SessionEvent, SessionFacts, TabId,
};
use super::export::{ExportForm, export_form_ui};
use super::format;

/// The views of an open session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Overview,
    Infrastructure,
    Jobs,
    Sessions,
    Connection,
}

const VIEWS: [(View, &str); 5] = [
    (View::Overview, "Overview"),
    (View::Infrastructure, "Infrastructure"),
    (View::Jobs, "Jobs"),
    (View::Sessions, "Sessions"),
    (View::Connection, "Connection"),
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
        }
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
        let line = format!("{} {}", format::clock(format::now_unix_secs()), text.into());
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

    fn selected_run_data(&self) -> Option<&crate::tenant::backup::model::Session> {
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

/// Draws one tab.
pub fn session_tab_ui(ui: &mut Ui, tab: &mut SessionTab, actions: &mut Vec<Action>) {
    header_ui(ui, tab, actions);
    ui.separator();
    match tab.state.clone() {
        TabState::Opening => {
            stages_ui(ui, tab, true);
        }
        TabState::Failed { code, reason } => {
            failure_ui(ui, tab, code, &reason, actions);
        }
        TabState::Open | TabState::Closed(_) => {
            if let TabState::Closed(reason) = &tab.state {
                ui.horizontal(|ui| {
                    ui.colored_label(
                        ui.visuals().warn_fg_color,
                        format!("Session closed: {reason}"),
                    );
                    if ui.button("Reconnect").clicked() {
                        actions.push(Action::Retry(tab.id));
                    }
                });
            }
            ui.horizontal(|ui| {
                for (i, (view, name)) in VIEWS.into_iter().enumerate() {
                    if ui
                        .selectable_label(tab.view == view, name)
                        .on_hover_text(format!("Alt+{}", i + 1))
                        .clicked()
                    {
                        tab.view = view;
                    }
                }
            });
            // Alt+1..5 switch views.
            let keys = [
                egui::Key::Num1,
                egui::Key::Num2,
                egui::Key::Num3,
                egui::Key::Num4,
                egui::Key::Num5,
            ];
            for (key, (view, _)) in keys.into_iter().zip(VIEWS) {
                if ui.input_mut(|i| i.consume_key(egui::Modifiers::ALT, key)) {
                    tab.view = view;
                }
            }
            ui.separator();
            egui::ScrollArea::vertical()
                .id_salt(("session-view", tab.id))
                .auto_shrink(false)
                .show(ui, |ui| match tab.view {
                    View::Overview => overview_ui(ui, tab),
                    View::Infrastructure => infrastructure_ui(ui, tab),
                    View::Jobs => jobs_ui(ui, tab, actions),
                    View::Sessions => runs_ui(ui, tab, actions),
                    View::Connection => connection_ui(ui, tab, actions),
                });
        }
    }
    confirm_ui(ui, tab, actions);
}

fn header_ui(ui: &mut Ui, tab: &mut SessionTab, actions: &mut Vec<Action>) {
    ui.horizontal(|ui| {
        let server = tab
            .inventory
            .as_ref()
            .map(|i| i.server.name.clone())
            .unwrap_or_else(|| tab.tenant.clone());
        ui.label(RichText::new(server).heading().strong());
        ui.label(RichText::new(format!("tenant {} · service {}", tab.tenant, tab.service)).weak());
        let (color, text) = match &tab.state {
            TabState::Opening => (ui.visuals().warn_fg_color, "opening"),
            TabState::Open => (Color32::from_rgb(60, 170, 80), "open"),
            TabState::Failed { .. } => (ui.visuals().error_fg_color, "failed"),
            TabState::Closed(_) => (ui.visuals().weak_text_color(), "closed"),
        };
        super::widgets::dot_ui(ui, color, true);
        ui.colored_label(color, text);
        ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
            if ui
                .button("Close tab")
                .on_hover_text("End this session (Ctrl+W)")
                .clicked()
            {
                actions.push(Action::CloseTab(tab.id));
            }
        });
    });
}

fn stages_ui(ui: &mut Ui, tab: &SessionTab, opening: bool) {
    ui.label(RichText::new("Opening the session").strong());
    let all = [
        OpenStage::RequestSent.label(),
        OpenStage::WaitingForTenant.label(),
        OpenStage::Spliced.label(),
        "talking to the tenant's backup service",
    ];
    egui::Grid::new(("stages", tab.id))
        .num_columns(2)
        .show(ui, |ui| {
            let mut waiting_shown = false;
            for name in all {
                if name == all[3] && tab.service != crate::tenant::backup::SERVICE_NAME {
                    continue;
                }
                match tab.stages.iter().find(|(s, _)| s == name) {
                    Some((_, at)) => {
                        ui.horizontal(|ui| {
                            super::widgets::dot_ui(ui, Color32::from_rgb(60, 170, 80), true);
                            ui.label(name);
                        });
                        ui.label(format::millis(*at));
                    }
                    None if opening && !waiting_shown => {
                        waiting_shown = true;
                        ui.horizontal(|ui| {
                            ui.spinner();
                            ui.label(name);
                        });
                        ui.label(format::millis(tab.started.elapsed()));
                    }
                    None => {
                        ui.horizontal(|ui| {
                            let weak = ui.visuals().weak_text_color();
                            super::widgets::dot_ui(ui, weak, false);
                            ui.label(RichText::new(name).weak());
                        });
                        ui.label("");
                    }
                }
                ui.end_row();
            }
        });
    if opening {
        ui.ctx().request_repaint_after(Duration::from_millis(100));
    }
}

/// What the operator can do about a refusal.
fn advice(code: Option<ErrorCode>) -> &'static str {
    match code {
        Some(ErrorCode::TenantOffline) => {
            "The tenant's redirector is not connected to the SP. It reconnects by itself once its machine and network are up."
        }
        Some(ErrorCode::ProviderAccessDisabled) => {
            "The tenant has turned provider access off (allow_provider_access = false). Only the tenant can turn it on."
        }
        Some(ErrorCode::TenantDisabled) => {
            "The SP has disabled this tenant's account. Enable it with `rac sp tenant enable`."
        }
        Some(ErrorCode::TenantTimeout) => {
            "The tenant did not open its data connection in time; its link may be slow or down. Try again."
        }
        Some(ErrorCode::ServiceNotOffered) => "The tenant does not offer this service to consoles.",
        Some(ErrorCode::TokenExpired) | Some(ErrorCode::AuthFailed) => "Log in again.",
        _ => "",
    }
}

fn failure_ui(
    ui: &mut Ui,
    tab: &SessionTab,
    code: Option<ErrorCode>,
    reason: &str,
    actions: &mut Vec<Action>,
) {
    ui.add_space(8.0);
    ui.label(RichText::new("The session could not be opened").heading());
    // The code's words first (stable, short), then the SP's own message if it adds to them.
    let headline = code.map_or(reason, |c| c.describe());
    ui.label(
        RichText::new(headline)
            .size(18.0)
            .color(ui.visuals().error_fg_color),
    );
    if headline != reason {
        ui.label(reason);
    }
    let advice = advice(code);
    if !advice.is_empty() {
        ui.label(advice);
    }
    ui.add_space(8.0);
    if ui
        .button("Retry")
        .on_hover_text("Ask the SP for the session again")
        .clicked()
    {
        actions.push(Action::Retry(tab.id));
    }
    ui.add_space(12.0);
    stages_ui(ui, tab, false);
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

fn overview_ui(ui: &mut Ui, tab: &mut SessionTab) {
    if backup_missing_ui(ui, tab) {
        return;
    }
    let Some(inv) = &tab.inventory else { return };
    let s = &inv.server;
    egui::Grid::new("overview")
        .num_columns(2)
        .striped(true)
        .show(ui, |ui| {
            ui.label("Backup server");
            ui.label(RichText::new(&s.name).strong());
            ui.end_row();
            ui.label("Version");
            ui.label(&s.version);
            ui.end_row();
            ui.label("Operating system");
            ui.label(&s.os);
            ui.end_row();
            ui.label("Uptime");
            ui.label(format::span(s.uptime_secs));
            ui.end_row();
            ui.label("Proxies / pools / repositories");
            ui.label(format!(
                "{} / {} / {}",
                inv.proxies.len(),
                inv.proxy_pools.len(),
                inv.repositories.len()
            ));
            ui.end_row();
            ui.label("Jobs (running)");
            let running = inv
                .sessions
                .iter()
                .filter(|r| r.state == SessionState::Running)
                .count();
            ui.label(format!("{} ({running})", inv.jobs.len()));
            ui.end_row();
            ui.label("Microsoft 365 organizations");
            ui.label(inv.organizations.len().to_string());
            ui.end_row();
            ui.label("Azure regions / VMs");
            ui.label(format!(
                "{} / {}",
                inv.azure.regions.len(),
                inv.azure.vms.len()
            ));
            ui.end_row();
            ui.label("Email notifications");
            ui.label(if s.notifications.enabled {
                format!(
                    "on, via {}:{}",
                    s.notifications.smtp_server, s.notifications.smtp_port
                )
            } else {
                "off".into()
            });
            ui.end_row();
        });
    ui.add_space(8.0);
    ui.label(RichText::new(format!("Alarms ({})", s.alarms.len())).strong());
    if s.alarms.is_empty() {
        ui.label(RichText::new("No alarms.").weak());
    }
    for alarm in s.alarms.iter().rev().take(50) {
        ui.horizontal(|ui| {
            ui.label(format::clock(alarm.time_unix_secs));
            ui.colored_label(
                severity_color(ui, alarm.severity),
                format!("{:?}", alarm.severity),
            );
            ui.label(RichText::new(&alarm.object).strong());
            ui.label(&alarm.text);
        });
    }
}

fn severity_color(ui: &Ui, severity: Severity) -> Color32 {
    match severity {
        Severity::Info => ui.visuals().text_color(),
        Severity::Warning => ui.visuals().warn_fg_color,
        Severity::Error => ui.visuals().error_fg_color,
    }
}

fn infrastructure_ui(ui: &mut Ui, tab: &mut SessionTab) {
    if backup_missing_ui(ui, tab) {
        return;
    }
    let Some(inv) = &tab.inventory else { return };
    ui.label(RichText::new("Backup proxies").strong());
    egui::Grid::new("proxies")
        .num_columns(6)
        .striped(true)
        .show(ui, |ui| {
            for h in [
                "Name",
                "Host",
                "Kind",
                "Certificate thumbprint",
                "State",
                "Tasks / pool",
            ] {
                ui.label(RichText::new(h).strong());
            }
            ui.end_row();
            for p in &inv.proxies {
                ui.label(&p.name);
                ui.label(&p.host);
                ui.label(format!("{:?}", p.kind).to_lowercase());
                ui.label(
                    RichText::new(p.certificate_thumbprint.as_deref().unwrap_or("—")).monospace(),
                );
                let color = match p.state {
                    ProxyState::Online => Color32::from_rgb(60, 170, 80),
                    ProxyState::Offline => ui.visuals().error_fg_color,
                    ProxyState::Maintenance => ui.visuals().warn_fg_color,
                };
                ui.colored_label(color, format!("{:?}", p.state).to_lowercase());
                ui.label(format!(
                    "{} · {}",
                    p.max_concurrent_tasks,
                    p.pool.as_deref().unwrap_or("no pool")
                ));
                ui.end_row();
            }
        });
    ui.add_space(8.0);
    ui.label(RichText::new("Proxy pools").strong());
    if inv.proxy_pools.is_empty() {
        ui.label(RichText::new("No pools.").weak());
    }
    for pool in &inv.proxy_pools {
        ui.label(format!(
            "{} — {} members, bus {} ({} streams)",
            pool.name,
            pool.members.len(),
            pool.bus.url,
            pool.bus.streams.len()
        ));
    }
    ui.add_space(8.0);
    ui.label(RichText::new("Repositories").strong());
    egui::Grid::new("repos")
        .num_columns(4)
        .striped(true)
        .show(ui, |ui| {
            for r in &inv.repositories {
                ui.label(&r.name);
                ui.label(r.path.as_deref().or(r.bucket.as_deref()).unwrap_or("—"));
                let used = if r.capacity_bytes == 0 {
                    0.0
                } else {
                    r.used_bytes as f32 / r.capacity_bytes as f32
                };
                ui.add(
                    egui::ProgressBar::new(used)
                        .desired_width(200.0)
                        .text(format!(
                            "{} of {}",
                            format::bytes(r.used_bytes),
                            format::bytes(r.capacity_bytes)
                        )),
                );
                ui.label(format!("{} days", r.retention_days));
                ui.end_row();
            }
        });
    ui.add_space(8.0);
    ui.label(RichText::new("Azure").strong());
    if inv.azure.regions.is_empty() {
        ui.label(RichText::new("No Azure regions.").weak());
    }
    for region in &inv.azure.regions {
        let busy = region
            .workers
            .iter()
            .filter(|w| !matches!(w.state, WorkerState::Deallocated))
            .count();
        ui.label(format!(
            "{} — vnet {}, storage {}, {} workers ({busy} not stopped), {} private endpoints",
            region.name,
            region.vnet,
            region.storage_account,
            region.workers.len(),
            region.private_endpoints.len()
        ));
    }
    ui.label(format!("{} protected VMs", inv.azure.vms.len()));
}

fn schedule_text(s: &Schedule) -> String {
    match s {
        Schedule::Manual => "manual".into(),
        Schedule::Daily { hour, minute } => format!("daily {hour:02}:{minute:02} UTC"),
        Schedule::Periodically { every_minutes } => format!("every {every_minutes} min"),
    }
}

fn result_text(r: Option<JobResult>) -> &'static str {
    match r {
        None => "—",
        Some(JobResult::Success) => "success",
        Some(JobResult::Warning) => "warning",
        Some(JobResult::Failed) => "failed",
        Some(JobResult::Stopped) => "stopped",
    }
}

fn jobs_ui(ui: &mut Ui, tab: &mut SessionTab, actions: &mut Vec<Action>) {
    if backup_missing_ui(ui, tab) {
        return;
    }
    let Some(inv) = &tab.inventory else { return };
    let mut confirm = None;
    let id = tab.id;
    let mut send = |request: BackupAction| {
        actions.push(Action::Engine(Command::Backup {
            tab: id,
            request: BackupRequest::Action(request),
        }))
    };
    egui::Grid::new("jobs").num_columns(6).striped(true).show(ui, |ui| {
        for h in ["Job", "Schedule", "Last result", "Next run", "Progress", "Actions"] {
            ui.label(RichText::new(h).strong());
        }
        ui.end_row();
        let now = format::now_unix_secs();
        for job in &inv.jobs {
            ui.label(RichText::new(&job.name).strong());
            ui.label(if job.enabled {
                schedule_text(&job.schedule)
            } else {
                "disabled".into()
            });
            ui.label(result_text(job.last_result));
            ui.label(
                job.next_run_unix_secs
                    .map(|t| format!("in {}", format::span(t.saturating_sub(now))))
                    .unwrap_or_else(|| "—".into()),
            );
            let running = inv.running_session(&job.id);
            match running {
                Some(run) => {
                    ui.add(
                        egui::ProgressBar::new(run.progress as f32)
                            .desired_width(160.0)
                            .show_percentage(),
                    );
                }
                None => {
                    ui.label("");
                }
            }
            ui.horizontal(|ui| {
                let name = &job.name;
                if running.is_some() {
                    if ui.button("Stop").on_hover_text(format!("Stop {name}")).clicked() {
                        confirm = Some(Confirm {
                            action: BackupAction::StopJob { job: job.id.clone() },
                            question: format!("Stop the running job \"{name}\"? Its run ends as stopped; objects not yet processed are not backed up."),
                        });
                    }
                } else if ui
                    .add_enabled(job.enabled, egui::Button::new("Start"))
                    .on_hover_text(format!("Start {name} now"))
                    .on_disabled_hover_text("Enable the job first")
                    .clicked()
                {
                    send(BackupAction::StartJob { job: job.id.clone() });
                }
                if job.enabled {
                    if ui.button("Disable").on_hover_text(format!("Disable {name}")).clicked() {
                        send(BackupAction::DisableJob { job: job.id.clone() });
                    }
                } else if ui.button("Enable").on_hover_text(format!("Enable {name}")).clicked() {
                    send(BackupAction::EnableJob { job: job.id.clone() });
                }
            });
            ui.end_row();
        }
    });
    if let Some(c) = confirm {
        tab.confirm = Some(c);
    }
    recent_activity_ui(ui, tab);
}

fn recent_activity_ui(ui: &mut Ui, tab: &SessionTab) {
    ui.add_space(8.0);
    ui.label(RichText::new("Recent activity").strong());
    for line in tab.activity.iter().rev().take(5) {
        ui.label(RichText::new(line).weak());
    }
}

fn confirm_ui(ui: &mut Ui, tab: &mut SessionTab, actions: &mut Vec<Action>) {
    let Some(confirm) = tab.confirm.clone() else {
        return;
    };
    let modal = egui::Modal::new(egui::Id::unique(("confirm", tab.id))).show(ui.ctx(), |ui| {
        ui.set_max_width(420.0);
        ui.heading("Interrupt running work?");
        ui.label(&confirm.question);
        ui.add_space(8.0);
        ui.horizontal(|ui| {
            if ui.button("Stop the job").clicked() {
                actions.push(Action::Engine(Command::Backup {
                    tab: tab.id,
                    request: BackupRequest::Action(confirm.action.clone()),
                }));
                tab.confirm = None;
            }
            if ui.button("Cancel").clicked() {
                tab.confirm = None;
            }
        });
    });
    if modal.should_close() {
        tab.confirm = None;
    }
}

fn runs_ui(ui: &mut Ui, tab: &mut SessionTab, actions: &mut Vec<Action>) {
    if backup_missing_ui(ui, tab) {
        return;
    }
    let Some(inv) = &tab.inventory else { return };
    if inv.sessions.is_empty() {
        ui.label(RichText::new("No job has run yet. Start one from the Jobs view.").weak());
        return;
    }
    let mut select = None;
    let available = ui.available_height();
    TableBuilder::new(ui)
        .id_salt(("runs", tab.id))
        .striped(true)
        .max_scroll_height(available * 0.45)
        .column(Column::initial(200.0).clip(true))
        .column(Column::initial(90.0))
        .column(Column::initial(160.0))
        .column(Column::initial(180.0))
        .column(Column::initial(100.0))
        .column(Column::remainder())
        .header(20.0, |mut h| {
            for title in ["Job run", "State", "Stage", "Progress", "Rate", "Started"] {
                h.col(|ui| {
                    ui.strong(title);
                });
            }
        })
        .body(|body| {
            let runs: Vec<_> = inv.sessions.iter().rev().collect();
            body.rows(22.0, runs.len(), |mut row| {
                let run = runs[row.index()];
                let selected = tab.selected_run.as_deref() == Some(run.id.as_str());
                row.col(|ui| {
                    if ui.selectable_label(selected, &run.job_name).clicked() {
                        select = Some(run.id.clone());
                    }
                });
                row.col(|ui| {
                    ui.label(format!("{:?}", run.state).to_lowercase());
                });
                row.col(|ui| {
                    ui.label(format!("{:?}", run.stage));
                });
                row.col(|ui| {
                    ui.add(egui::ProgressBar::new(run.progress as f32).show_percentage());
                });
                row.col(|ui| {
                    ui.label(format!("{}/s", format::bytes(run.rate_bytes_per_sec)));
                });
                row.col(|ui| {
                    ui.label(format::clock(run.started_at_unix_secs));
                });
            });
        });
    if let Some(id) = select {
        tab.selected_run = Some(id);
    }
    ui.separator();
    let selected = tab.selected_run.clone().or_else(|| {
        tab.inventory
            .as_ref()?
            .sessions
            .last()
            .map(|s| s.id.clone())
    });
    tab.selected_run = selected;
    if let Some(run) = tab.selected_run_data() {
        ui.label(RichText::new(format!("Log of {} ({})", run.job_name, run.id)).strong());
        egui::ScrollArea::vertical()
            .id_salt(("run-log", tab.id))
            .max_height(220.0)
            .stick_to_bottom(true)
            .show(ui, |ui| {
                for line in &run.log {
                    ui.horizontal(|ui| {
                        ui.label(RichText::new(format::clock(line.time_unix_secs)).monospace());
                        ui.colored_label(severity_color(ui, line.severity), &line.text);
                    });
                }
            });
    }
    ui.separator();
    ui.label("Save this console session's activity and the selected run's log:");
    if let Some(click) = export_form_ui(ui, &mut tab.log_export) {
        actions.push(Action::Export {
            form: click,
            contents: tab.log_text(),
        });
    }
}

fn connection_ui(ui: &mut Ui, tab: &mut SessionTab, actions: &mut Vec<Action>) {
    if let Some(facts) = &tab.facts {
        egui::Grid::new("connection")
            .num_columns(2)
            .striped(true)
            .show(ui, |ui| {
                ui.label("Route");
                ui.label(if facts.via_gateway {
                    format!("through cloud gateway {}", facts.endpoint)
                } else {
                    format!("directly to the SP at {}", facts.endpoint)
                });
                ui.end_row();
                ui.label("Session id");
                ui.label(RichText::new(&facts.session_id).monospace());
                ui.end_row();
                ui.label("TLS");
                ui.label(format!(
                    "{} · {}{}",
                    facts.tls.version,
                    facts.tls.cipher,
                    if facts.tls.resumed { " · resumed" } else { "" }
                ));
                ui.end_row();
                ui.label("SP certificate (SHA-256)");
                ui.horizontal(|ui| {
                    ui.label(
                        RichText::new(&facts.tls.peer_fingerprint)
                            .monospace()
                            .small(),
                    );
                    if ui
                        .small_button("Copy")
                        .on_hover_text("Copy the fingerprint")
                        .clicked()
                    {
                        ui.ctx().copy_text(facts.tls.peer_fingerprint.clone());
                    }
                });
                ui.end_row();
                let last = tab.samples.last();
                ui.label("Bytes sent / received");
                ui.label(format!(
                    "{} / {}",
                    format::bytes(last.map_or(0, |s| s.bytes_sent)),
                    format::bytes(last.map_or(0, |s| s.bytes_received))
                ));
                ui.end_row();
                ui.label("Round trip");
                ui.label(
                    last.and_then(|s| s.rtt_ms)
                        .map(|r| format!("{r:.1} ms"))
                        .unwrap_or_else(|| "—".into()),
                );
                ui.end_row();
                ui.label("Stages");
                ui.label(
                    tab.stages
                        .iter()
                        .map(|(s, at)| format!("{s} {}", format::millis(*at)))
                        .collect::<Vec<_>>()
                        .join(" · "),
                );
                ui.end_row();
            });
    }
    ui.add_space(8.0);
    plot_ui(ui, tab);
    ui.add_space(8.0);
    forwards_ui(ui, tab, actions);
}

fn plot_ui(ui: &mut Ui, tab: &SessionTab) {
    use egui_plot::{Legend, Line, Plot, PlotPoints};
    let mut sent = Vec::new();
    let mut received = Vec::new();
    let mut rtt = Vec::new();
    for pair in tab.samples.windows(2) {
        let dt = (pair[1].at_secs - pair[0].at_secs).max(0.001);
        let x = pair[1].at_secs;
        sent.push([
            x,
            (pair[1].bytes_sent.saturating_sub(pair[0].bytes_sent)) as f64 / dt / 1024.0,
        ]);
        received.push([
            x,
            (pair[1]
                .bytes_received
                .saturating_sub(pair[0].bytes_received)) as f64
                / dt
                / 1024.0,
        ]);
    }
    for s in &tab.samples {
        if let Some(r) = s.rtt_ms {
            rtt.push([s.at_secs, r]);
        }
    }
    ui.label(RichText::new("Throughput (KiB/s) over the session").strong());
    Plot::new(("throughput", tab.id))
        .height(140.0)
        .legend(Legend::default())
        .x_axis_label("seconds")
        .allow_scroll(false)
        .show(ui, |plot| {
            plot.line(Line::new("sent", PlotPoints::from(sent)));
            plot.line(Line::new("received", PlotPoints::from(received)));
        });
    ui.label(RichText::new("Round trip (ms)").strong());
    Plot::new(("rtt", tab.id))
        .height(110.0)
        .legend(Legend::default())
        .x_axis_label("seconds")
        .allow_scroll(false)
        .show(ui, |plot| {
            plot.line(Line::new("round trip", PlotPoints::from(rtt)));
        });
}

fn forwards_ui(ui: &mut Ui, tab: &mut SessionTab, actions: &mut Vec<Action>) {
    ui.label(RichText::new("Port forwarding").strong());
    ui.label(
        RichText::new("Each local connection gets its own session to the tenant service, as `rac connect` does.")
            .weak(),
    );
    ui.horizontal(|ui| {
        let label = ui.label("Service");
        ui.add(egui::TextEdit::singleline(&mut tab.forward_service).desired_width(100.0))
            .labelled_by(label.id);
        let label = ui.label("Local address");
        ui.add(egui::TextEdit::singleline(&mut tab.forward_listen).desired_width(160.0))
            .labelled_by(label.id)
            .on_hover_text("127.0.0.1:0 picks a free port");
        if ui.button("Forward").clicked() {
            actions.push(Action::Engine(Command::Forward {
                tab: tab.id,
                tenant: tab.tenant.clone(),
                service: tab.forward_service.trim().to_string(),
                listen: tab.forward_listen.trim().to_string(),
            }));
        }
    });
    if let Some(e) = &tab.forward_error {
        ui.colored_label(ui.visuals().error_fg_color, e);
    }
    for f in &tab.forwards {
        ui.horizontal(|ui| {
            ui.label(format!("{} on", f.service));
            ui.label(RichText::new(&f.local).monospace().strong());
            if ui
                .small_button("Copy")
                .on_hover_text(format!("Copy {}", f.local))
                .clicked()
            {
                ui.ctx().copy_text(f.local.clone());
            }
            if ui
                .small_button("Stop")
                .on_hover_text("Stop this forward")
                .clicked()
            {
                actions.push(Action::Engine(Command::StopForward {
                    tab: tab.id,
                    forward: f.id,
                }));
            }
        });
    }
}
