//! A tab before it is open: each stage of steps 5–8 with its time, and when the SP or the
//! tenant refuses, the reason in words, what the operator can do about it, and Retry.

use eframe::egui;
use std::time::Duration;

use egui::{Color32, RichText, Ui};

use crate::net::console::OpenStage;
use crate::wire::protocol::ErrorCode;

use super::SessionTab;
use crate::ui::action::Action;
use crate::util::format;

pub(super) fn stages_ui(ui: &mut Ui, tab: &SessionTab, opening: bool) {
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
                            crate::ui::widgets::dot_ui(ui, Color32::from_rgb(60, 170, 80), true);
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
                            crate::ui::widgets::dot_ui(ui, weak, false);
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
        Some(ErrorCode::TenantKeyChanged) => {
            "The tenant's server presented another key than the one this console pinned. Someone may be between you and the tenant. Only if you know its server was reinstalled (ask the tenant), forget the pinned key and retry."
        }
        Some(ErrorCode::GrantRefused) => {
            "The tenant checked the SP's permission for this session and refused it (see the reason above); its redirector's log says more."
        }
        Some(ErrorCode::ConsoleKeyMissing) => {
            "Log out and in again: the login registers this console's key."
        }
        _ => "",
    }
}

pub(super) fn failure_ui(
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
    if code == Some(ErrorCode::TenantKeyChanged)
        && ui
            .button("Forget the pinned key and retry")
            .on_hover_text("Pin the key the tenant presents now")
            .clicked()
    {
        actions.push(Action::Engine(
            crate::ui::engine::Command::ForgetTenantKey {
                tenant: tab.tenant.clone(),
            },
        ));
        actions.push(Action::Retry(tab.id));
    }
    ui.add_space(12.0);
    stages_ui(ui, tab, false);
}
