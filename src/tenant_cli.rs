//! Commands that talk to a tenant's backup service through a session (`rac inspect`,
//! `rac job`). Hosting the service is `net::backup_host`.

use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::cli::{ClientArgs, InspectArgs, JobArgs, JobCommand, check_tenant};
use crate::tenant::backup::{self, BackupAction, BackupClient, Inventory, SERVICE_NAME};

/// Opens a session to the tenant's `backup` service and says hello.
async fn backup_session(
    client: &ClientArgs,
    tenant: &str,
) -> Result<BackupClient<crate::net::tls::ClientStream>> {
    let console = client.login().await?;
    check_tenant(&console, tenant, SERVICE_NAME).await?;
    let session = console
        .open_session(tenant, SERVICE_NAME, |_, _| {})
        .await
        .with_context(|| format!("opening a session to {tenant}"))?;
    let mut backup = BackupClient::new(session.stream);
    backup
        .hello(&format!("rac/{}", crate::VERSION))
        .await
        .context("greeting the tenant's backup service")?;
    Ok(backup)
}

/// Ends the session politely (TLS close_notify), so the SP audits it as closed, not failed.
async fn close(backup: BackupClient<crate::net::tls::ClientStream>) {
    use tokio::io::AsyncWriteExt;
    let mut stream = backup.into_inner();
    let _ = stream.shutdown().await;
}

/// `rac inspect`: the tenant's backup server as JSON (the eight top-level keys) or a summary.
pub async fn inspect(args: InspectArgs) -> Result<ExitCode> {
    let mut backup = backup_session(&args.client, &args.tenant).await?;
    if args.json {
        let inventory = backup
            .inventory_json()
            .await
            .context("reading the inventory")?;
        println!("{}", serde_json::to_string(&inventory)?);
    } else {
        let inventory = backup.inventory().await.context("reading the inventory")?;
        print!("{}", backup::summary_text(&inventory));
    }
    close(backup).await;
    Ok(ExitCode::SUCCESS)
}

/// `rac job start|stop TENANT JOB`: JOB is a job id or its exact name.
pub async fn job(cmd: JobCommand) -> Result<ExitCode> {
    let (args, start) = match cmd {
        JobCommand::Start(args) => (args, true),
        JobCommand::Stop(args) => (args, false),
    };
    let JobArgs {
        tenant,
        job,
        client,
        json,
    } = args;
    let mut backup = backup_session(&client, &tenant).await?;
    let inventory = backup.inventory().await.context("reading the jobs")?;
    let id = match resolve_job(&inventory, &job) {
        Ok(id) => id,
        Err(e) => {
            close(backup).await;
            return Err(e);
        }
    };
    let action = if start {
        BackupAction::StartJob { job: id.clone() }
    } else {
        BackupAction::StopJob { job: id.clone() }
    };
    let outcome = backup.action(action).await;
    close(backup).await;
    let outcome = outcome
        .with_context(|| format!("{} job {job}", if start { "starting" } else { "stopping" }))?;
    if json {
        println!(
            "{}",
            serde_json::json!({"tenant": tenant, "job": id, "session": outcome.session})
        );
    } else if start {
        println!(
            "job {id} started on {tenant} (session {})",
            outcome.session.as_deref().unwrap_or("-")
        );
    } else {
        println!("job {id} stopping on {tenant}");
    }
    Ok(ExitCode::SUCCESS)
}

fn resolve_job(inventory: &Inventory, job: &str) -> Result<String> {
    if let Some(found) = inventory
        .jobs
        .iter()
        .find(|j| j.id == job)
        .or_else(|| inventory.jobs.iter().find(|j| j.name == job))
    {
        return Ok(found.id.clone());
    }
    let known: Vec<&str> = inventory
        .jobs
        .iter()
        .take(10)
        .map(|j| j.id.as_str())
        .collect();
    anyhow::bail!(
        "no job {job:?} on this server (ids look like: {}{})",
        known.join(", "),
        if inventory.jobs.len() > 10 {
            ", …"
        } else {
            ""
        }
    )
}
