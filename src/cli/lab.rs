//! `rac lab --headless`: the embedded lab without a window, for scripts and tests.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use crate::lab::{Lab, LabOptions};

#[derive(Debug, Args)]
pub struct LabArgs {
    /// Simulated tenants.
    #[arg(long, default_value_t = 12)]
    pub tenants: usize,
    /// No window: print one JSON line when every tenant is online, then run until SIGINT/SIGTERM.
    #[arg(long)]
    pub headless: bool,
}

/// Prints the lab's ready line once every tenant is online, then runs until SIGINT/SIGTERM.
pub(super) async fn headless(args: LabArgs) -> Result<ExitCode> {
    let shutdown = crate::signal::shutdown_on_signal();
    let lab = Lab::start(LabOptions {
        tenants: args.tenants,
        ..LabOptions::default()
    })
    .await?;
    println!("{}", lab.ready_line());
    std::io::stdout().flush()?;
    shutdown.cancelled().await;
    lab.stop().await;
    Ok(ExitCode::SUCCESS)
}
