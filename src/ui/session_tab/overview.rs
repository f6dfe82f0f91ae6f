//! The Overview view: the backup server at a glance, and its alarms.

use eframe::egui;

use egui::{RichText, Ui};

use crate::tenant::backup::model::RunState;

use super::{SessionTab, backup_missing_ui, severity_color};
use crate::util::format;

pub(super) fn overview_ui(ui: &mut Ui, tab: &mut SessionTab) {
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
                .filter(|r| r.state == RunState::Running)
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
