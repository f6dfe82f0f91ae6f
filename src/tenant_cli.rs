//! Commands that talk to a tenant's backup service through a session: `rac inspect` and
//! `rac job`, and the `[backup_service]` of `rac tenant`.

use std::process::ExitCode;

use anyhow::{Result, bail};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cli::{InspectArgs, JobCommand};
use crate::net::tenant_redirector::LocalHandler;
use crate::tenant::config::BackupServiceConfig;

pub async fn inspect(_args: InspectArgs) -> Result<ExitCode> {
    bail!("not yet available")
}

pub async fn job(_cmd: JobCommand) -> Result<ExitCode> {
    bail!("not yet available")
}

pub fn backup_handler(
    _config: &BackupServiceConfig,
    _tenant: &str,
    _shutdown: &CancellationToken,
    _tracker: &TaskTracker,
) -> Result<LocalHandler> {
    bail!("not yet available")
}
