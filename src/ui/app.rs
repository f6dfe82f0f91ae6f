//! The eframe app: plain state the panels draw, the engine's events drained each frame under
//! a small time budget, and the panels' [`Action`](super::action::Action)s applied after drawing.

use eframe::egui;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use egui::{Key, Modifiers, RichText, Ui};
use serde::{Deserialize, Serialize};

use crate::lab::LabOptions;

use super::action::Action;
use super::connect_dialog::{ConnectDialog, Profile, connect_dialog_ui};
use super::engine::{
    self, Command, ConnState, EngineHandle, Event, LabFacts, PathPurpose, Runtime, TabId,
};
use super::engine::{DesktopUpdate, SessionEvent};
use super::export::{ExportClick, ExportForm, export_form_ui};
use super::session_tab::{SessionTab, TabState, session_tab_ui};
use super::status_bar::{StatusFacts, status_bar_ui};
use super::tenant_list::{ListSettings, TenantList, tenant_list_ui};

mod desktops;

/// How long one frame may spend applying engine events.
const EVENT_BUDGET: Duration = Duration::from_millis(6);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Theme {
    #[default]
    Dark,
    Light,
}

/// What persists between runs (eframe storage, in the platform config directory).
/// No passwords, tokens or handles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Settings {
    pub theme: Theme,
    pub list: ListSettings,
    pub profiles: Vec<Profile>,
    pub selected_profile: usize,
    /// Per SP and tenant ("sp-address/tenant"): who logs in to its desktop.
    pub desktop_logins: BTreeMap<String, DesktopLoginName>,
    /// Per SP and tenant: the desktop certificate's SHA-256, pinned on first use.
    pub desktop_pins: BTreeMap<String, String>,
}

/// The remembered part of a desktop login: never the password.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct DesktopLoginName {
    pub user: String,
    pub domain: String,
}

/// Lab window or a real SP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Lab,
    Console,
}

/// The console window's state.
pub struct ConsoleApp {
    pub settings: Settings,
    pub mode: Mode,
    engine: EngineHandle,
    pub conn: ConnState,
    pub lab: Option<LabFacts>,
    lab_options: Option<LabOptions>,
    pub tenants: TenantList,
    pub tabs: Vec<SessionTab>,
    /// The tab shown; `None` is the tenant list.
    pub active: Option<TabId>,
    next_tab: TabId,
    connect: ConnectDialog,
    pub tenant_export: Option<ExportForm>,
    /// Files being written, and which form asked.
    writes: HashMap<PathBuf, PathPurpose>,
    /// The last thing worth telling, and whether it is a failure.
    pub notice: Option<(String, bool)>,
    applied_theme: Option<Theme>,
    /// While set, engine events wait in their channel (tests freeze the view for snapshots).
    pub paused: bool,
    /// The tab whose desktop fills the screen.
    pub fullscreen: Option<TabId>,
    /// Desktop pins in the lab: its desktops' certificates are new each run, so they are
    /// kept for this run only.
    lab_pins: BTreeMap<String, String>,
    ctx: egui::Context,
}

impl ConsoleApp {
    fn new(
        cc: &eframe::CreationContext<'_>,
        runtime: &Runtime,
        mode: Mode,
        lab_options: Option<LabOptions>,
    ) -> Self {
        let settings: Settings = cc
            .storage
            .and_then(|s| eframe::get_value(s, eframe::APP_KEY))
            .unwrap_or_default();
        let engine = engine::start(runtime, cc.egui_ctx.clone());
        let mut app = ConsoleApp {
            settings,
            mode,
            engine,
            conn: ConnState::Idle,
            lab: None,
            lab_options: lab_options.clone(),
            tenants: TenantList::default(),
            tabs: Vec::new(),
            active: None,
            next_tab: 1,
            connect: ConnectDialog::default(),
            tenant_export: None,
            writes: HashMap::new(),
            notice: None,
            applied_theme: None,
            paused: false,
            fullscreen: None,
            lab_pins: BTreeMap::new(),
            ctx: cc.egui_ctx.clone(),
        };
        if let Some(options) = lab_options {
            app.conn = ConnState::StartingLab;
            app.engine.send(Command::StartLab(Box::new(options)));
        }
        app
    }

    /// The window on an embedded lab: it starts the lab and logs in by itself.
    pub fn lab(cc: &eframe::CreationContext<'_>, runtime: &Runtime, options: LabOptions) -> Self {
        Self::new(cc, runtime, Mode::Lab, Some(options))
    }

    /// The window against a real SP: profiles and a login form first.
    pub fn console(cc: &eframe::CreationContext<'_>, runtime: &Runtime) -> Self {
        Self::new(cc, runtime, Mode::Console, None)
    }

    pub fn tab(&self, id: TabId) -> Option<&SessionTab> {
        self.tabs.iter().find(|t| t.id == id)
    }

    fn tab_mut(&mut self, id: TabId) -> Option<&mut SessionTab> {
        self.tabs.iter_mut().find(|t| t.id == id)
    }

    /// Applies waiting engine events, for at most [`EVENT_BUDGET`].
    fn drain_events(&mut self, ctx: &egui::Context) {
        if self.paused {
            return;
        }
        let started = Instant::now();
        while let Some(event) = self.engine.try_next_event() {
            self.on_event(event);
            if started.elapsed() > EVENT_BUDGET {
                // The rest next frame.
                ctx.request_repaint();
                break;
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Conn(state) => self.conn = state,
            Event::LabReady(facts) => self.lab = Some(facts),
            Event::Tenants(all) => self.tenants.set_all(all),
            Event::MoreTenants(rows) => self.tenants.extend(rows),
            Event::TenantChanged(t) => self.tenants.upsert(t),
            Event::TenantRemoved(name) => self.tenants.remove(&name),
            Event::Session(id, event) => {
                if let SessionEvent::Desktop(DesktopUpdate::Connected {
                    fingerprint,
                    first_use: true,
                    ..
                }) = &event
                    && let Some(tab) = self.tab(id)
                {
                    let key = self.desktop_key(&tab.tenant.clone());
                    let pin = crate::wire::format_fingerprint(fingerprint);
                    self.pins_mut().insert(key, pin);
                }
                if let SessionEvent::Desktop(DesktopUpdate::Clipboard(text)) = &event {
                    self.ctx.copy_text(text.clone());
                }
                if let SessionEvent::Desktop(DesktopUpdate::Ended(_)) = &event
                    && self.fullscreen == Some(id)
                {
                    self.set_fullscreen(None);
                }
                if let Some(tab) = self.tab_mut(id) {
                    tab.apply(event);
                }
            }
            Event::PathPicked { purpose, path } => match &purpose {
                PathPurpose::TenantCsv => {
                    if let Some(form) = &mut self.tenant_export {
                        form.picked(path);
                    }
                }
                PathPurpose::SessionLog(id) => {
                    let id = *id;
                    if let Some(tab) = self.tab_mut(id) {
                        tab.log_export.picked(path);
                    }
                }
                PathPurpose::CaFile => {
                    let i = self.settings.selected_profile;
                    if let Some(p) = self.settings.profiles.get_mut(i) {
                        p.ca_file = path.display().to_string();
                    }
                }
            },
            Event::FingerprintProbed(result) => {
                let i = self.settings.selected_profile;
                match (result, self.settings.profiles.get_mut(i)) {
                    (Ok(fp), Some(p)) => {
                        p.fingerprint = fp;
                        p.fingerprint_confirmed = false;
                        self.connect.error = None;
                    }
                    (Err(e), _) => self.connect.error = Some(e),
                    (Ok(_), None) => {}
                }
            }
            Event::FileWritten { path } => {
                let text = format!("saved {}", path.display());
                self.set_form_status(&path, false, text.clone());
                self.notice = Some((text, false));
            }
            Event::FileFailed { path, reason } => {
                let text = format!("could not save {}: {reason}", path.display());
                self.set_form_status(&path, true, text.clone());
                self.notice = Some((text, true));
            }
        }
    }

    fn set_form_status(&mut self, path: &PathBuf, failed: bool, text: String) {
        let form = match self.writes.remove(path) {
            Some(PathPurpose::TenantCsv) => self.tenant_export.as_mut(),
            Some(PathPurpose::SessionLog(id)) => self.tab_mut(id).map(|t| &mut t.log_export),
            _ => None,
        };
        if let Some(form) = form {
            form.status = Some((failed, text));
        }
    }

    fn shortcuts(&mut self, ctx: &egui::Context, actions: &mut Vec<Action>) {
        if self.tabs.iter().any(|t| t.desktop_has_keyboard()) {
            // The desktop takes every key until it gives the keyboard back.
            return;
        }
        let (find, close, next, prev) = ctx.input_mut(|i| {
            (
                i.consume_key(Modifiers::COMMAND, Key::F),
                i.consume_key(Modifiers::COMMAND, Key::W),
                i.consume_key(Modifiers::COMMAND, Key::PageDown),
                i.consume_key(Modifiers::COMMAND, Key::PageUp),
            )
        });
        if find {
            self.active = None;
            self.tenants.focus_search = true;
        }
        if close && let Some(id) = self.active {
            actions.push(Action::CloseTab(id));
        }
        if next || prev {
            // The tenant list is position 0, then the tabs in order.
            let count = self.tabs.len() + 1;
            let here = self
                .active
                .and_then(|id| self.tabs.iter().position(|t| t.id == id))
                .map_or(0, |p| p + 1);
            let to = if next {
                (here + 1) % count
            } else {
                (here + count - 1) % count
            };
            self.active = if to == 0 {
                None
            } else {
                Some(self.tabs[to - 1].id)
            };
        }
    }

    fn apply(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::OpenTenant(name) => self.open_tenant(name),
                Action::CloseTab(id) => {
                    self.engine.send(Command::CloseSession { tab: id });
                    if let Some(p) = self.tabs.iter().position(|t| t.id == id) {
                        self.tabs.remove(p);
                        if self.active == Some(id) {
                            // The neighbour to the left, or the list.
                            self.active = p
                                .checked_sub(1)
                                .map(|p| self.tabs[p].id)
                                .or(self.tabs.first().map(|t| t.id));
                            if self.tabs.is_empty() {
                                self.active = None;
                            }
                        }
                    }
                }
                Action::Retry(id) => {
                    if let Some(tab) = self.tab_mut(id) {
                        tab.reset();
                        let (tenant, service) = (tab.tenant.clone(), tab.service.clone());
                        self.engine.send(Command::OpenSession {
                            tab: id,
                            tenant,
                            service,
                        });
                    }
                }
                Action::OpenDesktop(id) => self.open_desktop(id),
                Action::ForgetDesktopPin(id) => {
                    if let Some(tenant) = self.tab(id).map(|t| t.tenant.clone()) {
                        let key = self.desktop_key(&tenant);
                        self.pins_mut().remove(&key);
                        if let Some(pane) = self.tab_mut(id).and_then(|t| t.desktop.as_mut()) {
                            pane.pinned = None;
                        }
                    }
                }
                Action::ToggleFullscreen(id) => {
                    let next = if self.fullscreen == Some(id) {
                        None
                    } else {
                        Some(id)
                    };
                    self.set_fullscreen(next);
                }
                Action::ExportTenants => {
                    if self.tenant_export.is_none() {
                        self.tenant_export = Some(ExportForm::new(
                            PathPurpose::TenantCsv,
                            "tenants.csv".into(),
                        ));
                    }
                }
                Action::Export { form, contents } => match form {
                    ExportClick::Browse {
                        purpose,
                        suggested_name,
                    } => self.engine.send(Command::PickPath {
                        purpose,
                        save: true,
                        suggested_name,
                    }),
                    ExportClick::Save { purpose, path } => {
                        self.writes.insert(path.clone(), purpose);
                        self.engine.send(Command::WriteFile { path, contents });
                    }
                },
                Action::Engine(command) => self.engine.send(command),
            }
        }
    }

    /// A new tab for `name`, or the open one. Its session goes to the backup service (or the
    /// first other service); a tenant that offers a desktop gets the Desktop view too.
    fn open_tenant(&mut self, name: String) {
        if let Some(tab) = self
            .tabs
            .iter()
            .find(|t| t.tenant == name && matches!(t.state, TabState::Opening | TabState::Open))
        {
            self.active = Some(tab.id);
            return;
        }
        let backup = crate::tenant::backup::SERVICE_NAME;
        let desktop_service = crate::net::rdp::SERVICE_NAME;
        let services = self
            .tenants
            .get(&name)
            .map(|t| t.services.clone())
            .unwrap_or_default();
        let service = if services.is_empty() || services.iter().any(|s| s == backup) {
            Some(backup.to_string())
        } else {
            services.iter().find(|s| *s != desktop_service).cloned()
        };
        let desktop = services
            .iter()
            .any(|s| s == desktop_service)
            .then(|| self.desktop_pane(&name, desktop_service));
        let id = self.next_tab;
        self.next_tab += 1;
        let tab = match (service, desktop) {
            (None, Some(desktop)) => SessionTab::desktop_only(id, name.clone(), desktop),
            (service, desktop) => {
                let service = service.unwrap_or_else(|| backup.to_string());
                self.engine.send(Command::OpenSession {
                    tab: id,
                    tenant: name.clone(),
                    service: service.clone(),
                });
                let mut tab = SessionTab::new(id, name, service);
                tab.desktop = desktop;
                tab
            }
        };
        self.tabs.push(tab);
        self.active = Some(id);
    }

    fn apply_theme(&mut self, ctx: &egui::Context) {
        if self.applied_theme != Some(self.settings.theme) {
            ctx.set_theme(match self.settings.theme {
                Theme::Dark => egui::ThemePreference::Dark,
                Theme::Light => egui::ThemePreference::Light,
            });
            self.applied_theme = Some(self.settings.theme);
        }
    }

    fn top_bar_ui(&mut self, ui: &mut Ui, actions: &mut Vec<Action>) {
        ui.horizontal(|ui| {
            ui.label(RichText::new("Remote Access Console").heading().strong());
            if self.mode == Mode::Lab {
                ui.label(
                    RichText::new(" LAB ")
                        .strong()
                        .background_color(ui.visuals().warn_fg_color)
                        .color(egui::Color32::BLACK),
                )
                .on_hover_text("An embedded lab: an SP, cloud gateways and simulated tenants on this machine. Nothing here is a real customer.");
                if let Some(lab) = &self.lab {
                    ui.label(
                        RichText::new(format!(
                            "embedded SP {} · {} gateways · {} simulated tenants",
                            lab.sp,
                            lab.gateways.len(),
                            lab.tenants
                        ))
                        .weak(),
                    );
                }
            }
            ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                let (label, next) = match self.settings.theme {
                    Theme::Dark => ("Light theme", Theme::Light),
                    Theme::Light => ("Dark theme", Theme::Dark),
                };
                if ui.button(label).on_hover_text("Switch between light and dark themes").clicked() {
                    self.settings.theme = next;
                }
                if self.mode == Mode::Console
                    && matches!(self.conn, ConnState::Live { .. } | ConnState::Reconnecting(_))
                    && ui.button("Disconnect").clicked()
                {
                    actions.push(Action::Engine(Command::Disconnect));
                }
            });
        });
        ui.add_space(2.0);
        // The tab strip: the tenant list, then one tab per session.
        ui.horizontal_wrapped(|ui| {
            let list_label = format!("Tenants ({})", self.tenants.all().len());
            if ui
                .selectable_label(self.active.is_none(), list_label)
                .on_hover_text("The tenant list (Ctrl+F searches it)")
                .clicked()
            {
                self.active = None;
            }
            for tab in &self.tabs {
                ui.separator();
                if ui
                    .selectable_label(self.active == Some(tab.id), tab.title())
                    .on_hover_text(format!(
                        "Session to {} (Ctrl+PageUp/PageDown switch tabs)",
                        tab.tenant
                    ))
                    .clicked()
                {
                    self.active = Some(tab.id);
                }
                if ui
                    .small_button("×")
                    .on_hover_text(format!("Close {} (Ctrl+W)", tab.tenant))
                    .clicked()
                {
                    actions.push(Action::CloseTab(tab.id));
                }
            }
        });
    }

    fn central_ui(&mut self, ui: &mut Ui, actions: &mut Vec<Action>) {
        if let Some(id) = self.active
            && let Some(tab) = self.tabs.iter_mut().find(|t| t.id == id)
        {
            session_tab_ui(ui, tab, actions);
            return;
        }
        self.active = None;
        match (&self.conn, self.mode) {
            (ConnState::StartingLab, _) => {
                let tenants = self.lab_options.as_ref().map_or(0, |o| o.tenants);
                waiting_ui(
                    ui,
                    "Starting the lab…",
                    &format!(
                        "An SP, cloud gateways and {tenants} simulated tenants, on loopback sockets with real TLS."
                    ),
                );
                return;
            }
            (ConnState::Failed(why), Mode::Lab) => {
                ui.add_space(24.0);
                ui.vertical_centered(|ui| {
                    ui.heading("The lab could not start");
                    ui.colored_label(ui.visuals().error_fg_color, why);
                    if ui.button("Try again").clicked()
                        && let Some(options) = self.lab_options.clone()
                    {
                        actions.push(Action::Engine(Command::StartLab(Box::new(options))));
                    }
                });
                return;
            }
            (ConnState::Idle | ConnState::Failed(_), Mode::Console) => {
                if let ConnState::Failed(why) = &self.conn {
                    ui.colored_label(
                        ui.visuals().error_fg_color,
                        format!("Could not connect: {why}"),
                    );
                    ui.add_space(6.0);
                }
                let Settings {
                    profiles,
                    selected_profile,
                    ..
                } = &mut self.settings;
                connect_dialog_ui(ui, &mut self.connect, profiles, selected_profile, actions);
                return;
            }
            (ConnState::Connecting, _) if !self.tenants.received => {
                waiting_ui(
                    ui,
                    "Logging in…",
                    "Connecting to the SP and reading the tenant list.",
                );
                return;
            }
            _ => {}
        }
        if let Some(form) = &mut self.tenant_export {
            let mut open = true;
            ui.horizontal(|ui| {
                ui.label(RichText::new("Export the tenant list as CSV").strong());
                if ui
                    .small_button("×")
                    .on_hover_text("Close the export form")
                    .clicked()
                {
                    open = false;
                }
            });
            if let Some(click) = export_form_ui(ui, form) {
                actions.push(Action::Export {
                    form: click,
                    contents: self.tenants.to_csv(),
                });
            }
            ui.separator();
            if !open {
                self.tenant_export = None;
            }
        }
        tenant_list_ui(ui, &mut self.tenants, &mut self.settings.list, actions);
    }
}

fn waiting_ui(ui: &mut Ui, headline: &str, detail: &str) {
    ui.add_space(60.0);
    ui.vertical_centered(|ui| {
        ui.add(egui::Spinner::new().size(36.0));
        ui.heading(headline);
        ui.label(RichText::new(detail).weak());
    });
}

impl eframe::App for ConsoleApp {
    fn ui(&mut self, ui: &mut Ui, _frame: &mut eframe::Frame) {
        let ctx = ui.ctx().clone();
        self.drain_events(&ctx);
        self.apply_theme(&ctx);
        let mut actions = Vec::new();
        self.shortcuts(&ctx, &mut actions);

        if self.fullscreen_ui(ui, &mut actions) {
            self.apply(actions);
            return;
        }
        egui::Panel::top("top-bar").show(ui, |ui| self.top_bar_ui(ui, &mut actions));
        egui::Panel::bottom("status-bar").show(ui, |ui| {
            let online = self.tenants.online();
            let sessions_open = self
                .tabs
                .iter()
                .filter(|t| t.state == TabState::Open)
                .count();
            status_bar_ui(
                ui,
                &StatusFacts {
                    conn: &self.conn,
                    lab: self.mode == Mode::Lab,
                    tenants_online: online,
                    tenants_total: self.tenants.all().len(),
                    sessions_open,
                    notice: self.notice.as_ref(),
                },
            );
        });
        egui::CentralPanel::default().show(ui, |ui| self.central_ui(ui, &mut actions));
        self.apply(actions);

        // Ages in the list and pending list changes need a slow tick even without events.
        if self.tenants.pending() {
            ctx.request_repaint_after(Duration::from_millis(200));
        } else {
            ctx.request_repaint_after(Duration::from_secs(1));
        }
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, eframe::APP_KEY, &self.settings);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_fill_defaults_and_hold_no_secrets() {
        let settings: Settings = serde_json::from_str("{\"theme\":\"Light\"}").expect("parse");
        assert_eq!(settings.theme, Theme::Light);
        assert_eq!(settings.list, ListSettings::default());
        let mut settings = Settings::default();
        settings.profiles.push(Profile::default());
        let text = serde_json::to_string(&settings).expect("serialize");
        assert!(!text.to_lowercase().contains("password"), "{text}");
    }
}
