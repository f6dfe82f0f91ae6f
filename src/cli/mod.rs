//! The command line: the scripting contract of DESIGN.md. Each command parses its arguments,
//! builds what it needs and calls the same library functions the lab and the tests call.
//!
//! This module holds the top-level parser, logging and the runtime; each command family has
//! its own file. Nothing in the library imports it.

mod console;
mod desktop;
mod gateway;
mod lab;
mod sp;
mod tenant;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::lab::LabOptions;
use crate::sp::admin::{AdminCode, AdminError};

pub use console::{ClientArgs, ConnectArgs, InspectArgs, JobArgs, JobCommand, TenantsArgs};
pub use gateway::GatewayArgs;
pub use lab::LabArgs;
pub use sp::{SpCommand, SpOperatorCommand, SpTenantCommand};
pub use tenant::TenantArgs;

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
    ///
    /// SIGTERM drains and stops; SIGHUP is logged and ignored (the settings are this command
    /// line: restart to change them).
    Gateway(GatewayArgs),
    /// Run the tenant redirector from its config file.
    #[command(long_about = tenant::TENANT_LONG_HELP)]
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
    /// Write the man pages (rac.1 and one per subcommand) into a folder, for packages.
    #[command(hide = true)]
    Man {
        /// The folder to write them into (made if missing).
        #[arg(long, value_name = "DIR")]
        out: std::path::PathBuf,
    },
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
    // IronRDP's server warns of every bitmap that took over 10 ms to encode; for the lab's
    // and the bench's desktops that is the normal case, not news.
    let default = format!("{default},ironrdp_server::encoder=error");
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

/// A multi-threaded runtime for the commands that serve or talk to the network.
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
        Some(Command::Lab(args)) => runtime()?.block_on(lab::headless(args)),
        Some(Command::Sp(cmd)) => sp::run(cmd),
        Some(Command::Man { out }) => {
            use clap::CommandFactory;
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            clap_mangen::generate_to(Cli::command(), &out)
                .with_context(|| format!("writing man pages into {}", out.display()))?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Gateway(args)) => runtime()?.block_on(gateway::run(args)),
        Some(Command::Tenant(args)) => runtime()?.block_on(tenant::run(args)),
        Some(Command::Tenants(args)) => runtime()?.block_on(console::tenants(args)),
        Some(Command::Connect(args)) => runtime()?.block_on(console::connect(args)),
        Some(Command::Inspect(args)) => runtime()?.block_on(console::inspect(args)),
        Some(Command::Job(cmd)) => runtime()?.block_on(console::job(cmd)),
        Some(Command::Desktop(args)) => runtime()?.block_on(desktop::run(args)),
        Some(Command::Bench(args)) => crate::bench::run(args),
    }
}

impl Cli {
    /// Whether an error is printed as JSON: the `rac sp` commands run with `--json`.
    pub fn json_errors(&self) -> bool {
        matches!(&self.command, Some(Command::Sp(cmd)) if cmd.json())
    }
}

/// Prints why a command failed, on stderr, and gives its exit status. A refusal of the
/// account administration (the [`AdminError`] the admin API answers with) shows its code,
/// `error: MESSAGE (CODE)`, and exits with that code's status ([`exit_status`]); with `json`,
/// the line is `{"code":..,"message":..}` as the API's body. Any other failure (no state dir,
/// a bad sp.toml) has no code: `error: MESSAGE`, or `{"code":null,"message":..}`, status 1.
pub fn report_error(e: &anyhow::Error, json: bool) -> ExitCode {
    let refusal = e.chain().find_map(|c| c.downcast_ref::<AdminError>());
    let message = format!("{e:#}");
    if json {
        let code = refusal.map(|r| r.code);
        eprintln!("{}", serde_json::json!({"code": code, "message": message}));
    } else {
        match refusal {
            Some(r) => eprintln!("error: {message} ({})", r.code),
            None => eprintln!("error: {message}"),
        }
    }
    ExitCode::from(refusal.map_or(1, |r| exit_status(r.code)))
}

/// The exit status of an admin refusal, one per code (docs/OPERATIONS.md lists them): 1
/// stays any failure without a code, and `internal`; 2 is a command line that did not parse.
pub fn exit_status(code: AdminCode) -> u8 {
    match code {
        AdminCode::Internal => 1,
        AdminCode::BadRequest => 3,
        AdminCode::AuthFailed => 4,
        AdminCode::AccessDenied => 5,
        AdminCode::UnknownTenant => 6,
        AdminCode::UnknownOperator => 7,
        AdminCode::UnknownSession => 8,
        AdminCode::UnknownAdminToken => 9,
        AdminCode::AlreadyExists => 10,
        AdminCode::NotFound => 11,
        AdminCode::TooLarge => 12,
    }
}

/// `--json`, flattened into every command that prints a result.
#[derive(Debug, Clone, Copy, Args)]
pub struct Output {
    /// Print the result as one line of JSON instead of text (for scripts).
    #[arg(long)]
    pub json: bool,
}

/// One JSON document on one line of stdout.
fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

/// `host:port` to the first address it resolves to; the error names what was given.
async fn resolve(addr: &str) -> Result<SocketAddr> {
    tokio::net::lookup_host(addr)
        .await
        .with_context(|| format!("resolving {addr:?} (expected host:port)"))?
        .next()
        .with_context(|| format!("{addr:?} resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_refusal_code_has_its_own_exit_status() {
        let statuses: std::collections::BTreeSet<u8> =
            AdminCode::ALL.iter().map(|c| exit_status(*c)).collect();
        assert_eq!(statuses.len(), AdminCode::ALL.len());
        assert!(!statuses.contains(&0) && !statuses.contains(&2));
        assert_eq!(exit_status(AdminCode::Internal), 1);
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
