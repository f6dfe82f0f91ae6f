//! The console commands: how a console reaches the SP and logs in, `rac tenants`,
//! `rac connect`, and the commands that talk to a tenant's backup service through a session
//! (`rac inspect`, `rac job`). Hosting that service is `net::backup_host`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

use super::{Output, print_json, resolve};
use crate::net::console::{ConsoleClient, ConsoleConfig, ConsoleKeys};
use crate::net::dial::Route;
use crate::net::tls::Trust;
use crate::tenant::backup::{self, BackupAction, BackupClient, Inventory, SERVICE_NAME};

/// How a console reaches the SP and as whom.
#[derive(Debug, Args, Clone)]
pub struct ClientArgs {
    /// The SP address (direct route).
    #[arg(long, conflicts_with = "gateways")]
    pub sp: Option<String>,
    /// A cloud gateway address; repeat for a pool with failover.
    #[arg(long = "gateway")]
    pub gateways: Vec<String>,
    /// The SP's CA certificate (PEM).
    #[arg(long, conflicts_with = "fingerprint")]
    pub ca: Option<PathBuf>,
    /// Or: the SHA-256 fingerprint of the SP's CA or server certificate.
    #[arg(long)]
    pub fingerprint: Option<String>,
    /// The name on the SP's certificate (default: the host of the first address).
    #[arg(long)]
    pub server_name: Option<String>,
    /// Operator name. The password comes from RAC_PASSWORD, or is asked on the terminal.
    #[arg(long)]
    pub user: String,
}

#[derive(Debug, Args)]
pub struct TenantsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Forget the key this console pinned for TENANT (its server was reinstalled and the
    /// SP admin ran `rac sp tenant reset-key`); the next session pins the key presented then.
    #[arg(long, value_name = "TENANT")]
    pub forget_key: Option<String>,
    /// Print this console's key fingerprint for --user (made now if there is none yet) and
    /// exit: what a tenant lists in `operator_keys` to accept sessions from this console only.
    #[arg(long)]
    pub print_key: bool,
    #[command(flatten)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// The tenant to open.
    pub tenant: String,
    /// The tenant service to reach.
    #[arg(long)]
    pub service: String,
    /// Local address to listen on (port 0 picks one).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The tenant to open.
    pub tenant: String,
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub output: Output,
}

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Start a job now.
    Start(JobArgs),
    /// Stop a running job.
    Stop(JobArgs),
}

#[derive(Debug, Args)]
pub struct JobArgs {
    /// The tenant whose backup server runs the job.
    pub tenant: String,
    /// Job id or name.
    pub job: String,
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub output: Output,
}

impl ClientArgs {
    /// The console configuration these arguments describe.
    pub fn console_config(&self) -> Result<ConsoleConfig> {
        let route = match (&self.sp, self.gateways.is_empty()) {
            (Some(sp), true) => Route::Direct(sp.clone()),
            (None, false) => Route::Gateways(self.gateways.clone()),
            (Some(_), false) => bail!("give either --sp or --gateway, not both"),
            (None, true) => bail!("say how to reach the SP: --sp ADDR or --gateway ADDR"),
        };
        let trust = match (&self.ca, &self.fingerprint) {
            (Some(ca), _) => Trust::CaFile(ca.clone()),
            (None, Some(fp)) => Trust::Pinned(crate::wire::parse_fingerprint(fp)?),
            (None, None) => bail!("say which SP to trust: --ca FILE or --fingerprint SHA256"),
        };
        let first = route.endpoints().first().cloned().unwrap_or_default();
        let server_name = self.server_name.clone().unwrap_or_else(|| {
            crate::tenant::config::host_of(&first)
                .unwrap_or("localhost")
                .to_string()
        });
        let keys = ConsoleKeys::for_user(&self.user).context("this console's end-to-end key")?;
        Ok(ConsoleConfig {
            route,
            trust,
            server_name,
            user: self.user.clone(),
            keys,
        })
    }

    /// Builds a client and logs in (password from RAC_PASSWORD or the terminal).
    pub async fn login(&self) -> Result<Arc<ConsoleClient>> {
        let client = ConsoleClient::new(self.console_config()?)?;
        let password = password()?;
        client
            .login(&password)
            .await
            .with_context(|| format!("logging in as {}", self.user))?;
        Ok(client)
    }
}

fn password() -> Result<String> {
    if let Ok(pw) = std::env::var("RAC_PASSWORD") {
        return Ok(pw);
    }
    if std::io::stdin().is_terminal() {
        return rpassword::prompt_password("operator password: ").context("reading the password");
    }
    bail!("no password: set RAC_PASSWORD (no terminal to ask on)")
}

/// `rac tenants`: the tenant list as a table or JSON.
pub(super) async fn tenants(args: TenantsArgs) -> Result<ExitCode> {
    if args.print_key {
        let keys = ConsoleKeys::for_user(&args.client.user).context("this console's key")?;
        println!("{}", keys.identity.fingerprint_text());
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(tenant) = &args.forget_key {
        let client = ConsoleClient::new(args.client.console_config()?)?;
        let had = client
            .forget_tenant_key(tenant)
            .context("updating the pinned tenant keys")?;
        println!(
            "{}",
            if had {
                format!(
                    "forgot the key pinned for {tenant}; the next session pins the key it presents"
                )
            } else {
                format!("no key was pinned for {tenant}")
            }
        );
        return Ok(ExitCode::SUCCESS);
    }
    let client = args.client.login().await?;
    let tenants = client
        .tenants_in_full()
        .await
        .context("reading the tenant list")?;
    if args.output.json {
        print_json(&tenants)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<24} {:<9} {:<20} {:<22} {:>7} {:>5}  SERVICES",
        "NAME", "STATUS", "CONNECTED SINCE", "REMOTE ADDRESS", "RTT ms", "SESS"
    );
    for t in tenants {
        let status = match (t.status.as_str(), t.provider_access) {
            ("online", false) => "no-access",
            (s, _) => s,
        };
        println!(
            "{:<24} {:<9} {:<20} {:<22} {:>7} {:>5}  {}",
            t.name,
            status,
            t.connected_since
                .map(crate::util::format::date_time)
                .unwrap_or_else(|| "-".into()),
            t.remote_addr.as_deref().unwrap_or("-"),
            t.heartbeat_rtt_ms
                .map(|r| format!("{r:.1}"))
                .unwrap_or_else(|| "-".into()),
            t.open_sessions,
            t.services.join(",")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Checks the login and the tenant first, so a mistake is reported before anything listens.
async fn check_tenant(client: &ConsoleClient, tenant: &str, service: &str) -> Result<()> {
    let tenants = client.tenants().await.context("reading the tenant list")?;
    let Some(info) = tenants.iter().find(|t| t.name == tenant) else {
        bail!("unknown tenant {tenant:?} (or not one this operator may open)");
    };
    info.check_open(service)
        .map_err(|e| anyhow::anyhow!(e.message))
}

/// `rac connect`: prints the local address, then forwards each connection until SIGINT/SIGTERM.
pub(super) async fn connect(args: ConnectArgs) -> Result<ExitCode> {
    let client = args.client.login().await?;
    check_tenant(&client, &args.tenant, &args.service).await?;
    let addr = resolve(&args.listen).await?;
    let listener = crate::net::listen(addr).with_context(|| format!("listening on {addr}"))?;
    println!("listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    crate::net::console::forward(
        client,
        args.tenant,
        args.service,
        listener,
        crate::signal::shutdown_on_signal(),
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}

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
pub(super) async fn inspect(args: InspectArgs) -> Result<ExitCode> {
    let mut backup = backup_session(&args.client, &args.tenant).await?;
    if args.output.json {
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
pub(super) async fn job(cmd: JobCommand) -> Result<ExitCode> {
    let (args, start) = match cmd {
        JobCommand::Start(args) => (args, true),
        JobCommand::Stop(args) => (args, false),
    };
    let JobArgs {
        tenant,
        job,
        client,
        output,
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
    if output.json {
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
