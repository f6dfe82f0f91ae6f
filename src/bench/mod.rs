//! `rac bench`: the relay's speed, cost and scale, each beside the direct loopback figure.

use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;

/// Options of `rac bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Print the results as one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn run(_args: BenchArgs) -> Result<ExitCode> {
    bail!("the benchmark suite is being written")
}
