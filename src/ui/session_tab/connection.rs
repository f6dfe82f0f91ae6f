//! The Connection view: how the session runs (route, the end-to-end channel and the tenant's
//! key, TLS to the SP, the SP's certificate, bytes, round
//! trip, stages, the desktop's frames/s and bandwidth), throughput and round trip over time,
//! and local port forwards. The round trip is the tab's session's: a desktop goes the same
//! way, console to SP (or gateway) to tenant.

use eframe::egui;

use egui::{RichText, Ui};

use super::SessionTab;
use crate::ui::action::Action;
use crate::ui::engine::Command;
use crate::util::format;

pub(super) fn connection_ui(ui: &mut Ui, tab: &mut SessionTab, actions: &mut Vec<Action>) {
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
                ui.label("Encryption");
                ui.label(
                    RichText::new(format!(
                        "end-to-end encrypted with the tenant ({} · {}); the SP copies ciphertext",
                        facts.e2e.version, facts.e2e.cipher
                    ))
                    .strong(),
                );
                ui.end_row();
                ui.label("Tenant key (SHA-256)");
                ui.horizontal(|ui| {
                    ui.label(RichText::new(&facts.e2e.tenant_key).monospace().small());
                    ui.label(if facts.e2e.pinned_now {
                        "pinned now (first use)"
                    } else {
                        "matches the key pinned before"
                    });
                });
                ui.end_row();
                ui.label("TLS to the SP");
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
                ui.label(format::round_trip(last.and_then(|s| s.rtt_ms)));
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
                if let Some(pane) = &tab.desktop {
                    super::desktop::desktop_facts_ui(ui, pane);
                }
            });
    } else if let Some(pane) = &tab.desktop {
        egui::Grid::new("connection-desktop")
            .num_columns(2)
            .striped(true)
            .show(ui, |ui| super::desktop::desktop_facts_ui(ui, pane));
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
