//! `rac gateway`: a cloud gateway that forwards TCP to the SP ports (TLS passes through).

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use super::resolve;

#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// Address to listen on.
    #[arg(long)]
    pub listen: String,
    /// An SP port to forward to; repeat for several.
    #[arg(long = "backend", required = true)]
    pub backends: Vec<String>,
    /// Prefix each forwarded connection with a PROXY protocol v2 header (the real client address).
    #[arg(long)]
    pub proxy_protocol: bool,
    /// Most connections forwarded at once.
    #[arg(long, default_value_t = 4096)]
    pub max_connections: usize,
    /// Close a connection idle this many seconds (keep it above the SP's dead-peer limit).
    #[arg(long, default_value_t = crate::net::gateway::DEFAULT_IDLE_TIMEOUT_SECS)]
    pub idle_timeout_secs: u64,
    /// Close a client that has sent nothing this many seconds after connecting.
    #[arg(long, default_value_t = crate::net::gateway::DEFAULT_FIRST_DATA_TIMEOUT_SECS)]
    pub first_data_timeout_secs: u64,
    /// Most connections one source (IPv4 address or IPv6 /64) may hold without having sent
    /// data; one more closes that source's oldest silent connection.
    #[arg(long, default_value_t = crate::net::gateway::DEFAULT_MAX_SILENT_PER_SOURCE)]
    pub max_silent_per_source: usize,
    /// On SIGTERM, let open connections finish for this many seconds.
    #[arg(long, default_value_t = 30)]
    pub drain_timeout_secs: u64,
    /// Serve /metrics and /healthz here (host:port, or a port on 127.0.0.1).
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<String>,
}

/// Resolves the addresses, checks the limits, serves until SIGINT/SIGTERM and drains;
/// SIGHUP is logged and ignored.
pub(super) async fn run(args: GatewayArgs) -> Result<ExitCode> {
    let mut backends = Vec::new();
    for b in &args.backends {
        backends.push(resolve(b).await?);
    }
    let mut config = crate::net::gateway::GatewayConfig::new(backends);
    config.proxy_protocol = args.proxy_protocol;
    config.max_connections = args.max_connections;
    config.idle_timeout = std::time::Duration::from_secs(args.idle_timeout_secs);
    config.first_data_timeout = std::time::Duration::from_secs(args.first_data_timeout_secs);
    config.max_silent_per_source = args.max_silent_per_source;
    config.drain_timeout = std::time::Duration::from_secs(args.drain_timeout_secs);
    config.validate()?;
    let shutdown = crate::signal::shutdown_on_signal();
    // Its settings are its command line, which a reload cannot change; watched so that a
    // SIGHUP (a closed terminal, a `systemctl reload`) does not end the gateway.
    crate::signal::on_hangup(shutdown.clone(), || {
        tracing::info!(
            "SIGHUP ignored: a gateway's settings are its command line; restart it to change them"
        );
    })
    .context("watching SIGHUP")?;
    let addr = resolve(&args.listen).await?;
    let listener = crate::net::listen(addr).with_context(|| format!("listening on {addr}"))?;
    eprintln!("gateway listening on {}", listener.local_addr()?);
    let stats = std::sync::Arc::new(crate::net::gateway::GatewayStats::default());
    let admin_stop = tokio_util::sync::CancellationToken::new();
    let _admin = match &args.admin {
        Some(admin) => {
            let addr = crate::sp::config::parse_admin_listen(admin)?;
            let admin_listener = crate::net::admin::bind(addr, false).await?;
            eprintln!(
                "gateway admin listening on {}",
                admin_listener.local_addr()?
            );
            let stats = stats.clone();
            let router =
                crate::net::admin::probe_router(move || crate::net::admin::gateway_metrics(&stats));
            Some(tokio::spawn(crate::net::admin::serve(
                router,
                admin_listener,
                admin_stop.clone(),
            )))
        }
        None => None,
    };
    let served = crate::net::gateway::run_with_stats(config, listener, shutdown, stats).await;
    admin_stop.cancel();
    served?;
    Ok(ExitCode::SUCCESS)
}
