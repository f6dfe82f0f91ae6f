//! `rac sp ...`: create the SP's state dir, administer its tenants and operators (the registry
//! is shared with a running SP, so these work while it runs), read the audit log, serve the SP
//! port.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Subcommand;

use super::{print_json, runtime};
use crate::sp::config::StateDir;
use crate::sp::registry::Registry;

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

/// Runs one `rac sp` command; `rac sp run` serves until SIGINT/SIGTERM.
pub(super) fn run(cmd: SpCommand) -> Result<ExitCode> {
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
