//! The status bar: the SP connection, how many tenants are online, open sessions, and the
//! last thing that happened.

use eframe::egui;
use egui::{Color32, RichText, Ui};

use super::engine::ConnState;

/// What the status bar shows; filled by the app each frame.
pub struct StatusFacts<'a> {
    pub conn: &'a ConnState,
    pub lab: bool,
    pub tenants_online: usize,
    pub tenants_total: usize,
    pub sessions_open: usize,
    pub notice: Option<&'a (String, bool)>,
}

/// The connection state in words, with its colour.
pub fn conn_words(ui: &Ui, conn: &ConnState) -> (Color32, String) {
    let ok = Color32::from_rgb(60, 170, 80);
    match conn {
        ConnState::Idle => (ui.visuals().weak_text_color(), "not connected".into()),
        ConnState::StartingLab => (ui.visuals().warn_fg_color, "starting the lab…".into()),
        ConnState::Connecting => (ui.visuals().warn_fg_color, "connecting to the SP…".into()),
        ConnState::Live { user, endpoint } => (ok, format!("connected to {endpoint} as {user}")),
        ConnState::Reconnecting(why) => {
            (ui.visuals().warn_fg_color, format!("reconnecting ({why})"))
        }
        ConnState::Failed(why) => (ui.visuals().error_fg_color, format!("not connected: {why}")),
    }
}

pub fn status_bar_ui(ui: &mut Ui, facts: &StatusFacts<'_>) {
    ui.horizontal(|ui| {
        if facts.lab {
            ui.label(
                RichText::new(" LAB ")
                    .strong()
                    .background_color(ui.visuals().warn_fg_color)
                    .color(Color32::BLACK),
            );
        }
        let (color, words) = conn_words(ui, facts.conn);
        super::widgets::dot_ui(ui, color, true);
        ui.label(words);
        ui.separator();
        ui.label(format!(
            "{} of {} tenants online",
            facts.tenants_online, facts.tenants_total
        ));
        ui.separator();
        ui.label(format!(
            "{} session{} open",
            facts.sessions_open,
            if facts.sessions_open == 1 { "" } else { "s" }
        ));
        if let Some((text, failed)) = facts.notice {
            ui.separator();
            let color = if *failed {
                ui.visuals().error_fg_color
            } else {
                ui.visuals().weak_text_color()
            };
            ui.colored_label(color, text);
        }
    });
}
