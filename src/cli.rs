//! The command line: the scripting contract of DESIGN.md. Each command parses its arguments,
//! builds what it needs and calls the same library functions the lab and the tests call.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};

use crate::lab::{Lab, LabOptions};
use crate::net::console::{ConsoleClient, ConsoleConfig};
use crate::net::dial::Route;
use crate::net::tls::Trust;
use crate::sp::config::StateDir;
use crate::sp::registry::Registry;

pub mod desktop;

#[derive(Debug, Parser)]
#[command(
    name = "rac",
    version,
    about = "Remote Access Console: open a tenant's backup server behind NAT through the SP",
    long_about = "Remote Access Console: an SP operator opens a tenant's backup server, which sits \
behind NAT with no inbound port, through the SP's cloud redirector.\n\nWith no command, opens the \
console window on an embedded lab (SP, gateways and simulated tenants in this process)."
)]
pub struct Cli {
    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The embedded lab: SP, gateways and simulated tenants in one process.
    Lab(LabArgs),
    /// Run and administer the SP (backup service + cloud redirector).
    #[command(subcommand)]
    Sp(SpCommand),
    /// Run a cloud gateway: forward TCP to the SP port (TLS passes through).
    ///
    /// Each client connection is forwarded to the healthy backend with the fewest open
    /// connections. A client must send its first bytes within --first-data-timeout-secs, and
    /// one source address (an IPv6 /64 counts as one) may hold at most
    /// --max-silent-per-source connections that have sent nothing yet; a newer one closes that
    /// source's oldest.
    ///
    /// Only the gateway may put a PROXY protocol header in front of a stream: a client
    /// connection that begins with one (the v2 signature or v1 "PROXY ") is closed, so a
    /// client cannot forge the source address the SP sees. List this gateway in the SP's
    /// trusted_proxies only if it runs with --proxy-protocol.
    Gateway(GatewayArgs),
    /// Run the tenant redirector from its config file.
    #[command(long_about = TENANT_LONG_HELP)]
    Tenant(TenantArgs),
    /// Log in and print the tenant list.
    Tenants(TenantsArgs),
    /// Forward a local port to a tenant service; each local connection gets its own session.
    Connect(ConnectArgs),
    /// Print a tenant's backup server (through a session to its `backup` service).
    Inspect(InspectArgs),
    /// Start or stop a job on a tenant's backup server (through a session).
    #[command(subcommand)]
    Job(JobCommand),
    /// Open a tenant's remote desktop headless: type, take a screenshot (PNG).
    Desktop(desktop::DesktopArgs),
    /// The console window, against a real SP (connection profiles).
    Console,
    /// Measure throughput, session-open latency and idle-tenant cost against direct loopback.
    Bench(crate::bench::BenchArgs),
}

#[derive(Debug, Args)]
pub struct LabArgs {
    /// Simulated tenants.
    #[arg(long, default_value_t = 12)]
    pub tenants: usize,
    /// No window: print one JSON line when every tenant is online, then run until SIGINT/SIGTERM.
    #[arg(long)]
    pub headless: bool,
}

#[derive(Debug, Subcommand)]
pub enum SpCommand {
    /// Create a state dir: CA, server certificate, registry, one operator (password printed once).
    Init {
        #[arg(long)]
        state_dir: PathBuf,
        /// The first operator's name.
        #[arg(long, default_value = "admin")]
        operator: String,
        /// Extra names or addresses for the server certificate (localhost and 127.0.0.1 are always in).
        #[arg(long = "san")]
        sans: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Manage tenant accounts (works while the SP runs).
    #[command(subcommand)]
    Tenant(SpTenantCommand),
    /// Manage operator accounts.
    #[command(subcommand)]
    Operator(SpOperatorCommand),
    /// Print the audit log of console sessions, newest first.
    Audit {
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Serve the SP port.
    Run {
        #[arg(long)]
        state_dir: PathBuf,
        /// Address to listen on (host:port, or a port for all interfaces).
        #[arg(long, default_value = "0.0.0.0:6180")]
        listen: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum SpTenantCommand {
    /// Add a tenant; prints its secret once.
    Add {
        name: String,
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long, default_value = "")]
        description: String,
        #[arg(long)]
        json: bool,
    },
    /// List tenant accounts.
    List {
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Disable a tenant: its connection and sessions end, it cannot reconnect.
    Disable {
        name: String,
        #[arg(long)]
        state_dir: PathBuf,
    },
    Enable {
        name: String,
        #[arg(long)]
        state_dir: PathBuf,
    },
    /// Remove a tenant account.
    Remove {
        name: String,
        #[arg(long)]
        state_dir: PathBuf,
    },
    /// Issue a new secret (printed once); the old one stops working at once.
    RotateSecret {
        name: String,
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum SpOperatorCommand {
    /// Add an operator; prints a generated password once.
    Add {
        name: String,
        #[arg(long)]
        state_dir: PathBuf,
        /// Tenants this operator may open: `*` or a comma-separated list.
        #[arg(long, default_value = "*")]
        tenants: String,
        #[arg(long)]
        json: bool,
    },
    /// List operators.
    List {
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Revoke every session token of an operator.
    #[command(
        long_about = "Revoke every session token of an operator (a stolen laptop). A running SP \
ends the sessions and tenant feeds opened with them within one registry poll; the password still \
works. Written to the audit log."
    )]
    Revoke {
        name: String,
        #[arg(long)]
        state_dir: PathBuf,
    },
    /// Set a new password for an operator; ends all their tokens, sessions and feeds.
    #[command(
        long_about = "Set a new password for an operator (a leaked password). The new \
password comes from the RAC_PASSWORD environment variable, else is asked twice on the terminal \
(no echo; an empty answer generates one), else (no terminal) is generated and printed once. A \
password you choose must be at least 12 characters.\n\nThe old password stops working at once. \
Every session token of the operator is revoked in the same transaction, and a running SP ends \
the sessions and tenant feeds opened with them within one registry poll. Written to the audit \
log."
    )]
    Passwd {
        name: String,
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Remove an operator account; ends all their tokens, sessions and feeds.
    #[command(
        long_about = "Remove an operator account. Its password stops working and every \
session token of the operator is deleted in the same transaction; a running SP ends the sessions \
and tenant feeds opened with them within one registry poll. Their past sessions stay in the \
audit log, and the removal is written there too."
    )]
    Remove {
        name: String,
        #[arg(long)]
        state_dir: PathBuf,
    },
    /// Change which tenants an operator may open; ends all their tokens, sessions and feeds.
    #[command(
        long_about = "Change which tenants an operator may open: TENANTS is `*` (every \
tenant), a comma-separated list of tenant names, or \"\" (none), as `operator add --tenants` \
takes it.\n\nEvery session token of the operator is revoked in the same transaction, so the new \
scope applies from their next login: a running SP ends the sessions and tenant feeds opened \
under the old scope within one registry poll. Written to the audit log."
    )]
    SetTenants {
        name: String,
        /// `*`, a comma-separated list of tenant names, or "" for none.
        tenants: String,
        #[arg(long)]
        state_dir: PathBuf,
    },
}

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
}

/// `rac tenant --help`: what the SP can and cannot make this side do, and how to withdraw
/// consent while it runs.
const TENANT_LONG_HELP: &str = "Run the tenant redirector from its config file.

It keeps one control connection to the SP open and, for each session the SP announces, opens a
data connection and connects it to a local service named in [services]; it listens on no port.

Limits on what the SP can make it do:
  - at most max_sessions sessions at once (default 64); further requests are refused with
    `busy` (\"the tenant redirector ... is at its session cap\");
  - a local service is connected only after the SP has answered `ready` on the data connection;
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
}

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
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ConnectArgs {
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
    pub tenant: String,
    #[command(flatten)]
    pub client: ClientArgs,
    #[arg(long)]
    pub json: bool,
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
    pub tenant: String,
    /// Job id or name.
    pub job: String,
    #[command(flatten)]
    pub client: ClientArgs,
    #[arg(long)]
    pub json: bool,
}

/// Logs go to stderr: stdout is for results scripts read.
pub fn init_tracing(cli: &Cli) {
    let default = match (cli.verbose, &cli.command) {
        (
            0,
            Some(Command::Sp(SpCommand::Run { .. }))
            | Some(Command::Gateway(_))
            | Some(Command::Tenant(_)),
        ) => "info",
        (0, _) => "warn",
        (1, _) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal: in a file or a journal they are
        // noise, and a reader could not tell them from escapes smuggled in by a peer.
        .with_ansi(std::io::stderr().is_terminal())
        // Where nobody reads stderr any more (a closed pipe), a log line is lost, not the
        // process: the default reports the failed write with `eprintln!`, which panics there
        // and took down whatever task was logging (the signal watcher, for one).
        .log_internal_errors(false)
        .init();
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Runs one command to completion.
pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        None => crate::ui::run_lab_window(LabOptions {
            demo_faults: true,
            ..LabOptions::default()
        }),
        Some(Command::Console) => crate::ui::run_console_window(),
        Some(Command::Lab(args)) if !args.headless => crate::ui::run_lab_window(LabOptions {
            tenants: args.tenants,
            demo_faults: true,
            ..LabOptions::default()
        }),
        Some(Command::Lab(args)) => runtime()?.block_on(lab_headless(args)),
        Some(Command::Sp(cmd)) => sp_command(cmd),
        Some(Command::Gateway(args)) => runtime()?.block_on(gateway(args)),
        Some(Command::Tenant(args)) => runtime()?.block_on(tenant(args)),
        Some(Command::Tenants(args)) => runtime()?.block_on(tenants(args)),
        Some(Command::Connect(args)) => runtime()?.block_on(connect(args)),
        Some(Command::Inspect(args)) => runtime()?.block_on(crate::tenant_cli::inspect(args)),
        Some(Command::Job(cmd)) => runtime()?.block_on(crate::tenant_cli::job(cmd)),
        Some(Command::Desktop(args)) => runtime()?.block_on(desktop::run(args)),
        Some(Command::Bench(args)) => crate::bench::run(args),
    }
}

async fn lab_headless(args: LabArgs) -> Result<ExitCode> {
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

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

fn sp_command(cmd: SpCommand) -> Result<ExitCode> {
    let registry = |dir: &PathBuf| -> Result<Registry> {
        let state = StateDir::new(dir);
        state.ensure_initialized()?;
        Ok(Registry::open(&state.registry())?)
    };
    match cmd {
        SpCommand::Init {
            state_dir,
            operator,
            sans,
            json,
        } => {
            let init = crate::sp::init_state_dir(&StateDir::new(&state_dir), &operator, &sans)?;
            if json {
                print_json(&serde_json::json!({
                    "operator": init.operator, "password": init.password,
                    "ca_cert": init.ca_cert, "ca_fingerprint": init.ca_fingerprint,
                }))?;
            } else {
                println!("SP state created in {}", state_dir.display());
                println!("operator:       {}", init.operator);
                println!(
                    "password:       {}   (shown once: store it now)",
                    init.password
                );
                println!(
                    "CA certificate: {}   (give this file to consoles and tenants)",
                    init.ca_cert.display()
                );
                println!("CA fingerprint: {}", init.ca_fingerprint);
                println!(
                    "next: rac sp tenant add NAME --state-dir {}",
                    state_dir.display()
                );
            }
        }
        SpCommand::Tenant(cmd) => match cmd {
            SpTenantCommand::Add {
                name,
                state_dir,
                description,
                json,
            } => {
                let secret = registry(&state_dir)?.add_tenant(&name, &description)?;
                if json {
                    print_json(&serde_json::json!({"tenant": name, "secret": secret}))?;
                } else {
                    println!("tenant {name} added");
                    println!("secret: {secret}   (shown once: put it in the tenant's config)");
                }
            }
            SpTenantCommand::List { state_dir, json } => {
                let tenants = registry(&state_dir)?.tenants()?;
                if json {
                    print_json(&tenants)?;
                } else {
                    println!(
                        "{:<24} {:<9} {:<20} DESCRIPTION",
                        "NAME", "ENABLED", "LAST SEEN"
                    );
                    for t in tenants {
                        println!(
                            "{:<24} {:<9} {:<20} {}",
                            t.name,
                            if t.enabled { "yes" } else { "no" },
                            t.last_seen
                                .map(crate::util::format::date_time)
                                .unwrap_or_else(|| "never".into()),
                            t.description
                        );
                    }
                }
            }
            SpTenantCommand::Disable { name, state_dir } => {
                registry(&state_dir)?.set_enabled(&name, false)?;
                println!("tenant {name} disabled (a running SP drops its connection and sessions)");
            }
            SpTenantCommand::Enable { name, state_dir } => {
                registry(&state_dir)?.set_enabled(&name, true)?;
                println!("tenant {name} enabled");
            }
            SpTenantCommand::Remove { name, state_dir } => {
                registry(&state_dir)?.remove_tenant(&name)?;
                println!("tenant {name} removed");
            }
            SpTenantCommand::RotateSecret {
                name,
                state_dir,
                json,
            } => {
                let secret = registry(&state_dir)?.rotate_secret(&name)?;
                if json {
                    print_json(&serde_json::json!({"tenant": name, "secret": secret}))?;
                } else {
                    println!(
                        "new secret for {name}: {secret}   (shown once; the old one no longer works)"
                    );
                }
            }
        },
        SpCommand::Operator(cmd) => match cmd {
            SpOperatorCommand::Add {
                name,
                state_dir,
                tenants,
                json,
            } => {
                let password = crate::sp::auth::random_hex_16();
                registry(&state_dir)?.add_operator(&name, &password, &tenants)?;
                if json {
                    print_json(&serde_json::json!({"operator": name, "password": password}))?;
                } else {
                    println!("operator {name} added; password: {password}   (shown once)");
                }
            }
            SpOperatorCommand::List { state_dir, json } => {
                let operators = registry(&state_dir)?.operators()?;
                if json {
                    print_json(&operators)?;
                } else {
                    for op in operators {
                        println!("{:<24} tenants: {}", op.name, op.tenants);
                    }
                }
            }
            SpOperatorCommand::Revoke { name, state_dir } => {
                let n = registry(&state_dir)?.revoke_operator_tokens_audited(&name)?;
                println!(
                    "revoked {n} token(s) of {name} (a running SP ends their sessions and feeds)"
                );
            }
            SpOperatorCommand::Passwd {
                name,
                state_dir,
                json,
            } => {
                let registry = registry(&state_dir)?;
                let (password, generated) = new_operator_password(&name)?;
                let n = registry.set_operator_password(&name, &password)?;
                match (json, generated) {
                    (true, true) => print_json(&serde_json::json!({
                        "operator": name, "password": password, "tokens_revoked": n,
                    }))?,
                    (true, false) => print_json(&serde_json::json!({
                        "operator": name, "tokens_revoked": n,
                    }))?,
                    (false, true) => println!(
                        "new password for {name}: {password}   (shown once)\nrevoked {n} token(s) (a running SP ends their sessions and feeds)"
                    ),
                    (false, false) => println!(
                        "password of {name} changed; revoked {n} token(s) (a running SP ends their sessions and feeds)"
                    ),
                }
            }
            SpOperatorCommand::Remove { name, state_dir } => {
                let n = registry(&state_dir)?.remove_operator(&name)?;
                println!(
                    "operator {name} removed; revoked {n} token(s) (a running SP ends their sessions and feeds)"
                );
            }
            SpOperatorCommand::SetTenants {
                name,
                tenants,
                state_dir,
            } => {
                let n = registry(&state_dir)?.set_operator_tenants(&name, &tenants)?;
                println!(
                    "operator {name} may now open: {}; revoked {n} token(s) (a running SP ends their sessions and feeds)",
                    if tenants.trim().is_empty() {
                        "no tenant"
                    } else {
                        tenants.trim()
                    }
                );
            }
        },
        SpCommand::Audit {
            state_dir,
            limit,
            json,
        } => {
            let entries = registry(&state_dir)?.audit_entries(limit)?;
            if json {
                print_json(&entries)?;
            } else {
                for e in entries {
                    println!(
                        "{} {:<12} {:<16} {:<8} {:>10} B out {:>10} B in  {} ({})",
                        crate::util::format::date_time(e.started_at),
                        e.operator,
                        e.tenant,
                        e.service,
                        e.bytes_to_tenant,
                        e.bytes_from_tenant,
                        e.outcome,
                        e.console_addr
                    );
                }
            }
        }
        SpCommand::Run { state_dir, listen } => {
            let addr = crate::sp::config::parse_listen(&listen)?;
            let engine = crate::net::cloud_redirector::SpEngine::open(&StateDir::new(&state_dir))?;
            return runtime()?.block_on(async move {
                let listener =
                    crate::net::listen(addr).with_context(|| format!("listening on {addr}"))?;
                eprintln!("SP listening on {}", listener.local_addr()?);
                crate::net::cloud_redirector::run(
                    engine,
                    listener,
                    crate::signal::shutdown_on_signal(),
                )
                .await?;
                Ok(ExitCode::SUCCESS)
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn gateway(args: GatewayArgs) -> Result<ExitCode> {
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
    let addr = resolve(&args.listen).await?;
    let listener = crate::net::listen(addr).with_context(|| format!("listening on {addr}"))?;
    eprintln!("gateway listening on {}", listener.local_addr()?);
    crate::net::gateway::run(config, listener, crate::signal::shutdown_on_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

async fn resolve(addr: &str) -> Result<SocketAddr> {
    tokio::net::lookup_host(addr)
        .await
        .with_context(|| format!("resolving {addr:?} (expected host:port)"))?
        .next()
        .with_context(|| format!("{addr:?} resolves to no address"))
}

async fn tenant(args: TenantArgs) -> Result<ExitCode> {
    let file = crate::tenant::config::TenantConfig::load(&args.config)?;
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
    let (state, _) =
        tokio::sync::watch::channel(crate::net::tenant_redirector::AgentState::Connecting);
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
        Ok(ConsoleConfig {
            route,
            trust,
            server_name,
            user: self.user.clone(),
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

/// The shortest operator password `rac sp operator passwd` takes from a person.
const MIN_CHOSEN_PASSWORD_LEN: usize = 12;

/// A new operator password: from RAC_PASSWORD, else asked twice on the terminal (empty:
/// generate), else generated. `true` with a generated one, which the caller prints once.
fn new_operator_password(name: &str) -> Result<(String, bool)> {
    let chosen = if let Ok(pw) = std::env::var("RAC_PASSWORD") {
        if pw.is_empty() {
            bail!("RAC_PASSWORD is empty; unset it to have a password generated");
        }
        pw
    } else if std::io::stdin().is_terminal() {
        let pw =
            rpassword::prompt_password(format!("new password for {name} (empty: generate one): "))
                .context("reading the password")?;
        if !pw.is_empty() {
            let again = rpassword::prompt_password("the same password again: ")
                .context("reading the password")?;
            if again != pw {
                bail!("the two passwords differ; nothing changed");
            }
        }
        pw
    } else {
        String::new()
    };
    if chosen.is_empty() {
        return Ok((crate::sp::auth::random_hex_16(), true));
    }
    if chosen.chars().count() < MIN_CHOSEN_PASSWORD_LEN {
        bail!(
            "the new password is too short: use at least {MIN_CHOSEN_PASSWORD_LEN} characters; nothing changed"
        );
    }
    Ok((chosen, false))
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

async fn tenants(args: TenantsArgs) -> Result<ExitCode> {
    let client = args.client.login().await?;
    let tenants = client.tenants().await.context("reading the tenant list")?;
    if args.json {
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
pub async fn check_tenant(client: &ConsoleClient, tenant: &str, service: &str) -> Result<()> {
    let tenants = client.tenants().await.context("reading the tenant list")?;
    let Some(info) = tenants.iter().find(|t| t.name == tenant) else {
        bail!("unknown tenant {tenant:?} (or not one this operator may open)");
    };
    info.check_open(service)
        .map_err(|e| anyhow::anyhow!(e.message))
}

async fn connect(args: ConnectArgs) -> Result<ExitCode> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
