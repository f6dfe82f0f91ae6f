//! Commands that talk to a tenant's backup service through a session (`rac inspect`,
//! `rac job`), and hosting that service inside `rac tenant` (`[backup_service]`) or the lab.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cli::{ClientArgs, InspectArgs, JobArgs, JobCommand, check_tenant};
use crate::net::tenant_redirector::LocalHandler;
use crate::sp::registry::now_secs;
use crate::tenant::backup::{
    self, Action, BackupClient, BackupService, Inventory, SERVICE_NAME, ServiceConfig, Store,
};
use crate::tenant::config::BackupServiceConfig;

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
        Action::StartJob { job: id.clone() }
    } else {
        Action::StopJob { job: id.clone() }
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

/// Opens a backup service on its state file, starts its simulation on `tracker`, and returns
/// the handler the tenant redirector calls for each session.
pub fn host_backup_service(
    store: Store,
    config: ServiceConfig,
    fresh: impl FnOnce() -> Inventory,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) -> Result<LocalHandler> {
    let path = store.path().display().to_string();
    let service = BackupService::open(store, config, fresh)
        .with_context(|| format!("opening the backup service state {path}"))?;
    tracker.spawn(backup::service::simulate(service.clone(), shutdown.clone()));
    Ok(handler(service))
}

/// Serves each session's stream with `service`.
pub fn handler(service: Arc<BackupService>) -> LocalHandler {
    Arc::new(move |mut stream| {
        let service = service.clone();
        Box::pin(async move {
            if let Err(e) = backup::serve_connection(service, &mut stream).await {
                tracing::debug!("backup session ended: {e:#}");
            }
            // Close our side cleanly so the SP records a clean end.
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
        })
    })
}

/// `[backup_service]` of `rac tenant`.
pub fn backup_handler(
    config: &BackupServiceConfig,
    tenant: &str,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) -> Result<LocalHandler> {
    let name = tenant.to_string();
    let seed = config.demo_seed;
    host_backup_service(
        Store::new(&config.state_file),
        ServiceConfig::default(),
        move || match seed {
            Some(seed) => backup::generate(seed, &name, now_secs()),
            None => Inventory::empty(&name, now_secs()),
        },
        shutdown,
        tracker,
    )
}
