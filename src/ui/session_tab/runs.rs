//! The Sessions view, as the backup product names it: its job runs, the selected run's log,
//! and saving this console session's activity with that log.

use eframe::egui;

use egui::{RichText, Ui};
use egui_extras::{Column, TableBuilder};

use super::{SessionTab, backup_missing_ui, severity_color};
use crate::ui::action::Action;
use crate::ui::export::export_form_ui;
use crate::util::format;

pub(super) fn runs_ui(ui: &mut Ui, tab: &mut SessionTab, actions: &mut Vec<Action>) {
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
