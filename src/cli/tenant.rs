//! `rac tenant`: run the tenant redirector from its config file, hosting the backup service
//! when the file names one, and re-read the provider-access consent on SIGHUP.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

/// `rac tenant --help`: what the SP can and cannot make this side do, and how to withdraw
/// consent while it runs.
pub(super) const TENANT_LONG_HELP: &str = "Run the tenant redirector from its config file.

It keeps one control connection to the SP open and, for each session the SP announces, opens a
data connection and connects it to a local service named in [services]; it listens on no port.

Limits on what the SP can make it do:
  - at most max_sessions sessions at once (default 64); further requests are refused with
    `busy` (\"the tenant redirector ... is at its session cap\");
  - nothing is opened without the SP's grant for that very session: signed by the SP's grant
    key (pinned on first contact in <config>.sp-grant-key), for this tenant and service, not
    expired, never used before; with operator_keys set (the tenant lock), only for a console
    key listed there;
  - every session is end-to-end encrypted with the console key the grant names (this side's
    key: <config>.key.pem, made on first start; --print-key shows its fingerprint): the SP
    copies ciphertext;
  - a local service is connected only after the SP has answered `ready` on the data connection
    and the console's end-to-end handshake succeeded;
  - a gateway pool the SP pushes is used only if it has at most 16 entries, each a plain
    host:port (port 1-65535, at most 255 bytes, no path or space); otherwise it is logged and
    ignored as a whole. A pushed gateway that fails every dial for a day is forgotten; with
    follow_gateway_pool = false the tenant dials only its own endpoints.

Withdrawing consent: set allow_provider_access = false in the config file and send the process
SIGHUP (kill -HUP PID). It re-reads the file, ends the sessions open now, refuses new ones
with provider_access_disabled, and reports the new consent to the SP in a status frame.
Setting it back to true and sending SIGHUP again allows sessions again. Other keys take
effect at the next start; a file that no longer loads is reported and ignored.

Stopping: on SIGTERM or Ctrl-C it closes the control connection at once and lets the sessions
open then run for up to 30 seconds; those still open after that are cut.";

#[derive(Debug, Args)]
pub struct TenantArgs {
    /// The tenant's TOML config.
    #[arg(long)]
    pub config: PathBuf,
    /// Print this tenant's key fingerprint (made now if there is none yet) and exit: what
    /// `rac sp tenant add --tenant-key` takes, and what consoles pin.
    #[arg(long)]
    pub print_key: bool,
}

/// Runs the redirector (and the backup service it hosts) until SIGINT/SIGTERM.
pub(super) async fn run(args: TenantArgs) -> Result<ExitCode> {
    let file = crate::tenant::config::TenantConfig::load(&args.config)?;
    if args.print_key {
        let path = file.key_file.clone().unwrap_or_default();
        let key = crate::net::tls::e2e::Identity::load_or_create(&path)?;
        println!("{}", key.fingerprint_text());
        return Ok(ExitCode::SUCCESS);
    }
    let mut config =
        crate::net::tenant_redirector::RedirectorConfig::from_file(&file, &args.config)?;
    let shutdown = crate::signal::shutdown_on_signal();
    let tracker = tokio_util::task::TaskTracker::new();
    if let Some(backup) = &file.backup_service {
        let handler =
            crate::net::backup_host::backup_handler(backup, &file.name, &shutdown, &tracker)?;
        config.services.insert(
            crate::tenant::backup::SERVICE_NAME.to_string(),
            crate::net::tenant_redirector::ServiceTarget::Local(handler),
        );
    }
    eprintln!(
        "tenant {} offering {} via {}",
        config.tenant,
        config
            .services
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(", "),
        config.endpoints.join(", ")
    );
    let (consent, consent_rx) = tokio::sync::watch::channel(config.allow_provider_access);
    // Watched from here, before the redirector connects: a SIGHUP that arrives early must
    // not meet the default action (which ends the process).
    #[cfg(unix)]
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("watching SIGHUP")?;
    #[cfg(not(unix))]
    let hup = ();
    tracker.spawn(reload_consent_on_sighup(
        args.config.clone(),
        hup,
        consent,
        shutdown.clone(),
    ));
    let (state, state_rx) =
        tokio::sync::watch::channel(crate::net::tenant_redirector::AgentState::Connecting);
    if let Some(admin) = &file.admin {
        let addr = crate::sp::config::parse_admin_listen(&admin.listen)?;
        let admin_listener = crate::net::admin::bind(addr, false).await?;
        eprintln!("tenant admin listening on {}", admin_listener.local_addr()?);
        let figures = std::sync::Arc::new(crate::net::admin::TenantFigures::default());
        tracker.spawn(figures.clone().follow(state_rx, shutdown.clone()));
        let consent = consent_rx.clone();
        let sessions = config.metrics.clone();
        let router =
            crate::net::admin::probe_router(move || figures.render(*consent.borrow(), &sessions));
        let stop = shutdown.clone();
        tracker.spawn(async move {
            if let Err(e) = crate::net::admin::serve(router, admin_listener, stop).await {
                tracing::error!("admin listener: {e:#}");
            }
        });
    }
    crate::net::tenant_redirector::run_with_consent(config, shutdown, state, consent_rx).await?;
    tracker.close();
    tracker.wait().await;
    Ok(ExitCode::SUCCESS)
}

/// `rac tenant`: on each SIGHUP, re-reads the config file and applies its
/// `allow_provider_access` (withdrawing it ends the open sessions and tells the SP). Other
/// keys take effect at the next start; a file that no longer loads is reported and ignored.
async fn reload_consent_on_sighup(
    path: PathBuf,
    #[cfg(unix)] mut hup: tokio::signal::unix::Signal,
    #[cfg(not(unix))] hup: (),
    consent: tokio::sync::watch::Sender<bool>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    #[cfg(unix)]
    {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                got = hup.recv() => if got.is_none() { return },
            }
            match crate::tenant::config::TenantConfig::load(&path) {
                Ok(file) => {
                    let allowed = file.allow_provider_access;
                    let changed = consent.send_if_modified(|now| {
                        let changed = *now != allowed;
                        *now = allowed;
                        changed
                    });
                    tracing::info!(
                        allow_provider_access = allowed,
                        changed,
                        "SIGHUP: re-read {} (only allow_provider_access applies while running)",
                        path.display()
                    );
                }
                Err(e) => tracing::error!("SIGHUP: keeping the current settings: {e:#}"),
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (path, hup, consent);
        shutdown.cancelled().await;
    }
}
