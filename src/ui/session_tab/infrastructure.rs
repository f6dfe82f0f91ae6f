//! The Infrastructure view: proxies, pools, repositories and Azure regions.

use eframe::egui;

use egui::{Color32, RichText, Ui};

use crate::tenant::backup::model::{ProxyState, WorkerState};

use super::{SessionTab, backup_missing_ui};
use crate::util::format;

pub(super) fn infrastructure_ui(ui: &mut Ui, tab: &mut SessionTab) {
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
