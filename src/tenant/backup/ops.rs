//! Operator actions on the backup server (start and stop jobs, edit the infrastructure), each
//! validated against the inventory and refused with an [`ActionError`] that says why.

use serde::{Deserialize, Serialize};

use super::generator::new_pool;
use super::model::*;

/// An action a console asks the backup server to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    /// Start a run of an enabled job that is not running.
    StartJob {
        /// Job id.
        job: String,
    },
    /// Stop a running job.
    StopJob {
        /// Job id.
        job: String,
    },
    /// Let a job run (on schedule or by hand).
    EnableJob {
        /// Job id.
        job: String,
    },
    /// Keep a job from running.
    DisableJob {
        /// Job id.
        job: String,
    },
    /// Add a proxy.
    AddProxy {
        /// Its settings.
        proxy: ProxySpec,
    },
    /// Change a proxy's settings.
    EditProxy {
        /// Proxy id.
        id: String,
        /// The new settings.
        proxy: ProxySpec,
    },
    /// Remove a proxy no job or pool uses.
    RemoveProxy {
        /// Proxy id.
        id: String,
    },
    /// Put a proxy into maintenance (`true`) or back online (`false`).
    SetProxyMaintenance {
        /// Proxy id.
        id: String,
        /// Into (`true`) or out of (`false`) maintenance.
        maintenance: bool,
    },
    /// Add a proxy pool.
    AddPool {
        /// Its settings.
        pool: PoolSpec,
    },
    /// Change a pool's name or members.
    EditPool {
        /// Pool id.
        id: String,
        /// The new settings.
        pool: PoolSpec,
    },
    /// Remove a pool no job uses.
    RemovePool {
        /// Pool id.
        id: String,
    },
    /// Add a repository.
    AddRepository {
        /// Its settings.
        repository: RepositorySpec,
    },
    /// Change a repository's settings.
    EditRepository {
        /// Repository id.
        id: String,
        /// The new settings.
        repository: RepositorySpec,
    },
    /// Remove a repository no job uses.
    RemoveRepository {
        /// Repository id.
        id: String,
    },
    /// Add a job.
    AddJob {
        /// Its settings.
        job: JobSpec,
    },
    /// Change a job that is not running.
    EditJob {
        /// Job id.
        id: String,
        /// The new settings.
        job: JobSpec,
    },
    /// Remove a job that is not running (its past sessions stay).
    RemoveJob {
        /// Job id.
        id: String,
    },
    /// Replace the email notification settings.
    SetNotifications {
        /// The new settings.
        notifications: Notifications,
    },
}

/// The settings of a proxy an operator gives (state and derived fields are the server's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySpec {
    /// Display name (unique).
    pub name: String,
    /// Host name or address.
    pub host: String,
    /// `domain` or `workgroup` (there is one `local` proxy, made by the install).
    pub kind: ProxyKind,
    /// Required for workgroup proxies: SHA-1 thumbprint, 40 hex digits.
    #[serde(default)]
    pub certificate_thumbprint: Option<String>,
    /// Tasks at once, 1..=256.
    pub max_concurrent_tasks: u32,
}

/// The settings of a pool an operator gives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    /// Display name (unique).
    pub name: String,
    /// Proxy ids; at least one, none in another pool.
    pub members: Vec<String>,
}

/// The settings of a repository an operator gives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositorySpec {
    /// Display name (unique).
    pub name: String,
    /// `local` (needs `path`) or `object_storage` (needs `bucket`).
    pub kind: RepositoryKind,
    /// Folder, for `local`.
    #[serde(default)]
    pub path: Option<String>,
    /// Bucket, for `object_storage`.
    #[serde(default)]
    pub bucket: Option<String>,
    /// Capacity, more than zero and not below the space in use.
    pub capacity_bytes: u64,
    /// Retention, 1..=36500 days.
    pub retention_days: u32,
}

/// The settings of a job an operator gives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Display name (unique).
    pub name: String,
    /// `m365` or `azure_vm`.
    pub kind: JobKind,
    /// An organization for `m365`, VMs for `azure_vm`.
    pub source: JobSource,
    /// For `m365`: the proxy (or give `pool`).
    #[serde(default)]
    pub proxy: Option<String>,
    /// For `m365`: the pool (or give `proxy`).
    #[serde(default)]
    pub pool: Option<String>,
    /// Target repository id.
    pub repository: String,
    /// When it runs.
    pub schedule: Schedule,
    /// Whether it may run.
    pub enabled: bool,
}

/// What an accepted action did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionOutcome {
    /// The id of the object acted on (the new id for an add).
    pub target: String,
    /// The session a `start_job` created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

/// Why an action was refused. [`ActionError::code`] is the stable wire code.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ActionError {
    /// No object of that kind has that id.
    #[error("unknown {kind} '{id}'")]
    NotFound {
        /// `job`, `proxy`, `pool`, `repository`, `organization` or `azure_vm`.
        kind: &'static str,
        /// The id asked for.
        id: String,
    },
    /// The job has a running session.
    #[error("job '{0}' is already running")]
    JobRunning(String),
    /// The job has no running session.
    #[error("job '{0}' is not running")]
    JobNotRunning(String),
    /// The job is disabled.
    #[error("job '{0}' is disabled; enable it first")]
    JobDisabled(String),
    /// Something still refers to the object.
    #[error("{kind} '{id}' is in use by {by}")]
    InUse {
        /// Kind of the object.
        kind: &'static str,
        /// Its id.
        id: String,
        /// What uses it, e.g. `job 'job-3'`.
        by: String,
    },
    /// A workgroup proxy needs the thumbprint of its SSL certificate.
    #[error("a workgroup proxy needs a certificate thumbprint (40 hex digits)")]
    CertificateRequired,
    /// The job's proxy, or every member of its pool, cannot take work.
    #[error("no proxy available for job '{0}': its proxy is offline or in maintenance")]
    ProxyUnavailable(String),
    /// The proxy runs tasks of a running job.
    #[error("proxy '{proxy}' is busy with running job '{job}'")]
    ProxyBusy {
        /// Proxy id.
        proxy: String,
        /// Running job id.
        job: String,
    },
    /// Another object of the kind has that name.
    #[error("a {kind} named '{name}' already exists")]
    DuplicateName {
        /// Kind of the object.
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// The local proxy belongs to the server and cannot be removed or changed in kind.
    #[error("the local proxy cannot be removed or changed in kind")]
    LocalProxy,
    /// A field has a value the server cannot accept.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The field, e.g. `capacity_bytes`.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

impl ActionError {
    /// The stable code sent on the wire.
    pub fn code(&self) -> &'static str {
        match self {
            ActionError::NotFound { .. } => "not_found",
            ActionError::JobRunning(_) => "job_running",
            ActionError::JobNotRunning(_) => "job_not_running",
            ActionError::JobDisabled(_) => "job_disabled",
            ActionError::InUse { .. } => "in_use",
            ActionError::CertificateRequired => "certificate_required",
            ActionError::ProxyUnavailable(_) => "proxy_unavailable",
            ActionError::ProxyBusy { .. } => "proxy_busy",
            ActionError::DuplicateName { .. } => "duplicate_name",
            ActionError::LocalProxy => "local_proxy",
            ActionError::Invalid { .. } => "invalid",
        }
    }
}

/// What changed, for the live event stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// `job`, `proxy`, `pool`, `repository`, `session` or `notifications`.
    pub kind: String,
    /// The object's id.
    pub id: String,
    /// `added`, `edited`, `removed`, `started`, `stopped`, `enabled`, `disabled`,
    /// `maintenance_on` or `maintenance_off`.
    pub change: String,
}

fn not_found(kind: &'static str, id: &str) -> ActionError {
    ActionError::NotFound {
        kind,
        id: id.to_owned(),
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ActionError {
    ActionError::Invalid {
        field,
        reason: reason.into(),
    }
}

fn change(kind: &str, id: &str, what: &str) -> Change {
    Change {
        kind: kind.to_owned(),
        id: id.to_owned(),
        change: what.to_owned(),
    }
}

fn check_name(field: &'static str, name: &str) -> Result<(), ActionError> {
    if name.trim().is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if name.len() > 200 {
        return Err(invalid(field, "longer than 200 bytes"));
    }
    Ok(())
}

fn check_unique<'a>(
    kind: &'static str,
    name: &str,
    mut existing: impl Iterator<Item = (&'a str, &'a str)>,
    except: Option<&str>,
) -> Result<(), ActionError> {
    if existing.any(|(id, n)| n.eq_ignore_ascii_case(name) && Some(id) != except) {
        return Err(ActionError::DuplicateName {
            kind,
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// Checks an action and applies it to `inv`. On a refusal `inv` is unchanged.
/// `now_unix_secs` stamps sessions and schedules; `simulated` marks new sessions.
pub fn apply(
    inv: &mut Inventory,
    action: &Action,
    now_unix_secs: u64,
    simulated: bool,
) -> Result<(ActionOutcome, Vec<Change>), ActionError> {
    let now = now_unix_secs;
    let done = |target: &str, kind: &str, what: &str| {
        Ok((
            ActionOutcome {
                target: target.to_owned(),
                session: None,
            },
            vec![change(kind, target, what)],
        ))
    };
    match action {
        Action::StartJob { job } => {
            let j = inv.job(job).ok_or_else(|| not_found("job", job))?;
            if !j.enabled {
                return Err(ActionError::JobDisabled(job.clone()));
            }
            if inv.running_session(job).is_some() {
                return Err(ActionError::JobRunning(job.clone()));
            }
            if j.kind == JobKind::M365 {
                let usable = inv
                    .job_proxies(j)
                    .iter()
                    .filter_map(|p| inv.proxy(p))
                    .any(|p| p.state == ProxyState::Online);
                if !usable {
                    return Err(ActionError::ProxyUnavailable(job.clone()));
                }
            }
            let session = start_session(inv, job, now, simulated);
            Ok((
                ActionOutcome {
                    target: job.clone(),
                    session: Some(session.clone()),
                },
                vec![
                    change("job", job, "started"),
                    change("session", &session, "added"),
                ],
            ))
        }
        Action::StopJob { job } => {
            inv.job(job).ok_or_else(|| not_found("job", job))?;
            let session = inv
                .sessions
                .iter_mut()
                .find(|s| s.job == *job && s.state == SessionState::Running)
                .ok_or_else(|| ActionError::JobNotRunning(job.clone()))?;
            session.state = SessionState::Stopped;
            session.stage = Stage::Done;
            session.rate_bytes_per_sec = 0;
            session.ended_at_unix_secs = Some(now);
            session.push_log(now, Severity::Warning, "Job stopped by an operator".into());
            let session_id = session.id.clone();
            finish_job(inv, job, JobResult::Stopped, now);
            Ok((
                ActionOutcome {
                    target: job.clone(),
                    session: Some(session_id),
                },
                vec![change("job", job, "stopped")],
            ))
        }
        Action::EnableJob { job } | Action::DisableJob { job } => {
            let enable = matches!(action, Action::EnableJob { .. });
            let j = inv
                .jobs
                .iter_mut()
                .find(|j| j.id == *job)
                .ok_or_else(|| not_found("job", job))?;
            j.enabled = enable;
            j.next_run_unix_secs = if enable {
                j.schedule.next_after(now)
            } else {
                None
            };
            done(job, "job", if enable { "enabled" } else { "disabled" })
        }
        Action::AddProxy { proxy } => {
            validate_proxy(inv, proxy, None)?;
            if proxy.kind == ProxyKind::Local {
                return Err(ActionError::LocalProxy);
            }
            let id = Inventory::next_id("proxy", inv.proxies.iter().map(|p| p.id.as_str()));
            inv.proxies.push(Proxy {
                id: id.clone(),
                name: proxy.name.clone(),
                host: proxy.host.clone(),
                kind: proxy.kind,
                certificate_thumbprint: proxy.certificate_thumbprint.clone(),
                state: ProxyState::Online,
                max_concurrent_tasks: proxy.max_concurrent_tasks,
                organizations: Vec::new(),
                pool: None,
            });
            done(&id, "proxy", "added")
        }
        Action::EditProxy { id, proxy } => {
            let current = inv.proxy(id).ok_or_else(|| not_found("proxy", id))?;
            if (current.kind == ProxyKind::Local) != (proxy.kind == ProxyKind::Local) {
                return Err(ActionError::LocalProxy);
            }
            validate_proxy(inv, proxy, Some(id))?;
            if let Some(job) = busy_job(inv, id) {
                return Err(ActionError::ProxyBusy {
                    proxy: id.clone(),
                    job,
                });
            }
            if let Some(p) = inv.proxies.iter_mut().find(|p| p.id == *id) {
                p.name = proxy.name.clone();
                p.host = proxy.host.clone();
                p.kind = proxy.kind;
                p.certificate_thumbprint = proxy.certificate_thumbprint.clone();
                p.max_concurrent_tasks = proxy.max_concurrent_tasks;
            }
            done(id, "proxy", "edited")
        }
        Action::RemoveProxy { id } => {
            let p = inv.proxy(id).ok_or_else(|| not_found("proxy", id))?;
            if p.kind == ProxyKind::Local {
                return Err(ActionError::LocalProxy);
            }
            if let Some(job) = inv.jobs.iter().find(|j| j.proxy.as_deref() == Some(id)) {
                return Err(ActionError::InUse {
                    kind: "proxy",
                    id: id.clone(),
                    by: format!("job '{}'", job.id),
                });
            }
            if let Some(pool) = &p.pool {
                return Err(ActionError::InUse {
                    kind: "proxy",
                    id: id.clone(),
                    by: format!("pool '{pool}'"),
                });
            }
            inv.proxies.retain(|p| p.id != *id);
            done(id, "proxy", "removed")
        }
        Action::SetProxyMaintenance { id, maintenance } => {
            inv.proxy(id).ok_or_else(|| not_found("proxy", id))?;
            if *maintenance && let Some(job) = busy_job(inv, id) {
                return Err(ActionError::ProxyBusy {
                    proxy: id.clone(),
                    job,
                });
            }
            if let Some(p) = inv.proxies.iter_mut().find(|p| p.id == *id) {
                p.state = if *maintenance {
                    ProxyState::Maintenance
                } else {
                    ProxyState::Online
                };
            }
            let what = if *maintenance {
                "maintenance_on"
            } else {
                "maintenance_off"
            };
            done(id, "proxy", what)
        }
        Action::AddPool { pool } => {
            validate_pool(inv, pool, None)?;
            let id = Inventory::next_id("pool", inv.proxy_pools.iter().map(|p| p.id.as_str()));
            let host = inv.server.name.clone();
            inv.proxy_pools
                .push(new_pool(&id, &pool.name, pool.members.clone(), &host));
            inv.normalize();
            done(&id, "pool", "added")
        }
        Action::EditPool { id, pool } => {
            inv.pool(id).ok_or_else(|| not_found("pool", id))?;
            validate_pool(inv, pool, Some(id))?;
            if let Some(job) = inv
                .jobs
                .iter()
                .find(|j| j.pool.as_deref() == Some(id) && inv.running_session(&j.id).is_some())
            {
                return Err(ActionError::JobRunning(job.id.clone()));
            }
            if let Some(p) = inv.proxy_pools.iter_mut().find(|p| p.id == *id) {
                p.name = pool.name.clone();
                p.members = pool.members.clone();
                for stream in &mut p.bus.streams {
                    stream.consumers = p.members.len() as u32;
                }
            }
            inv.normalize();
            done(id, "pool", "edited")
        }
        Action::RemovePool { id } => {
            inv.pool(id).ok_or_else(|| not_found("pool", id))?;
            if let Some(job) = inv.jobs.iter().find(|j| j.pool.as_deref() == Some(id)) {
                return Err(ActionError::InUse {
                    kind: "pool",
                    id: id.clone(),
                    by: format!("job '{}'", job.id),
                });
            }
            inv.proxy_pools.retain(|p| p.id != *id);
            inv.normalize();
            done(id, "pool", "removed")
        }
        Action::AddRepository { repository } => {
            validate_repository(inv, repository, None)?;
            let id = Inventory::next_id("repo", inv.repositories.iter().map(|r| r.id.as_str()));
            inv.repositories.push(Repository {
                id: id.clone(),
                name: repository.name.clone(),
                kind: repository.kind,
                path: repository.path.clone(),
                bucket: repository.bucket.clone(),
                capacity_bytes: repository.capacity_bytes,
                used_bytes: 0,
                retention_days: repository.retention_days,
            });
            done(&id, "repository", "added")
        }
        Action::EditRepository { id, repository } => {
            let current = inv
                .repositories
                .iter()
                .find(|r| r.id == *id)
                .ok_or_else(|| not_found("repository", id))?;
            validate_repository(inv, repository, Some(id))?;
            if repository.capacity_bytes < current.used_bytes {
                return Err(invalid(
                    "capacity_bytes",
                    format!("below the {} bytes in use", current.used_bytes),
                ));
            }
            if current.kind != repository.kind
                && let Some(job) = inv.jobs.iter().find(|j| j.repository == *id)
            {
                return Err(ActionError::InUse {
                    kind: "repository",
                    id: id.clone(),
                    by: format!("job '{}' (its kind cannot change)", job.id),
                });
            }
            if let Some(r) = inv.repositories.iter_mut().find(|r| r.id == *id) {
                r.name = repository.name.clone();
                r.kind = repository.kind;
                r.path = repository.path.clone();
                r.bucket = repository.bucket.clone();
                r.capacity_bytes = repository.capacity_bytes;
                r.retention_days = repository.retention_days;
            }
            done(id, "repository", "edited")
        }
        Action::RemoveRepository { id } => {
            if !inv.repositories.iter().any(|r| r.id == *id) {
                return Err(not_found("repository", id));
            }
            if let Some(job) = inv.jobs.iter().find(|j| j.repository == *id) {
                return Err(ActionError::InUse {
                    kind: "repository",
                    id: id.clone(),
                    by: format!("job '{}'", job.id),
                });
            }
            inv.repositories.retain(|r| r.id != *id);
            done(id, "repository", "removed")
        }
        Action::AddJob { job } => {
            validate_job(inv, job, None)?;
            let id = Inventory::next_id("job", inv.jobs.iter().map(|j| j.id.as_str()));
            inv.jobs.push(Job {
                id: id.clone(),
                name: job.name.clone(),
                kind: job.kind,
                source: job.source.clone(),
                proxy: job.proxy.clone(),
                pool: job.pool.clone(),
                repository: job.repository.clone(),
                schedule: job.schedule.clone(),
                enabled: job.enabled,
                last_result: None,
                last_run_unix_secs: None,
                next_run_unix_secs: if job.enabled {
                    job.schedule.next_after(now)
                } else {
                    None
                },
            });
            inv.normalize();
            done(&id, "job", "added")
        }
        Action::EditJob { id, job } => {
            inv.job(id).ok_or_else(|| not_found("job", id))?;
            if inv.running_session(id).is_some() {
                return Err(ActionError::JobRunning(id.clone()));
            }
            validate_job(inv, job, Some(id))?;
            if let Some(j) = inv.jobs.iter_mut().find(|j| j.id == *id) {
                j.name = job.name.clone();
                j.kind = job.kind;
                j.source = job.source.clone();
                j.proxy = job.proxy.clone();
                j.pool = job.pool.clone();
                j.repository = job.repository.clone();
                j.schedule = job.schedule.clone();
                j.enabled = job.enabled;
                j.next_run_unix_secs = if job.enabled {
                    job.schedule.next_after(now)
                } else {
                    None
                };
            }
            inv.normalize();
            done(id, "job", "edited")
        }
        Action::RemoveJob { id } => {
            inv.job(id).ok_or_else(|| not_found("job", id))?;
            if inv.running_session(id).is_some() {
                return Err(ActionError::JobRunning(id.clone()));
            }
            inv.jobs.retain(|j| j.id != *id);
            inv.normalize();
            done(id, "job", "removed")
        }
        Action::SetNotifications { notifications: n } => {
            if n.enabled {
                if n.smtp_server.trim().is_empty() {
                    return Err(invalid("smtp_server", "required when enabled"));
                }
                if n.smtp_port == 0 {
                    return Err(invalid("smtp_port", "must not be 0"));
                }
                if !n.from.contains('@') {
                    return Err(invalid("from", "not an email address"));
                }
                if n.to.is_empty() || n.to.iter().any(|t| !t.contains('@')) {
                    return Err(invalid("to", "needs at least one email address"));
                }
            }
            inv.server.notifications = n.clone();
            let name = inv.server.name.clone();
            done(&name, "notifications", "edited")
        }
    }
}

/// Creates a running session for `job` (checks already done) and returns its id. The
/// simulation fills in the stages from the next tick on.
pub(crate) fn start_session(inv: &mut Inventory, job: &str, now: u64, simulated: bool) -> String {
    let id = Inventory::next_id("session", inv.sessions.iter().map(|s| s.id.as_str()));
    let name = inv.job(job).map(|j| j.name.clone()).unwrap_or_default();
    let mut session = Session {
        id: id.clone(),
        job: job.to_owned(),
        job_name: name.clone(),
        state: SessionState::Running,
        stage: Stage::Pending,
        progress: 0.0,
        bytes_read: 0,
        bytes_transferred: 0,
        rate_bytes_per_sec: 0,
        started_at_unix_secs: now,
        ended_at_unix_secs: None,
        tasks: Vec::new(),
        log: Vec::new(),
        simulated,
    };
    session.push_log(now, Severity::Info, format!("Job {name} started"));
    inv.sessions.push(session);
    inv.trim();
    id
}

/// Records a finished run on its job: last result, last run and next run.
pub(crate) fn finish_job(inv: &mut Inventory, job: &str, result: JobResult, now: u64) {
    if let Some(j) = inv.jobs.iter_mut().find(|j| j.id == job) {
        j.last_result = Some(result);
        j.last_run_unix_secs = Some(now);
        j.next_run_unix_secs = if j.enabled {
            j.schedule.next_after(now)
        } else {
            None
        };
    }
}

/// A running job whose work goes to this proxy, if any.
fn busy_job(inv: &Inventory, proxy: &str) -> Option<String> {
    inv.jobs
        .iter()
        .filter(|j| inv.running_session(&j.id).is_some())
        .find(|j| inv.job_proxies(j).iter().any(|p| p == proxy))
        .map(|j| j.id.clone())
}

fn validate_proxy(
    inv: &Inventory,
    spec: &ProxySpec,
    except: Option<&str>,
) -> Result<(), ActionError> {
    check_name("name", &spec.name)?;
    check_name("host", &spec.host)?;
    if spec.host.contains(char::is_whitespace) {
        return Err(invalid("host", "must not contain spaces"));
    }
    if !(1..=256).contains(&spec.max_concurrent_tasks) {
        return Err(invalid("max_concurrent_tasks", "must be 1..=256"));
    }
    if spec.kind == ProxyKind::Workgroup {
        match &spec.certificate_thumbprint {
            None => return Err(ActionError::CertificateRequired),
            Some(t) if t.len() != 40 || !t.chars().all(|c| c.is_ascii_hexdigit()) => {
                return Err(ActionError::CertificateRequired);
            }
            Some(_) => {}
        }
    } else if spec.certificate_thumbprint.is_some() {
        return Err(invalid(
            "certificate_thumbprint",
            "only workgroup proxies use a certificate",
        ));
    }
    check_unique(
        "proxy",
        &spec.name,
        inv.proxies.iter().map(|p| (p.id.as_str(), p.name.as_str())),
        except,
    )
}

fn validate_pool(
    inv: &Inventory,
    spec: &PoolSpec,
    except: Option<&str>,
) -> Result<(), ActionError> {
    check_name("name", &spec.name)?;
    if spec.members.is_empty() {
        return Err(invalid("members", "a pool needs at least one proxy"));
    }
    for (i, member) in spec.members.iter().enumerate() {
        if spec.members[..i].contains(member) {
            return Err(invalid("members", format!("'{member}' is listed twice")));
        }
        let proxy = inv
            .proxy(member)
            .ok_or_else(|| not_found("proxy", member))?;
        if let Some(pool) = &proxy.pool
            && Some(pool.as_str()) != except
        {
            return Err(ActionError::InUse {
                kind: "proxy",
                id: member.clone(),
                by: format!("pool '{pool}'"),
            });
        }
        if let Some(job) = inv.jobs.iter().find(|j| j.proxy.as_deref() == Some(member)) {
            return Err(ActionError::InUse {
                kind: "proxy",
                id: member.clone(),
                by: format!(
                    "job '{}' (a pool member cannot serve jobs directly)",
                    job.id
                ),
            });
        }
    }
    check_unique(
        "pool",
        &spec.name,
        inv.proxy_pools
            .iter()
            .map(|p| (p.id.as_str(), p.name.as_str())),
        except,
    )
}

fn validate_repository(
    inv: &Inventory,
    spec: &RepositorySpec,
    except: Option<&str>,
) -> Result<(), ActionError> {
    check_name("name", &spec.name)?;
    match spec.kind {
        RepositoryKind::Local => {
            if spec.path.as_deref().is_none_or(|p| p.trim().is_empty()) {
                return Err(invalid("path", "a local repository needs a path"));
            }
            if spec.bucket.is_some() {
                return Err(invalid("bucket", "only object storage has a bucket"));
            }
        }
        RepositoryKind::ObjectStorage => {
            if spec.bucket.as_deref().is_none_or(|b| b.trim().is_empty()) {
                return Err(invalid("bucket", "object storage needs a bucket"));
            }
            if spec.path.is_some() {
                return Err(invalid("path", "only a local repository has a path"));
            }
        }
    }
    if spec.capacity_bytes == 0 {
        return Err(invalid("capacity_bytes", "must be more than 0"));
    }
    if !(1..=36_500).contains(&spec.retention_days) {
        return Err(invalid("retention_days", "must be 1..=36500"));
    }
    check_unique(
        "repository",
        &spec.name,
        inv.repositories
            .iter()
            .map(|r| (r.id.as_str(), r.name.as_str())),
        except,
    )
}

fn validate_job(inv: &Inventory, spec: &JobSpec, except: Option<&str>) -> Result<(), ActionError> {
    check_name("name", &spec.name)?;
    if !inv.repositories.iter().any(|r| r.id == spec.repository) {
        return Err(not_found("repository", &spec.repository));
    }
    match (&spec.schedule, spec.kind, &spec.source) {
        (Schedule::Daily { hour, minute }, _, _) if *hour > 23 || *minute > 59 => {
            return Err(invalid("schedule", "hour must be 0..=23 and minute 0..=59"));
        }
        (Schedule::Periodically { every_minutes }, _, _) if *every_minutes < 5 => {
            return Err(invalid("schedule", "every_minutes must be at least 5"));
        }
        _ => {}
    }
    match (spec.kind, &spec.source) {
        (JobKind::M365, JobSource::Organization(org)) => {
            if !inv.organizations.iter().any(|o| o.id == *org) {
                return Err(not_found("organization", org));
            }
            match (&spec.proxy, &spec.pool) {
                (Some(proxy), None) => {
                    let p = inv.proxy(proxy).ok_or_else(|| not_found("proxy", proxy))?;
                    if let Some(pool) = &p.pool {
                        return Err(invalid(
                            "proxy",
                            format!("'{proxy}' is a member of pool '{pool}'; use the pool"),
                        ));
                    }
                }
                (None, Some(pool)) => {
                    inv.pool(pool).ok_or_else(|| not_found("pool", pool))?;
                }
                _ => return Err(invalid("proxy", "give exactly one of proxy or pool")),
            }
        }
        (JobKind::AzureVm, JobSource::AzureVms(vms)) => {
            if vms.is_empty() {
                return Err(invalid("source", "an Azure VM job needs at least one VM"));
            }
            for vm in vms {
                if !inv.azure.vms.iter().any(|v| v.id == *vm) {
                    return Err(not_found("azure_vm", vm));
                }
            }
            if spec.proxy.is_some() || spec.pool.is_some() {
                return Err(invalid(
                    "proxy",
                    "Azure VM jobs use workers, not proxies or pools",
                ));
            }
        }
        _ => return Err(invalid("source", "does not match the job kind")),
    }
    check_unique(
        "job",
        &spec.name,
        inv.jobs.iter().map(|j| (j.id.as_str(), j.name.as_str())),
        except,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_780_000_000;
    const THUMB: &str = "0123456789ABCDEF0123456789ABCDEF01234567";

    /// Local proxy-1, domain proxy-2 in pool-1, workgroup proxy-3, repo-1 local, repo-2
    /// object storage, org-1, vm-1; job-1 m365 on pool-1 → repo-1, job-2 azure → repo-2,
    /// job-3 m365 on proxy-1, disabled.
    fn fixture() -> Inventory {
        let mut inv = Inventory::empty("srv", NOW);
        let steps = [
            Action::AddProxy {
                proxy: proxy_spec("px02", ProxyKind::Domain, None),
            },
            Action::AddProxy {
                proxy: proxy_spec("wg03", ProxyKind::Workgroup, Some(THUMB)),
            },
            Action::AddPool {
                pool: PoolSpec {
                    name: "Pool A".into(),
                    members: vec!["proxy-2".into()],
                },
            },
            Action::AddRepository {
                repository: repo_spec("Local", RepositoryKind::Local),
            },
            Action::AddRepository {
                repository: repo_spec("Cloud", RepositoryKind::ObjectStorage),
            },
        ];
        for step in steps {
            apply(&mut inv, &step, NOW, true).expect("fixture step");
        }
        inv.organizations.push(Organization {
            id: "org-1".into(),
            name: "contoso.onmicrosoft.com".into(),
            region: "EMEA".into(),
            mailboxes: 100,
            sites: 10,
            teams: 5,
            proxies: Vec::new(),
        });
        inv.azure.vms.push(AzureVm {
            id: "vm-1".into(),
            name: "sql01".into(),
            region: "westeurope".into(),
            disks: 2,
            provisioned_bytes: 512 << 30,
            used_bytes: 200 << 30,
            daily_change_permille: 50,
        });
        let jobs = [
            m365_spec("Mail", None, Some("pool-1")),
            JobSpec {
                name: "Azure".into(),
                kind: JobKind::AzureVm,
                source: JobSource::AzureVms(vec!["vm-1".into()]),
                proxy: None,
                pool: None,
                repository: "repo-2".into(),
                schedule: Schedule::Daily {
                    hour: 22,
                    minute: 0,
                },
                enabled: true,
            },
            JobSpec {
                enabled: false,
                ..m365_spec("Sites", Some("proxy-1"), None)
            },
        ];
        for job in jobs {
            apply(&mut inv, &Action::AddJob { job }, NOW, true).expect("fixture job");
        }
        inv
    }

    fn proxy_spec(name: &str, kind: ProxyKind, thumb: Option<&str>) -> ProxySpec {
        ProxySpec {
            name: name.into(),
            host: format!("{name}.corp.local"),
            kind,
            certificate_thumbprint: thumb.map(str::to_owned),
            max_concurrent_tasks: 16,
        }
    }

    fn repo_spec(name: &str, kind: RepositoryKind) -> RepositorySpec {
        let local = kind == RepositoryKind::Local;
        RepositorySpec {
            name: name.into(),
            kind,
            path: local.then(|| "E:\\Backups".into()),
            bucket: (!local).then(|| "bucket-1".into()),
            capacity_bytes: 10 << 40,
            retention_days: 365,
        }
    }

    fn m365_spec(name: &str, proxy: Option<&str>, pool: Option<&str>) -> JobSpec {
        JobSpec {
            name: name.into(),
            kind: JobKind::M365,
            source: JobSource::Organization("org-1".into()),
            proxy: proxy.map(str::to_owned),
            pool: pool.map(str::to_owned),
            repository: "repo-1".into(),
            schedule: Schedule::Daily {
                hour: 22,
                minute: 0,
            },
            enabled: true,
        }
    }

    fn ok(inv: &mut Inventory, action: Action) -> ActionOutcome {
        apply(inv, &action, NOW, true)
            .unwrap_or_else(|e| panic!("{action:?} refused: {e}"))
            .0
    }

    /// Applies an action that must be refused, checks the code and that nothing changed.
    fn refused(inv: &mut Inventory, action: Action, code: &str) -> ActionError {
        let before = inv.clone();
        let err = apply(inv, &action, NOW, true).expect_err("must be refused");
        assert_eq!(err.code(), code, "{action:?}: {err}");
        assert_eq!(*inv, before, "a refused action changed the inventory");
        err
    }

    #[test]
    fn fixture_is_consistent() {
        let inv = fixture();
        assert_eq!(
            inv.proxy("proxy-2").and_then(|p| p.pool.clone()).as_deref(),
            Some("pool-1")
        );
        assert_eq!(inv.organizations[0].proxies, ["proxy-2", "proxy-1"]);
        assert_eq!(
            inv.proxy("proxy-1").map(|p| p.organizations.clone()),
            Some(vec!["org-1".to_owned()])
        );
    }

    #[test]
    fn start_and_stop_job() {
        let mut inv = fixture();
        let out = ok(
            &mut inv,
            Action::StartJob {
                job: "job-1".into(),
            },
        );
        let session = out.session.expect("session id");
        let s = inv
            .sessions
            .iter()
            .find(|s| s.id == session)
            .expect("session");
        assert_eq!(s.state, SessionState::Running);
        assert!(s.simulated);
        refused(
            &mut inv,
            Action::StartJob {
                job: "job-1".into(),
            },
            "job_running",
        );
        ok(
            &mut inv,
            Action::StopJob {
                job: "job-1".into(),
            },
        );
        assert_eq!(
            inv.job("job-1").and_then(|j| j.last_result),
            Some(JobResult::Stopped)
        );
        assert!(inv.running_session("job-1").is_none());
        refused(
            &mut inv,
            Action::StopJob {
                job: "job-1".into(),
            },
            "job_not_running",
        );
        // Azure jobs need no proxy.
        ok(
            &mut inv,
            Action::StartJob {
                job: "job-2".into(),
            },
        );
    }

    #[test]
    fn start_refusals() {
        let mut inv = fixture();
        refused(
            &mut inv,
            Action::StartJob {
                job: "job-99".into(),
            },
            "not_found",
        );
        refused(
            &mut inv,
            Action::StopJob {
                job: "job-99".into(),
            },
            "not_found",
        );
        refused(
            &mut inv,
            Action::StartJob {
                job: "job-3".into(),
            },
            "job_disabled",
        );
        ok(
            &mut inv,
            Action::SetProxyMaintenance {
                id: "proxy-2".into(),
                maintenance: true,
            },
        );
        refused(
            &mut inv,
            Action::StartJob {
                job: "job-1".into(),
            },
            "proxy_unavailable",
        );
    }

    #[test]
    fn enable_and_disable_job() {
        let mut inv = fixture();
        ok(
            &mut inv,
            Action::EnableJob {
                job: "job-3".into(),
            },
        );
        let job = inv.job("job-3").expect("job");
        assert!(job.enabled);
        assert_eq!(job.next_run_unix_secs, job.schedule.next_after(NOW));
        ok(
            &mut inv,
            Action::DisableJob {
                job: "job-3".into(),
            },
        );
        let job = inv.job("job-3").expect("job");
        assert!(!job.enabled && job.next_run_unix_secs.is_none());
        refused(
            &mut inv,
            Action::EnableJob { job: "nope".into() },
            "not_found",
        );
        refused(
            &mut inv,
            Action::DisableJob { job: "nope".into() },
            "not_found",
        );
    }

    #[test]
    fn add_edit_remove_proxy() {
        let mut inv = fixture();
        let id = ok(
            &mut inv,
            Action::AddProxy {
                proxy: proxy_spec("px04", ProxyKind::Domain, None),
            },
        )
        .target;
        assert_eq!(id, "proxy-4");
        let mut spec = proxy_spec("px04-renamed", ProxyKind::Workgroup, Some(THUMB));
        spec.max_concurrent_tasks = 32;
        ok(
            &mut inv,
            Action::EditProxy {
                id: id.clone(),
                proxy: spec,
            },
        );
        let p = inv.proxy(&id).expect("proxy");
        assert_eq!(
            (p.name.as_str(), p.kind, p.max_concurrent_tasks),
            ("px04-renamed", ProxyKind::Workgroup, 32)
        );
        ok(&mut inv, Action::RemoveProxy { id: id.clone() });
        assert!(inv.proxy(&id).is_none());
    }

    #[test]
    fn proxy_refusals() {
        let mut inv = fixture();
        refused(
            &mut inv,
            Action::AddProxy {
                proxy: proxy_spec("wg9", ProxyKind::Workgroup, None),
            },
            "certificate_required",
        );
        refused(
            &mut inv,
            Action::AddProxy {
                proxy: proxy_spec("wg9", ProxyKind::Workgroup, Some("xyz")),
            },
            "certificate_required",
        );
        refused(
            &mut inv,
            Action::EditProxy {
                id: "proxy-2".into(),
                proxy: proxy_spec("px02", ProxyKind::Workgroup, None),
            },
            "certificate_required",
        );
        refused(
            &mut inv,
            Action::AddProxy {
                proxy: proxy_spec("px9", ProxyKind::Domain, Some(THUMB)),
            },
            "invalid",
        );
        refused(
            &mut inv,
            Action::AddProxy {
                proxy: proxy_spec("PX02", ProxyKind::Domain, None),
            },
            "duplicate_name",
        );
        refused(
            &mut inv,
            Action::AddProxy {
                proxy: proxy_spec("", ProxyKind::Domain, None),
            },
            "invalid",
        );
        let mut zero = proxy_spec("px9", ProxyKind::Domain, None);
        zero.max_concurrent_tasks = 0;
        refused(&mut inv, Action::AddProxy { proxy: zero }, "invalid");
        refused(
            &mut inv,
            Action::AddProxy {
                proxy: proxy_spec("loc2", ProxyKind::Local, None),
            },
            "local_proxy",
        );
        refused(
            &mut inv,
            Action::EditProxy {
                id: "proxy-1".into(),
                proxy: proxy_spec("x", ProxyKind::Domain, None),
            },
            "local_proxy",
        );
        refused(
            &mut inv,
            Action::EditProxy {
                id: "proxy-9".into(),
                proxy: proxy_spec("x", ProxyKind::Domain, None),
            },
            "not_found",
        );
        refused(
            &mut inv,
            Action::RemoveProxy {
                id: "proxy-1".into(),
            },
            "local_proxy",
        );
        refused(
            &mut inv,
            Action::RemoveProxy {
                id: "proxy-2".into(),
            },
            "in_use",
        );
        refused(
            &mut inv,
            Action::RemoveProxy {
                id: "proxy-9".into(),
            },
            "not_found",
        );
        // A proxy used directly by a job.
        ok(
            &mut inv,
            Action::EditJob {
                id: "job-3".into(),
                job: m365_spec("Sites", Some("proxy-3"), None),
            },
        );
        refused(
            &mut inv,
            Action::RemoveProxy {
                id: "proxy-3".into(),
            },
            "in_use",
        );
    }

    #[test]
    fn maintenance() {
        let mut inv = fixture();
        ok(
            &mut inv,
            Action::SetProxyMaintenance {
                id: "proxy-3".into(),
                maintenance: true,
            },
        );
        assert_eq!(
            inv.proxy("proxy-3").map(|p| p.state),
            Some(ProxyState::Maintenance)
        );
        ok(
            &mut inv,
            Action::SetProxyMaintenance {
                id: "proxy-3".into(),
                maintenance: false,
            },
        );
        assert_eq!(
            inv.proxy("proxy-3").map(|p| p.state),
            Some(ProxyState::Online)
        );
        refused(
            &mut inv,
            Action::SetProxyMaintenance {
                id: "proxy-9".into(),
                maintenance: true,
            },
            "not_found",
        );
        ok(
            &mut inv,
            Action::StartJob {
                job: "job-1".into(),
            },
        );
        refused(
            &mut inv,
            Action::SetProxyMaintenance {
                id: "proxy-2".into(),
                maintenance: true,
            },
            "proxy_busy",
        );
        refused(
            &mut inv,
            Action::EditProxy {
                id: "proxy-2".into(),
                proxy: proxy_spec("px02", ProxyKind::Domain, None),
            },
            "proxy_busy",
        );
    }

    #[test]
    fn add_edit_remove_pool() {
        let mut inv = fixture();
        let id = ok(
            &mut inv,
            Action::AddPool {
                pool: PoolSpec {
                    name: "Pool B".into(),
                    members: vec!["proxy-3".into()],
                },
            },
        )
        .target;
        assert_eq!(
            inv.proxy("proxy-3").and_then(|p| p.pool.clone()),
            Some(id.clone())
        );
        let pool = inv.pool(&id).expect("pool");
        assert_eq!(pool.bus.streams.len(), 3);
        assert!(pool.bus.url.starts_with("nats://"));
        ok(
            &mut inv,
            Action::EditPool {
                id: "pool-1".into(),
                pool: PoolSpec {
                    name: "Pool A".into(),
                    members: vec!["proxy-2".into()],
                },
            },
        );
        ok(&mut inv, Action::RemovePool { id: id.clone() });
        assert!(inv.proxy("proxy-3").and_then(|p| p.pool.clone()).is_none());
    }

    #[test]
    fn pool_refusals() {
        let mut inv = fixture();
        let pool = |members: &[&str]| PoolSpec {
            name: "P".into(),
            members: members.iter().map(|m| m.to_string()).collect(),
        };
        refused(&mut inv, Action::AddPool { pool: pool(&[]) }, "invalid");
        refused(
            &mut inv,
            Action::AddPool {
                pool: pool(&["proxy-3", "proxy-3"]),
            },
            "invalid",
        );
        refused(
            &mut inv,
            Action::AddPool {
                pool: pool(&["proxy-9"]),
            },
            "not_found",
        );
        refused(
            &mut inv,
            Action::AddPool {
                pool: pool(&["proxy-2"]),
            },
            "in_use",
        );
        refused(
            &mut inv,
            Action::AddPool {
                pool: pool(&["proxy-1"]),
            },
            "in_use",
        ); // job-3 uses it
        refused(
            &mut inv,
            Action::AddPool {
                pool: PoolSpec {
                    name: "pool a".into(),
                    members: vec!["proxy-3".into()],
                },
            },
            "duplicate_name",
        );
        refused(
            &mut inv,
            Action::EditPool {
                id: "pool-9".into(),
                pool: pool(&["proxy-3"]),
            },
            "not_found",
        );
        refused(
            &mut inv,
            Action::RemovePool {
                id: "pool-9".into(),
            },
            "not_found",
        );
        refused(
            &mut inv,
            Action::RemovePool {
                id: "pool-1".into(),
            },
            "in_use",
        );
        ok(
            &mut inv,
            Action::StartJob {
                job: "job-1".into(),
            },
        );
        refused(
            &mut inv,
            Action::EditPool {
                id: "pool-1".into(),
                pool: pool(&["proxy-2", "proxy-3"]),
            },
            "job_running",
        );
    }

    #[test]
    fn add_edit_remove_repository() {
        let mut inv = fixture();
        let id = ok(
            &mut inv,
            Action::AddRepository {
                repository: repo_spec("Extra", RepositoryKind::ObjectStorage),
            },
        )
        .target;
        assert_eq!(id, "repo-3");
        let mut spec = repo_spec("Extra local", RepositoryKind::Local);
        spec.retention_days = 30;
        ok(
            &mut inv,
            Action::EditRepository {
                id: id.clone(),
                repository: spec,
            },
        );
        let r = inv.repositories.iter().find(|r| r.id == id).expect("repo");
        assert_eq!((r.kind, r.retention_days), (RepositoryKind::Local, 30));
        ok(&mut inv, Action::RemoveRepository { id: id.clone() });
        assert!(!inv.repositories.iter().any(|r| r.id == id));
    }

    #[test]
    fn repository_refusals() {
        let mut inv = fixture();
        let mut no_path = repo_spec("X", RepositoryKind::Local);
        no_path.path = None;
        refused(
            &mut inv,
            Action::AddRepository {
                repository: no_path,
            },
            "invalid",
        );
        let mut no_bucket = repo_spec("X", RepositoryKind::ObjectStorage);
        no_bucket.bucket = Some(" ".into());
        refused(
            &mut inv,
            Action::AddRepository {
                repository: no_bucket,
            },
            "invalid",
        );
        let mut zero = repo_spec("X", RepositoryKind::Local);
        zero.capacity_bytes = 0;
        refused(
            &mut inv,
            Action::AddRepository { repository: zero },
            "invalid",
        );
        let mut forever = repo_spec("X", RepositoryKind::Local);
        forever.retention_days = 0;
        refused(
            &mut inv,
            Action::AddRepository {
                repository: forever,
            },
            "invalid",
        );
        refused(
            &mut inv,
            Action::AddRepository {
                repository: repo_spec("local", RepositoryKind::Local),
            },
            "duplicate_name",
        );
        refused(
            &mut inv,
            Action::RemoveRepository {
                id: "repo-1".into(),
            },
            "in_use",
        );
        refused(
            &mut inv,
            Action::RemoveRepository {
                id: "repo-9".into(),
            },
            "not_found",
        );
        refused(
            &mut inv,
            Action::EditRepository {
                id: "repo-9".into(),
                repository: repo_spec("Y", RepositoryKind::Local),
            },
            "not_found",
        );
        refused(
            &mut inv,
            Action::EditRepository {
                id: "repo-1".into(),
                repository: repo_spec("Local", RepositoryKind::ObjectStorage),
            },
            "in_use",
        );
        inv.repositories[0].used_bytes = 5 << 40;
        let mut small = repo_spec("Local", RepositoryKind::Local);
        small.capacity_bytes = 1 << 40;
        refused(
            &mut inv,
            Action::EditRepository {
                id: "repo-1".into(),
                repository: small,
            },
            "invalid",
        );
    }

    #[test]
    fn add_edit_remove_job() {
        let mut inv = fixture();
        let id = ok(
            &mut inv,
            Action::AddJob {
                job: m365_spec("Teams", Some("proxy-3"), None),
            },
        )
        .target;
        assert_eq!(id, "job-4");
        assert!(
            inv.proxy("proxy-3")
                .expect("proxy")
                .organizations
                .contains(&"org-1".to_owned())
        );
        let mut spec = m365_spec("Teams nightly", None, Some("pool-1"));
        spec.schedule = Schedule::Periodically { every_minutes: 60 };
        ok(
            &mut inv,
            Action::EditJob {
                id: id.clone(),
                job: spec,
            },
        );
        let job = inv.job(&id).expect("job");
        assert_eq!(job.pool.as_deref(), Some("pool-1"));
        assert_eq!(job.next_run_unix_secs, job.schedule.next_after(NOW));
        assert!(
            inv.proxy("proxy-3")
                .expect("proxy")
                .organizations
                .is_empty()
        );
        ok(&mut inv, Action::RemoveJob { id: id.clone() });
        assert!(inv.job(&id).is_none());
    }

    #[test]
    fn job_refusals() {
        let mut inv = fixture();
        refused(
            &mut inv,
            Action::AddJob {
                job: m365_spec("Mail", Some("proxy-1"), None),
            },
            "duplicate_name",
        );
        refused(
            &mut inv,
            Action::AddJob {
                job: m365_spec("J", Some("proxy-1"), Some("pool-1")),
            },
            "invalid",
        );
        refused(
            &mut inv,
            Action::AddJob {
                job: m365_spec("J", None, None),
            },
            "invalid",
        );
        refused(
            &mut inv,
            Action::AddJob {
                job: m365_spec("J", Some("proxy-9"), None),
            },
            "not_found",
        );
        refused(
            &mut inv,
            Action::AddJob {
                job: m365_spec("J", None, Some("pool-9")),
            },
            "not_found",
        );
        refused(
            &mut inv,
            Action::AddJob {
                job: m365_spec("J", Some("proxy-2"), None),
            },
            "invalid",
        );
        refused(
            &mut inv,
            Action::AddJob {
                job: JobSpec {
                    repository: "repo-9".into(),
                    ..m365_spec("J", Some("proxy-1"), None)
                },
            },
            "not_found",
        );
        refused(
            &mut inv,
            Action::AddJob {
                job: JobSpec {
                    source: JobSource::Organization("org-9".into()),
                    ..m365_spec("J", Some("proxy-1"), None)
                },
            },
            "not_found",
        );
        refused(
            &mut inv,
            Action::AddJob {
                job: JobSpec {
                    source: JobSource::AzureVms(vec!["vm-1".into()]),
                    ..m365_spec("J", Some("proxy-1"), None)
                },
            },
            "invalid",
        );
        let azure = |vms: Vec<String>, proxy: Option<String>| JobSpec {
            name: "J".into(),
            kind: JobKind::AzureVm,
            source: JobSource::AzureVms(vms),
            proxy,
            pool: None,
            repository: "repo-2".into(),
            schedule: Schedule::Manual,
            enabled: true,
        };
        refused(
            &mut inv,
            Action::AddJob {
                job: azure(vec![], None),
            },
            "invalid",
        );
        refused(
            &mut inv,
            Action::AddJob {
                job: azure(vec!["vm-9".into()], None),
            },
            "not_found",
        );
        refused(
            &mut inv,
            Action::AddJob {
                job: azure(vec!["vm-1".into()], Some("proxy-1".into())),
            },
            "invalid",
        );
        refused(
            &mut inv,
            Action::AddJob {
                job: JobSpec {
                    schedule: Schedule::Daily {
                        hour: 24,
                        minute: 0,
                    },
                    ..m365_spec("J", Some("proxy-1"), None)
                },
            },
            "invalid",
        );
        refused(
            &mut inv,
            Action::AddJob {
                job: JobSpec {
                    schedule: Schedule::Periodically { every_minutes: 1 },
                    ..m365_spec("J", Some("proxy-1"), None)
                },
            },
            "invalid",
        );
        refused(
            &mut inv,
            Action::EditJob {
                id: "job-9".into(),
                job: m365_spec("J", Some("proxy-1"), None),
            },
            "not_found",
        );
        refused(
            &mut inv,
            Action::RemoveJob { id: "job-9".into() },
            "not_found",
        );
        ok(
            &mut inv,
            Action::StartJob {
                job: "job-1".into(),
            },
        );
        refused(
            &mut inv,
            Action::EditJob {
                id: "job-1".into(),
                job: m365_spec("Mail", None, Some("pool-1")),
            },
            "job_running",
        );
        refused(
            &mut inv,
            Action::RemoveJob { id: "job-1".into() },
            "job_running",
        );
    }

    #[test]
    fn notifications() {
        let mut inv = fixture();
        let good = Notifications {
            enabled: true,
            smtp_server: "smtp.example".into(),
            smtp_port: 587,
            use_tls: true,
            from: "backup@example".into(),
            to: vec!["ops@example".into()],
            on_success: false,
            on_warning: true,
            on_failure: true,
        };
        ok(
            &mut inv,
            Action::SetNotifications {
                notifications: good.clone(),
            },
        );
        assert_eq!(inv.server.notifications, good);
        refused(
            &mut inv,
            Action::SetNotifications {
                notifications: Notifications {
                    smtp_server: String::new(),
                    ..good.clone()
                },
            },
            "invalid",
        );
        refused(
            &mut inv,
            Action::SetNotifications {
                notifications: Notifications {
                    to: vec![],
                    ..good.clone()
                },
            },
            "invalid",
        );
        // Disabled settings may be incomplete.
        ok(
            &mut inv,
            Action::SetNotifications {
                notifications: Notifications::default(),
            },
        );
    }

    #[test]
    fn action_json_shape() {
        let json = serde_json::json!({"type": "start_job", "job": "job-1"});
        let action: Action = serde_json::from_value(json).expect("parse");
        assert_eq!(
            action,
            Action::StartJob {
                job: "job-1".into()
            }
        );
        let json = serde_json::json!({"type": "add_job", "job": {
            "name": "J", "kind": "azure_vm", "source": {"azure_vms": ["vm-1"]},
            "repository": "repo-2", "schedule": {"type": "daily", "hour": 22, "minute": 30},
            "enabled": true}});
        let action: Action = serde_json::from_value(json).expect("parse");
        assert!(matches!(action, Action::AddJob { .. }));
        let bad = serde_json::json!({"type": "start_job", "job": "job-1", "extra": 1});
        assert!(serde_json::from_value::<Action>(bad).is_err());
    }
}
