//! The frame of a tab: its header, then by state the opening stages, the failure, or the view
//! switcher over the five views; and the confirmation a stop asks for.

use eframe::egui;

use egui::{Color32, RichText, Ui};

use super::{SessionTab, TabState, View};
use super::{connection, desktop, infrastructure, jobs, opening, overview, runs};
use crate::ui::action::Action;
use crate::ui::engine::{BackupRequest, Command};

pub fn session_tab_ui(ui: &mut Ui, tab: &mut SessionTab, actions: &mut Vec<Action>) {
    header_ui(ui, tab, actions);
    ui.separator();
    match tab.state.clone() {
        TabState::Opening => {
            opening::stages_ui(ui, tab, true);
        }
        TabState::Failed { code, reason } => {
            opening::failure_ui(ui, tab, code, &reason, actions);
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
            let views: Vec<_> = tab.views().collect();
            ui.horizontal(|ui| {
                for (i, (view, name)) in views.iter().copied().enumerate() {
                    if ui
                        .selectable_label(tab.view == view, name)
                        .on_hover_text(format!("Alt+{}", i + 1))
                        .clicked()
                    {
                        tab.view = view;
                    }
                }
            });
            // Alt+1..6 switch views (not while the desktop has the keyboard: they are its keys).
            let keys = [
                egui::Key::Num1,
                egui::Key::Num2,
                egui::Key::Num3,
                egui::Key::Num4,
                egui::Key::Num5,
                egui::Key::Num6,
            ];
            for (key, (view, _)) in keys.into_iter().zip(views) {
                if !tab.desktop_has_keyboard()
                    && ui.input_mut(|i| i.consume_key(egui::Modifiers::ALT, key))
                {
                    tab.view = view;
                }
            }
            ui.separator();
            if tab.view == View::Desktop {
                // No scroll area: the picture fits the tab, and the wheel is the desktop's.
                desktop::desktop_ui(ui, tab, actions);
                confirm_ui(ui, tab, actions);
                return;
            }
            egui::ScrollArea::vertical()
                .id_salt(("session-view", tab.id))
                .auto_shrink(false)
                .show(ui, |ui| match tab.view {
                    View::Overview => overview::overview_ui(ui, tab),
                    View::Infrastructure => infrastructure::infrastructure_ui(ui, tab),
                    View::Jobs => jobs::jobs_ui(ui, tab, actions),
                    View::Runs => runs::runs_ui(ui, tab, actions),
                    View::Connection => connection::connection_ui(ui, tab, actions),
                    View::Desktop => {}
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
        crate::ui::widgets::dot_ui(ui, color, true);
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
