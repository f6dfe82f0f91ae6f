//! The window's side of remote desktops: where a tenant's desktop login and certificate pin
//! are kept (per SP; pins of the lab only in memory), opening a tab's desktop, and full
//! screen.

use eframe::egui;
use std::collections::BTreeMap;

use egui::{RichText, Ui};

use super::{ConsoleApp, DesktopLoginName, Mode};
use crate::ui::action::Action;
use crate::ui::engine::{Command, DesktopRequest, TabId};
use crate::ui::session_tab::DesktopPane;
use crate::ui::session_tab::desktop::picture_ui;

impl ConsoleApp {
    /// Where a tenant's desktop login and pin are kept: per SP, since two SPs may each
    /// have a tenant of that name.
    pub(super) fn desktop_key(&self, tenant: &str) -> String {
        let sp = match (self.mode, &self.lab) {
            (Mode::Lab, Some(lab)) => lab.sp.clone(),
            _ => self
                .settings
                .profiles
                .get(self.settings.selected_profile)
                .map(|p| p.sp_address.clone())
                .unwrap_or_default(),
        };
        format!("{sp}/{tenant}")
    }

    pub(super) fn pins_mut(&mut self) -> &mut BTreeMap<String, String> {
        match self.mode {
            Mode::Lab => &mut self.lab_pins,
            Mode::Console => &mut self.settings.desktop_pins,
        }
    }

    pub(super) fn desktop_pane(&mut self, tenant: &str, service: &str) -> DesktopPane {
        let key = self.desktop_key(tenant);
        let mut login = self
            .settings
            .desktop_logins
            .get(&key)
            .cloned()
            .unwrap_or_default();
        // The lab's desktops let anyone in: a name is filled in, so one click connects.
        if self.mode == Mode::Lab && login.user.is_empty() {
            login.user = "operator".into();
        }
        let mut pane = DesktopPane::new(service.to_string(), login.user, login.domain);
        pane.pinned = self
            .pins_mut()
            .get(&key)
            .and_then(|pin| crate::wire::parse_fingerprint(pin).ok());
        pane
    }

    /// Sends the tab's desktop login to the engine and remembers the user name.
    pub(super) fn open_desktop(&mut self, id: TabId) {
        let Some(tenant) = self.tab(id).map(|t| t.tenant.clone()) else {
            return;
        };
        let key = self.desktop_key(&tenant);
        let pin = self
            .pins_mut()
            .get(&key)
            .and_then(|pin| crate::wire::parse_fingerprint(pin).ok());
        let Some(pane) = self.tab_mut(id).and_then(|t| t.desktop.as_mut()) else {
            return;
        };
        let user = pane.user.trim().to_string();
        let domain = pane.domain.trim().to_string();
        pane.pinned = pin;
        pane.state = crate::ui::session_tab::DesktopState::Connecting("starting".into());
        let request = DesktopRequest {
            tenant,
            service: pane.service.clone(),
            login: crate::net::rdp::client::DesktopLogin {
                user: user.clone(),
                domain: (!domain.is_empty()).then(|| domain.clone()),
                password: pane.password.clone(),
            },
            pin,
            width: pane.view_size.0,
            height: pane.view_size.1,
            screen: pane.screen.clone(),
        };
        self.settings
            .desktop_logins
            .insert(key, DesktopLoginName { user, domain });
        self.engine.send(Command::OpenDesktop { tab: id, request });
    }

    pub(super) fn set_fullscreen(&mut self, tab: Option<TabId>) {
        self.fullscreen = tab;
        if let Some(id) = tab {
            self.active = Some(id);
        }
        self.ctx
            .send_viewport_cmd(egui::ViewportCommand::Fullscreen(tab.is_some()));
    }

    /// Full screen: the one desktop, nothing else, and a way back. `false` when not in
    /// full screen (or its tab is gone).
    pub(super) fn fullscreen_ui(&mut self, ui: &mut Ui, actions: &mut Vec<Action>) -> bool {
        let Some(id) = self.fullscreen else {
            return false;
        };
        let Some(tab) = self.tabs.iter_mut().find(|t| t.id == id) else {
            self.set_fullscreen(None);
            return false;
        };
        let Some(pane) = tab.desktop.as_mut().filter(|d| d.is_live()) else {
            self.set_fullscreen(None);
            return false;
        };
        egui::CentralPanel::default()
            .frame(egui::Frame::NONE.fill(egui::Color32::BLACK))
            .show(ui, |ui| {
                ui.horizontal(|ui| {
                    if ui
                        .small_button("Exit full screen")
                        .on_hover_text("Or Ctrl+Alt+Enter while the desktop has the keyboard")
                        .clicked()
                    {
                        actions.push(Action::ToggleFullscreen(id));
                    }
                    ui.label(
                        RichText::new(format!(
                            "{} · {}",
                            tab.tenant,
                            if pane.grabbed {
                                "Right Ctrl releases the keyboard"
                            } else {
                                "click the picture to type into the desktop"
                            }
                        ))
                        .weak()
                        .small(),
                    );
                });
                let mut input = Vec::new();
                picture_ui(ui, id, pane, actions, &mut input);
                if !input.is_empty() {
                    actions.push(Action::Engine(Command::DesktopInput { tab: id, input }));
                }
            });
        true
    }
}
