//! `rac sp ...`: create the SP's state dir, administer its tenants and operators (the registry
//! is shared with a running SP, so these work while it runs), read the audit log, serve the SP
//! port.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

use super::{Output, print_json, runtime};
use crate::sp::admin::{
    Admin, AdminCode, AdminError, MAX_PAGE, Result as AdminResult, TenantQuery,
};
use crate::sp::config::StateDir;
use crate::sp::registry::{Actor, AdminScope, AuditQuery, Registry};

/// The SP's state dir: every `rac sp` command works on one.
#[derive(Debug, Args)]
pub struct StateArgs {
    /// The SP's state dir (CA, server certificate and key, registry, sp.toml), as
    /// `rac sp init` creates it.
    #[arg(long, value_name = "DIR")]
    pub state_dir: PathBuf,
}

impl StateArgs {
    fn dir(&self) -> StateDir {
        StateDir::new(&self.state_dir)
    }

    /// The registry of a state dir that `rac sp init` has made.
    fn registry(&self) -> Result<Registry> {
        let state = self.dir();
        state.ensure_initialized()?;
        let config = crate::sp::config::SpConfig::load(&state.config())?;
        crate::sp::open_registry(&state, &config)
    }
}

#[derive(Debug, Subcommand)]
pub enum SpCommand {
    /// Create a state dir: CA, server certificate, registry, one operator (password printed once).
    Init {
        #[command(flatten)]
        state: StateArgs,
        /// The first operator's name.
        #[arg(long, default_value = "admin")]
        operator: String,
        /// Extra names or addresses for the server certificate (localhost and 127.0.0.1 are always in).
        #[arg(long = "san")]
        sans: Vec<String>,
        /// Keep the registry in this PostgreSQL database, shared by several SP nodes:
        /// `postgres://USER@HOST:PORT/DATABASE` (no password here: see
        /// --postgres-password-file and RAC_POSTGRES_PASSWORD). Creates the schema and writes
        /// `[cluster]` to sp.toml. Further nodes copy this state dir (docs/CLUSTER.md).
        #[arg(long, value_name = "URL")]
        postgres: Option<String>,
        /// A file holding the database password (recorded in sp.toml; else the password
        /// is read from RAC_POSTGRES_PASSWORD).
        #[arg(long, value_name = "FILE", requires = "postgres")]
        postgres_password_file: Option<PathBuf>,
        /// This node's name in the cluster (default: the host name).
        #[arg(long, value_name = "NAME", requires = "postgres")]
        node: Option<String>,
        /// A NATS server of the cluster bus (`nats://HOST:4222`, repeatable; JetStream on):
        /// with it, a console on any node opens tenants held by any other. The token, if
        /// one is needed, comes from RAC_NATS_TOKEN or `nats_token_file` in sp.toml.
        #[arg(long = "nats", value_name = "URL", requires = "postgres")]
        nats_urls: Vec<String>,
        /// `HOST:PORT` at which the other nodes reach this node's SP port (default: the
        /// address `rac sp run` listens on, unless that is a wildcard).
        #[arg(long, value_name = "HOST:PORT", requires = "nats_urls")]
        advertise: Option<String>,
        #[command(flatten)]
        output: Output,
    },
    /// Manage tenant accounts (works while the SP runs).
    #[command(subcommand)]
    Tenant(SpTenantCommand),
    /// Manage operator accounts.
    #[command(subcommand)]
    Operator(SpOperatorCommand),
    /// Print the audit log (console sessions and account changes), newest first.
    #[command(
        long_about = "Print the audit log, newest first: console sessions (who opened \
which tenant's service, when, bytes each way, how it ended) and account changes (who made them: \
`local` for this command line, `admin api: token NAME` for the API).\n\nThe filters and the \
paging are the admin API's (`GET /v1/audit`), through the same code. Each row shows its id; \
when more rows follow, the next page is printed with `--before` the last id shown (stderr \
says so). Times are Unix seconds or UTC: 2025-01-31, 2025-01-31T08:00, \"2025-01-31 08:00:00\"."
    )]
    Audit {
        #[command(flatten)]
        state: StateArgs,
        #[command(flatten)]
        filter: AuditFilter,
        #[command(flatten)]
        output: Output,
    },
    /// Manage the admin API's bearer tokens.
    #[command(subcommand)]
    AdminToken(SpAdminTokenCommand),
    /// Client certificates for the admin listener's mutual TLS (`--admin-mutual-tls`).
    #[command(subcommand)]
    AdminCert(SpAdminCertCommand),
    /// Serve the SP port.
    #[command(
        long_about = "Serve the SP port (and the admin listener, if asked for).\n\nSIGTERM \
or SIGINT drains and stops. SIGHUP (systemctl reload rac-sp) re-reads sp.toml: a new gateway \
pool is handed to the connected tenants at once; other changed settings are named in the log \
and apply at the next start; a file that does not load is logged and ignored, and the SP goes \
on with its running settings. sp.toml is also re-read by itself when it changes, at the next \
registry poll."
    )]
    Run {
        #[command(flatten)]
        state: StateArgs,
        /// Address to listen on (host:port, or a port for all interfaces).
        #[arg(long, default_value = "0.0.0.0:6180")]
        listen: String,
        /// Also serve the admin listener (REST API v1, /metrics, /healthz, /readyz) here:
        /// host:port, or a port on 127.0.0.1. Overrides `[admin] listen` in sp.toml.
        #[arg(long, value_name = "ADDR")]
        admin: Option<String>,
        /// Serve the admin listener over TLS with the SP's server certificate, and take only
        /// clients that show a certificate signed by the SP's CA (`rac sp admin-cert
        /// create`); the bearer token is still required. As `mutual_tls = true` in
        /// `[admin]`.
        #[arg(long)]
        admin_mutual_tls: bool,
    },
    /// Drain a running cluster node and stop it, as SIGTERM does: it stops taking
    /// connections, sends its tenants to the other nodes at its `drain_rate` a second, lets
    /// its sessions go on for up to `drain_secs`, then exits. Asks the node's admin listener
    /// (`POST /v1/node/drain`) and follows the drain until the node is gone.
    Drain {
        #[command(flatten)]
        state: StateArgs,
        /// The node's admin listener (host:port, or a port on 127.0.0.1). Default: `[admin]
        /// listen` in the state dir's sp.toml.
        #[arg(long, value_name = "ADDR")]
        admin: Option<String>,
        /// A file holding a read-write admin token (`rac sp admin-token create`). Default:
        /// the `RAC_ADMIN_TOKEN` environment variable.
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// Return once the node has begun to drain, instead of following it to the end.
        #[arg(long)]
        no_wait: bool,
    },
}

/// `rac sp audit`'s filters and paging: `GET /v1/audit`'s query.
#[derive(Debug, Args)]
pub struct AuditFilter {
    /// Only rows of this tenant.
    #[arg(long, value_name = "NAME")]
    tenant: Option<String>,
    /// Only rows of this operator.
    #[arg(long, value_name = "NAME")]
    operator: Option<String>,
    /// Only rows started at or after TIME (Unix seconds, or UTC: 2025-01-31T08:00).
    #[arg(long, value_name = "TIME", value_parser = crate::util::format::parse_date_time)]
    since: Option<u64>,
    /// Only rows started before TIME (Unix seconds, or UTC: 2025-01-31T08:00).
    #[arg(long, value_name = "TIME", value_parser = crate::util::format::parse_date_time)]
    until: Option<u64>,
    /// Only rows whose outcome starts with TEXT: closed, failed, ended, open, or an account
    /// change's ("tenant disabled").
    #[arg(long, value_name = "TEXT")]
    outcome: Option<String>,
    /// Only rows older than row ID: the next page after a row ID shown last.
    #[arg(long, value_name = "ID")]
    before: Option<i64>,
    /// How many rows to print.
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    limit: u32,
}

/// `rac sp tenant list`'s filters and paging: `GET /v1/tenants`' query, but `status`.
#[derive(Debug, Args)]
pub struct TenantFilter {
    /// Only enabled (true) or disabled (false) tenants.
    #[arg(long, value_name = "BOOL")]
    enabled: Option<bool>,
    /// Only tenants whose name contains TEXT.
    #[arg(long, value_name = "TEXT")]
    name: Option<String>,
    /// Only tenants whose name sorts after NAME: the next page after a NAME shown last.
    #[arg(long, value_name = "NAME")]
    after: Option<String>,
    /// Print at most N tenants (default: every one that matches).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    limit: Option<u32>,
}

#[derive(Debug, Subcommand)]
pub enum SpAdminCertCommand {
    /// Sign a client certificate with the SP's CA for the admin listener's mutual TLS;
    /// writes NAME.pem and NAME.key (0600) into --out.
    Create {
        /// The certificate's common name (who holds it).
        name: String,
        #[command(flatten)]
        state: StateArgs,
        /// Where to write NAME.pem and NAME.key.
        #[arg(long, value_name = "DIR", default_value = ".")]
        out: PathBuf,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum SpAdminTokenCommand {
    /// Create a token for the admin API; prints it once (only its hash is stored).
    Create {
        /// The token's name, written to the audit log with every change made with it.
        name: String,
        #[command(flatten)]
        state: StateArgs,
        /// The token may only read (GET): lists, the audit log, metrics.
        #[arg(long)]
        read_only: bool,
        #[command(flatten)]
        output: Output,
    },
    /// List the admin tokens (names and scopes, never the tokens).
    List {
        #[command(flatten)]
        state: StateArgs,
        #[command(flatten)]
        output: Output,
    },
    /// Revoke an admin token: it stops working at its next request.
    Revoke {
        /// The token's name.
        name: String,
        #[command(flatten)]
        state: StateArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum SpTenantCommand {
    /// Add a tenant; prints its secret once.
    Add {
        /// The tenant's name (1 to 64 letters, digits, '.', '_' or '-').
        name: String,
        #[command(flatten)]
        state: StateArgs,
        /// Free text shown in the tenant list.
        #[arg(long, default_value = "")]
        description: String,
        /// The tenant redirector's key fingerprint (SHA-256, as `rac tenant` logs it at
        /// start), when known in advance: then its very first connection must present it.
        /// Without it, the first key the tenant presents is recorded.
        #[arg(long, value_name = "SHA256")]
        tenant_key: Option<String>,
        #[command(flatten)]
        output: Output,
    },
    /// List tenant accounts, by name.
    #[command(
        long_about = "List tenant accounts, by name.\n\nThe filters and the paging \
are the admin API's (`GET /v1/tenants`), through the same code. With --limit, when more \
tenants follow, the next page is printed with `--after` the last name shown (stderr says so). \
The API also filters on `status` (online, offline, disabled): only the running SP knows who \
is online, so ask it (`GET /v1/tenants?status=online`)."
    )]
    List {
        #[command(flatten)]
        state: StateArgs,
        #[command(flatten)]
        filter: TenantFilter,
        #[command(flatten)]
        output: Output,
    },
    /// Disable a tenant: its connection and sessions end, it cannot reconnect.
    Disable {
        /// The tenant's name.
        name: String,
        #[command(flatten)]
        state: StateArgs,
    },
    /// Enable a disabled tenant again.
    Enable {
        /// The tenant's name.
        name: String,
        #[command(flatten)]
        state: StateArgs,
    },
    /// Remove a tenant account.
    Remove {
        /// The tenant's name.
        name: String,
        #[command(flatten)]
        state: StateArgs,
    },
    /// Forget a tenant's recorded key (its server was reinstalled): the next key it presents
    /// is recorded. Consoles that pinned the old key refuse the new one until their operator
    /// forgets it too (`rac tenants --forget-key`).
    ResetKey {
        /// The tenant's name.
        name: String,
        #[command(flatten)]
        state: StateArgs,
    },
    /// Issue a new secret (printed once); the old one stops working at once.
    RotateSecret {
        /// The tenant's name.
        name: String,
        #[command(flatten)]
        state: StateArgs,
        #[command(flatten)]
        output: Output,
    },
}

#[derive(Debug, Subcommand)]
pub enum SpOperatorCommand {
    /// Add an operator; prints a generated password once.
    Add {
        /// The operator's name (1 to 64 letters, digits, '.', '_' or '-').
        name: String,
        #[command(flatten)]
        state: StateArgs,
        /// Tenants this operator may open: `*` or a comma-separated list.
        #[arg(long, default_value = "*")]
        tenants: String,
        #[command(flatten)]
        output: Output,
    },
    /// List operators.
    List {
        #[command(flatten)]
        state: StateArgs,
        #[command(flatten)]
        output: Output,
    },
    /// Revoke every session token of an operator.
    #[command(
        long_about = "Revoke every session token of an operator (a stolen laptop). A running SP \
ends the sessions and tenant feeds opened with them within one registry poll; the password still \
works. Written to the audit log."
    )]
    Revoke {
        /// The operator's name.
        name: String,
        #[command(flatten)]
        state: StateArgs,
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
        /// The operator's name.
        name: String,
        #[command(flatten)]
        state: StateArgs,
        #[command(flatten)]
        output: Output,
    },
    /// Remove an operator account; ends all their tokens, sessions and feeds.
    #[command(
        long_about = "Remove an operator account. Its password stops working and every \
session token of the operator is deleted in the same transaction; a running SP ends the sessions \
and tenant feeds opened with them within one registry poll. Their past sessions stay in the \
audit log, and the removal is written there too."
    )]
    Remove {
        /// The operator's name.
        name: String,
        #[command(flatten)]
        state: StateArgs,
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
        /// The operator's name.
        name: String,
        /// `*`, a comma-separated list of tenant names, or "" for none.
        tenants: String,
        #[command(flatten)]
        state: StateArgs,
    },
}

impl SpCommand {
    /// Whether the command prints JSON (`--json`): then its error is JSON too.
    pub fn json(&self) -> bool {
        match self {
            SpCommand::Init { output, .. } | SpCommand::Audit { output, .. } => output.json,
            SpCommand::Tenant(
                SpTenantCommand::Add { output, .. }
                | SpTenantCommand::List { output, .. }
                | SpTenantCommand::RotateSecret { output, .. },
            )
            | SpCommand::Operator(
                SpOperatorCommand::Add { output, .. }
                | SpOperatorCommand::List { output, .. }
                | SpOperatorCommand::Passwd { output, .. },
            )
            | SpCommand::AdminToken(
                SpAdminTokenCommand::Create { output, .. }
                | SpAdminTokenCommand::List { output, .. },
            ) => output.json,
            SpCommand::Tenant(_)
            | SpCommand::Operator(_)
            | SpCommand::AdminToken(_)
            | SpCommand::AdminCert(_)
            | SpCommand::Run { .. }
            | SpCommand::Drain { .. } => false,
        }
    }
}

/// This machine's name, as a cluster node's default name.
fn host_name() -> Result<String> {
    let name = crate::util::host_name().unwrap_or_default();
    match crate::wire::validate_name(&name) {
        Ok(()) => Ok(name),
        Err(_) => bail!("this host's name {name:?} cannot name a node: pass --node NAME"),
    }
}

/// Runs one `rac sp` command; `rac sp run` serves until SIGINT/SIGTERM, and re-reads
/// sp.toml on SIGHUP.
pub(super) fn run(cmd: SpCommand) -> Result<ExitCode> {
    match cmd {
        SpCommand::Init {
            state,
            operator,
            sans,
            postgres,
            postgres_password_file,
            node,
            nats_urls,
            advertise,
            output,
        } => {
            let cluster = match postgres {
                Some(postgres_url) => Some(crate::sp::config::ClusterConfig {
                    node: match node {
                        Some(node) => node,
                        None => host_name()?,
                    },
                    postgres_url,
                    postgres_password_file: postgres_password_file
                        .map(|f| std::path::absolute(&f))
                        .transpose()?,
                    postgres_pool: crate::sp::config::ClusterConfig::DEFAULT_POOL,
                    nats_urls,
                    nats_token_file: None,
                    advertise,
                    drain_rate: crate::sp::config::ClusterConfig::DEFAULT_DRAIN_RATE,
                    drain_secs: crate::sp::config::ClusterConfig::DEFAULT_DRAIN_SECS,
                }),
                None => None,
            };
            let init = crate::sp::init_state_dir(&state.dir(), &operator, &sans, cluster)?;
            if output.json {
                print_json(&serde_json::json!({
                    "operator": init.operator, "password": init.password,
                    "ca_cert": init.ca_cert, "ca_fingerprint": init.ca_fingerprint,
                }))?;
            } else {
                println!("SP state created in {}", state.state_dir.display());
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
                    state.state_dir.display()
                );
            }
        }
        SpCommand::Tenant(cmd) => match cmd {
            SpTenantCommand::Add {
                name,
                state,
                description,
                tenant_key,
                output,
            } => {
                let registry = state.registry()?;
                let secret =
                    local(&registry).add_tenant(&name, &description, tenant_key.as_deref())?;
                if output.json {
                    print_json(&serde_json::json!({"tenant": name, "secret": secret}))?;
                } else {
                    println!("tenant {name} added");
                    println!("secret: {secret}   (shown once: put it in the tenant's config)");
                }
            }
            SpTenantCommand::List {
                state,
                filter,
                output,
            } => list_tenants(&state.registry()?, filter, output)?,
            SpTenantCommand::Disable { name, state } => {
                local(&state.registry()?).set_tenant_enabled(&name, false)?;
                println!("tenant {name} disabled (a running SP drops its connection and sessions)");
            }
            SpTenantCommand::Enable { name, state } => {
                local(&state.registry()?).set_tenant_enabled(&name, true)?;
                println!("tenant {name} enabled");
            }
            SpTenantCommand::Remove { name, state } => {
                local(&state.registry()?).remove_tenant(&name)?;
                println!("tenant {name} removed");
            }
            SpTenantCommand::ResetKey { name, state } => {
                local(&state.registry()?).reset_tenant_key(&name)?;
                println!(
                    "tenant {name}'s key forgotten: the next key it presents is recorded \
                     (a running SP picks this up within a second)"
                );
            }
            SpTenantCommand::RotateSecret {
                name,
                state,
                output,
            } => {
                let secret = local(&state.registry()?).rotate_secret(&name)?;
                if output.json {
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
                state,
                tenants,
                output,
            } => {
                let password = local(&state.registry()?).add_operator(&name, &tenants)?;
                if output.json {
                    print_json(&serde_json::json!({"operator": name, "password": password}))?;
                } else {
                    println!("operator {name} added; password: {password}   (shown once)");
                }
            }
            SpOperatorCommand::List { state, output } => {
                let operators = local(&state.registry()?).operators()?;
                if output.json {
                    print_json(&operators)?;
                } else {
                    for op in operators {
                        println!("{:<24} tenants: {}", op.name, op.tenants);
                    }
                }
            }
            SpOperatorCommand::Revoke { name, state } => {
                let n = local(&state.registry()?).revoke_operator(&name)?;
                println!(
                    "revoked {n} token(s) of {name} (a running SP ends their sessions and feeds)"
                );
            }
            SpOperatorCommand::Passwd {
                name,
                state,
                output,
            } => {
                let registry = state.registry()?;
                let chosen = chosen_operator_password(&name)?;
                let (generated, n) =
                    local(&registry).set_operator_password(&name, chosen.as_deref())?;
                match (output.json, generated) {
                    (true, Some(password)) => print_json(&serde_json::json!({
                        "operator": name, "password": password, "tokens_revoked": n,
                    }))?,
                    (true, None) => print_json(&serde_json::json!({
                        "operator": name, "tokens_revoked": n,
                    }))?,
                    (false, Some(password)) => println!(
                        "new password for {name}: {password}   (shown once)\nrevoked {n} token(s) (a running SP ends their sessions and feeds)"
                    ),
                    (false, None) => println!(
                        "password of {name} changed; revoked {n} token(s) (a running SP ends their sessions and feeds)"
                    ),
                }
            }
            SpOperatorCommand::Remove { name, state } => {
                let n = local(&state.registry()?).remove_operator(&name)?;
                println!(
                    "operator {name} removed; revoked {n} token(s) (a running SP ends their sessions and feeds)"
                );
            }
            SpOperatorCommand::SetTenants {
                name,
                tenants,
                state,
            } => {
                let n = local(&state.registry()?).set_operator_tenants(&name, &tenants)?;
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
            state,
            filter,
            output,
        } => print_audit(&state.registry()?, filter, output)?,
        SpCommand::AdminToken(cmd) => admin_token(cmd)?,
        SpCommand::AdminCert(cmd) => admin_cert(cmd)?,
        SpCommand::Drain {
            state,
            admin,
            token_file,
            no_wait,
        } => return drain_node(&state.dir(), admin, token_file, no_wait),
        SpCommand::Run {
            state,
            listen,
            admin,
            admin_mutual_tls,
        } => {
            let addr = crate::sp::config::parse_listen(&listen)?;
            let mut engine = crate::net::cloud_redirector::SpEngine::open(&state.dir())?;
            let admin = admin
                .or_else(|| {
                    engine
                        .service
                        .config
                        .admin
                        .as_ref()
                        .map(|a| a.listen.clone())
                })
                .map(|a| crate::sp::config::parse_admin_listen(&a))
                .transpose()?;
            let mutual_tls = admin_mutual_tls
                || engine
                    .service
                    .config
                    .admin
                    .as_ref()
                    .is_some_and(|a| a.mutual_tls);
            let admin_tls = match (&admin, mutual_tls) {
                (Some(_), true) => {
                    let dir = state.dir();
                    let acceptor = crate::net::tls::mutual_acceptor(
                        &dir.server_chain(),
                        &dir.server_key(),
                        &dir.ca_cert(),
                    )
                    .context("the admin listener's mutual TLS")?;
                    Some(acceptor)
                }
                (None, true) => {
                    bail!("--admin-mutual-tls needs an admin listener (--admin or [admin] listen)")
                }
                (_, false) => None,
            };
            return runtime()?.block_on(async move {
                // Watched before the ready line: `systemctl reload rac-sp` re-reads sp.toml,
                // and a stray SIGHUP no longer ends the SP.
                let reloads = engine.service.clone();
                crate::signal::on_hangup(engine.service.stop_requested(), move || {
                    tracing::info!("SIGHUP: re-reading sp.toml");
                    reloads.request_reload();
                })
                .context("watching SIGHUP")?;
                let listener =
                    crate::net::listen(addr).with_context(|| format!("listening on {addr}"))?;
                eprintln!("SP listening on {}", listener.local_addr()?);
                engine
                    .join_cluster(&state.dir(), listener.local_addr()?)
                    .await?;
                // The admin listener outlives the SP port by the drain, so `/readyz` says
                // `503` while the SP shuts down; it stops when `run` returns.
                let admin_stop = tokio_util::sync::CancellationToken::new();
                let admin_task = match admin {
                    Some(admin) => {
                        let admin_listener =
                            crate::net::admin::bind(admin, admin_tls.is_some()).await?;
                        eprintln!("SP admin listening on {}", admin_listener.local_addr()?);
                        Some(tokio::spawn(crate::net::admin::run_sp_with(
                            engine.service.clone(),
                            admin_listener,
                            admin_tls,
                            admin_stop.clone(),
                        )))
                    }
                    None => None,
                };
                // SIGTERM and the admin API's `POST /v1/node/drain` stop it the same way.
                let stop = engine.service.stop_requested();
                let signalled = crate::signal::shutdown_on_signal();
                let service = engine.service.clone();
                tokio::spawn(async move {
                    signalled.cancelled().await;
                    service.request_stop();
                });
                let served = crate::net::cloud_redirector::run(engine, listener, stop).await;
                admin_stop.cancel();
                if let Some(task) = admin_task {
                    match task.await {
                        Ok(Err(e)) => tracing::error!("admin listener: {e:#}"),
                        Err(e) => tracing::error!("admin listener: {e}"),
                        Ok(Ok(())) => {}
                    }
                }
                served?;
                Ok(ExitCode::SUCCESS)
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `rac sp drain`: asks the node's admin listener to drain, then follows `/v1/server` until
/// the node is gone.
fn drain_node(
    state: &StateDir,
    admin: Option<String>,
    token_file: Option<PathBuf>,
    no_wait: bool,
) -> Result<ExitCode> {
    use crate::net::admin::client::{CallError, call};
    let config = crate::sp::config::SpConfig::load(&state.config())?;
    let sigterm = "or send the node SIGTERM (systemctl stop rac-sp), which drains the same way";
    let Some(cluster) = &config.cluster else {
        bail!(
            "the SP of {} is not a cluster node (no [cluster] in its sp.toml): a single SP's \
             tenants have no other node to go to",
            state.root.display()
        );
    };
    let listen = match (&admin, &config.admin) {
        (Some(addr), _) => addr.clone(),
        (None, Some(section)) => section.listen.clone(),
        (None, None) => bail!(
            "rac sp drain asks the node's admin listener, and {} names none: give --admin \
             HOST:PORT, or set [admin] listen in sp.toml (and restart the node); {sigterm}",
            state.config().display()
        ),
    };
    if config.admin.as_ref().is_some_and(|a| a.mutual_tls) {
        bail!(
            "the node's admin listener takes only clients with a certificate (mutual_tls), \
             which rac sp drain does not present: POST /v1/node/drain with curl and your \
             admin certificate, {sigterm}"
        );
    }
    let mut addr = crate::sp::config::parse_admin_listen(&listen)?;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let token = match token_file {
        Some(file) => std::fs::read_to_string(&file)
            .with_context(|| format!("reading the admin token from {}", file.display()))?
            .trim()
            .to_string(),
        None => std::env::var("RAC_ADMIN_TOKEN").map_err(|_| {
            anyhow::anyhow!(
                "an admin token is needed: --token-file FILE or RAC_ADMIN_TOKEN (rac sp \
                 admin-token create NAME makes a read-write one)"
            )
        })?,
    };
    let node = cluster.node.clone();
    runtime()?.block_on(async move {
        // A node answers at once; one that does not within this is stuck.
        let within = std::time::Duration::from_secs(10);
        let asked = call(addr, "POST", "/v1/node/drain", &token, within)
            .await
            .with_context(|| format!("asking node {node} to drain"))?;
        let answer: serde_json::Value = serde_json::from_str(&asked.body).unwrap_or_default();
        if asked.status != 202 {
            let message = answer["message"].as_str().unwrap_or(asked.body.trim());
            let message = format!(
                "node {node} refused to drain (HTTP {}): {message}",
                asked.status
            );
            // The API's refusal keeps its code (`rac` prints it and exits with its status).
            return match serde_json::from_value::<AdminCode>(answer["code"].clone()) {
                Ok(code) => Err(AdminError::new(code, message).into()),
                Err(_) => Err(anyhow::anyhow!(message)),
            };
        }
        let count = |v: &serde_json::Value, key: &str| v[key].as_u64().unwrap_or(0);
        println!(
            "node {node} is draining: {} tenants go to the other nodes at {} a second; its {} \
             sessions may go on for up to {} s",
            count(&answer, "tenants_online"),
            count(&answer, "drain_rate"),
            count(&answer, "sessions_active"),
            count(&answer, "drain_secs"),
        );
        if no_wait {
            return Ok(ExitCode::SUCCESS);
        }
        // The admin listener closes last, as the process exits: followed for the drain and
        // a minute more (the tenants' goodbyes, the exit).
        let give_up = tokio::time::Instant::now()
            + std::time::Duration::from_secs(count(&answer, "drain_secs") + 60);
        let mut last = None;
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            match call(addr, "GET", "/v1/server", &token, within).await {
                Ok(reply) if reply.status == 200 => {
                    let server: serde_json::Value =
                        serde_json::from_str(&reply.body).unwrap_or_default();
                    let left = (
                        count(&server, "tenants_online"),
                        count(&server, "sessions_active"),
                    );
                    if last != Some(left) {
                        println!("node {node}: {} tenants, {} sessions left", left.0, left.1);
                        last = Some(left);
                    }
                }
                Err(CallError::Refused(_)) => {
                    println!("node {node} drained and stopped");
                    return Ok(ExitCode::SUCCESS);
                }
                // The listener closing under a request, or a busy moment: ask again.
                Ok(_) | Err(_) => {}
            }
            if tokio::time::Instant::now() > give_up {
                bail!("node {node} still answers at {addr} long after its drain deadline");
            }
        }
    })
}

/// Account administration from this host's command line.
fn local(registry: &Registry) -> Admin<'_> {
    Admin::new(registry, Actor::Local)
}

/// `rac sp tenant list`: a page of tenants through [`Admin::tenants`], as
/// `GET /v1/tenants` (all that match without `--limit`).
fn list_tenants(registry: &Registry, filter: TenantFilter, output: Output) -> Result<()> {
    let admin = local(registry);
    let mut query = TenantQuery {
        enabled: filter.enabled,
        name_contains: filter.name,
        after: filter.after,
        limit: MAX_PAGE,
    };
    let want = filter.limit.map(|n| n as usize);
    let (tenants, next) = pages(want, |after, limit| {
        if let Some(after) = after {
            query.after = Some(after);
        }
        query.limit = limit;
        let page = admin.tenants(&query, |_| true)?;
        Ok((page.tenants, page.next))
    })?;
    if let Some(next) = next {
        eprintln!("more tenants follow: the next page is --after {next}");
    }
    if output.json {
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
    Ok(())
}

/// `rac sp audit`: a page of the audit log through [`Admin::audit`], as `GET /v1/audit`.
fn print_audit(registry: &Registry, filter: AuditFilter, output: Output) -> Result<()> {
    let admin = local(registry);
    let mut query = AuditQuery {
        tenant: filter.tenant,
        operator: filter.operator,
        since: filter.since,
        until: filter.until,
        outcome: filter.outcome,
        before: filter.before,
        limit: MAX_PAGE,
    };
    let (entries, next) = pages(Some(filter.limit as usize), |before, limit| {
        if before.is_some() {
            query.before = before;
        }
        query.limit = limit;
        let page = admin.audit(&query)?;
        Ok((page.entries, page.next))
    })?;
    if let Some(next) = next {
        eprintln!("more rows follow: the next page is --before {next}");
    }
    if output.json {
        print_json(&entries)?;
    } else {
        for e in entries {
            println!(
                "{:>7} {} {:<12} {:<16} {:<8} {:>10} B out {:>10} B in  {} ({})",
                e.id,
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
    Ok(())
}

/// Up to `want` rows (`None`: all) of a listing that `page(cursor, limit)` gives one page at
/// a time (at most [`MAX_PAGE`] rows), from the caller's own cursor on: the rows, and the
/// cursor of the rows that follow, if any do.
fn pages<T, C>(
    want: Option<usize>,
    mut page: impl FnMut(Option<C>, usize) -> AdminResult<(Vec<T>, Option<C>)>,
) -> AdminResult<(Vec<T>, Option<C>)> {
    let mut rows = Vec::new();
    let mut cursor = None;
    loop {
        let room = want.map_or(MAX_PAGE, |w| w.saturating_sub(rows.len()).min(MAX_PAGE));
        let (mut got, next) = page(cursor, room)?;
        rows.append(&mut got);
        cursor = next;
        if cursor.is_none() || want.is_some_and(|w| rows.len() >= w) {
            return Ok((rows, cursor));
        }
    }
}

/// `rac sp admin-token ...`.
fn admin_token(cmd: SpAdminTokenCommand) -> Result<()> {
    match cmd {
        SpAdminTokenCommand::Create {
            name,
            state,
            read_only,
            output,
        } => {
            let scope = if read_only {
                AdminScope::ReadOnly
            } else {
                AdminScope::ReadWrite
            };
            let token = state
                .registry()?
                .create_admin_token(&name, scope, &Actor::Local)
                .map_err(AdminError::from)?;
            if output.json {
                print_json(&serde_json::json!({
                    "name": name, "scope": scope, "token": token,
                }))?;
            } else {
                println!("admin token {name} ({}) created", scope.as_str());
                println!("token: {token}   (shown once: send it as `Authorization: Bearer TOKEN`)");
            }
        }
        SpAdminTokenCommand::List { state, output } => {
            let tokens = state.registry()?.admin_tokens().map_err(AdminError::from)?;
            if output.json {
                print_json(&tokens)?;
            } else {
                println!("{:<24} {:<11} {:<20} LAST USED", "NAME", "SCOPE", "CREATED");
                for t in tokens {
                    println!(
                        "{:<24} {:<11} {:<20} {}",
                        t.name,
                        t.scope.as_str(),
                        crate::util::format::date_time(t.created_at),
                        t.last_used
                            .map(crate::util::format::date_time)
                            .unwrap_or_else(|| "never".into()),
                    );
                }
            }
        }
        SpAdminTokenCommand::Revoke { name, state } => {
            state
                .registry()?
                .revoke_admin_token(&name, &Actor::Local)
                .map_err(AdminError::from)?;
            println!("admin token {name} revoked");
        }
    }
    Ok(())
}

/// `rac sp admin-cert ...`.
fn admin_cert(cmd: SpAdminCertCommand) -> Result<()> {
    match cmd {
        SpAdminCertCommand::Create {
            name,
            state,
            out,
            days,
        } => {
            crate::wire::validate_name(&name)?;
            let dir = state.dir();
            dir.ensure_initialized()?;
            let ca_key = std::fs::read_to_string(dir.ca_key())
                .with_context(|| format!("reading {}", dir.ca_key().display()))?;
            let cert = crate::sp::pki::issue_client(&ca_key, &name, days)?;
            let (cert_path, key_path) = (
                out.join(format!("{name}.pem")),
                out.join(format!("{name}.key")),
            );
            crate::sp::pki::write_private(&key_path, &cert.key_pem)?;
            std::fs::write(&cert_path, &cert.cert_pem)
                .with_context(|| format!("writing {}", cert_path.display()))?;
            println!(
                "admin client certificate {name} (valid {days} days): {} and {}",
                cert_path.display(),
                key_path.display()
            );
        }
    }
    Ok(())
}

/// A chosen operator password: from RAC_PASSWORD, else asked twice on the terminal (empty:
/// generate), else none (`None`: generate one, which the caller prints once).
fn chosen_operator_password(name: &str) -> Result<Option<String>> {
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
    // Its length is checked where the API's is (`sp::admin`).
    Ok((!chosen.is_empty()).then_some(chosen))
}
