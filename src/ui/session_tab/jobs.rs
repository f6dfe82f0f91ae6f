//! The Jobs view: each job with its schedule, last result and progress, and Start, Stop,
//! Enable and Disable (a stop asks first).

use eframe::egui;

use egui::{RichText, Ui};

use crate::tenant::backup::BackupAction;
use crate::tenant::backup::model::{JobResult, Schedule};

use super::{Confirm, SessionTab, backup_missing_ui};
use crate::ui::action::Action;
use crate::ui::engine::{BackupRequest, Command};
use crate::util::format;

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

pub(super) fn jobs_ui(ui: &mut Ui, tab: &mut SessionTab, actions: &mut Vec<Action>) {
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
        let now = crate::util::now_unix_secs();
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
