//! The console window (egui). Built in its own issue; the commands that open it live here.

use std::process::ExitCode;

use anyhow::{Result, bail};

use crate::lab::LabOptions;

/// `rac` / `rac lab`: the window on an embedded lab.
pub fn run_lab_window(_options: LabOptions) -> Result<ExitCode> {
    bail!("the console window is not built yet; use `rac lab --headless`")
}

/// `rac console`: the window against a real SP.
pub fn run_console_window() -> Result<ExitCode> {
    bail!("the console window is not built yet; use `rac tenants` and `rac connect`")
}
