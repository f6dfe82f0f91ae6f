//! The console window (egui): the tenant list, sessions by click, and the lab as the default.
//! The UI thread never waits on the network: panels turn clicks into commands for the
//! engine's tokio tasks ([`engine`]), whose events the app ([`app`]) applies each frame.

use eframe::egui;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow};

use crate::lab::LabOptions;

pub mod action;
pub mod app;
pub mod connect_dialog;
pub mod engine;
pub mod export;
pub mod session_tab;
pub mod status_bar;
pub mod tenant_list;
pub mod widgets;

pub use app::ConsoleApp;

pub const ICON_PNG: &[u8] = include_bytes!("../../assets/icon.png");

/// `rac` / `rac lab`: the window on an embedded lab.
pub fn run_lab_window(options: LabOptions) -> Result<ExitCode> {
    let runtime = engine::build_runtime()?;
    let handle = runtime.handle().clone();
    let result = eframe::run_native(
        "rac",
        native_options("Remote Access Console — lab"),
        Box::new(move |cc| Ok(Box::new(ConsoleApp::lab(cc, &handle, options)))),
    );
    runtime.shutdown_timeout(Duration::from_secs(5));
    result.map_err(window_error)?;
    Ok(ExitCode::SUCCESS)
}

/// The window could not open: say so, and what works without a display.
fn window_error(e: eframe::Error) -> anyhow::Error {
    anyhow!(
        "the console window failed: {e}\n(no display? `rac lab --headless` runs the lab without \
         a window; `rac tenants`, `rac connect` and `rac inspect` work from a terminal)"
    )
}

/// `rac console`: the window against a real SP.
pub fn run_console_window() -> Result<ExitCode> {
    let runtime = engine::build_runtime()?;
    let handle = runtime.handle().clone();
    let result = eframe::run_native(
        "rac",
        native_options("Remote Access Console"),
        Box::new(move |cc| Ok(Box::new(ConsoleApp::console(cc, &handle)))),
    );
    runtime.shutdown_timeout(Duration::from_secs(5));
    result.map_err(window_error)?;
    Ok(ExitCode::SUCCESS)
}

/// Window options: size, icon, and settings stored in the platform config directory.
fn native_options(title: &str) -> eframe::NativeOptions {
    let mut viewport = egui::ViewportBuilder::default()
        .with_title(title)
        .with_app_id("rac")
        .with_inner_size([1280.0, 800.0])
        .with_min_inner_size([720.0, 420.0]);
    match eframe::icon_data::from_png_bytes(ICON_PNG) {
        Ok(icon) => viewport = viewport.with_icon(Arc::new(icon)),
        Err(e) => tracing::warn!("window icon not loaded: {e}"),
    }
    eframe::NativeOptions {
        viewport,
        persistence_path: settings_path(),
        ..Default::default()
    }
}

/// `<config dir>/rac/console.ron` (e.g. `~/.config/rac/console.ron` on Linux).
pub fn settings_path() -> Option<std::path::PathBuf> {
    crate::util::config_dir().map(|d| d.join("console.ron"))
}
