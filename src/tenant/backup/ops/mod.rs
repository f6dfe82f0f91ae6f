//! Operator actions on the backup server (start and stop jobs, edit the infrastructure), each
//! validated against the inventory and refused with an [`ActionError`] that says why. One file
//! per kind of object, each with its validator and its tests; this file holds the vocabulary
//! and the dispatch.

use serde::{Deserialize, Serialize};

use super::model::*;
use super::protocol::ErrorCode;

mod jobs;
mod notifications;
mod pools;
mod proxies;
mod repositories;
#[cfg(test)]
mod testing;

pub use jobs::JobSpec;
pub(crate) use jobs::{finish_job, start_session};
pub use pools::PoolSpec;
pub use proxies::ProxySpec;
pub use repositories::RepositorySpec;

/// An action a console asks the backup server to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum BackupAction {
    /// Start a run of an enabled job that is not running.
    StartJob { job: String },
    /// Stop a running job.
    StopJob { job: String },
    /// Let a job run (on schedule or by hand).
    EnableJob { job: String },
    /// Keep a job from running.
    DisableJob { job: String },
    /// Add a proxy.
    AddProxy { proxy: ProxySpec },
    /// Change a proxy's settings.
    EditProxy { id: String, proxy: ProxySpec },
    /// Remove a proxy no job or pool uses.
    RemoveProxy { id: String },
    /// Put a proxy into maintenance (`true`) or back online (`false`).
    SetProxyMaintenance {
        id: String,
        /// Into (`true`) or out of (`false`) maintenance.
        maintenance: bool,
    },
    /// Add a proxy pool.
    AddPool { pool: PoolSpec },
    /// Change a pool's name or members.
    EditPool { id: String, pool: PoolSpec },
    /// Remove a pool no job uses.
    RemovePool { id: String },
    /// Add a repository.
    AddRepository { repository: RepositorySpec },
    /// Change a repository's settings.
    EditRepository {
        id: String,
        repository: RepositorySpec,
    },
    /// Remove a repository no job uses.
    RemoveRepository { id: String },
    /// Add a job.
    AddJob { job: JobSpec },
    /// Change a job that is not running.
    EditJob { id: String, job: JobSpec },
    /// Remove a job that is not running (its past sessions stay).
    RemoveJob { id: String },
    /// Replace the email notification settings.
    SetNotifications { notifications: Notifications },
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
        kind: &'static str,
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
    ProxyBusy { proxy: String, job: String },
    /// Another object of the kind has that name.
    #[error("a {kind} named '{name}' already exists")]
    DuplicateName { kind: &'static str, name: String },
    /// The local proxy belongs to the server and cannot be removed or changed in kind.
    #[error("the local proxy cannot be removed or changed in kind")]
    LocalProxy,
    /// A field has a value the server cannot accept.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The field, e.g. `capacity_bytes`.
        field: &'static str,
        reason: String,
    },
}

impl ActionError {
    /// The stable code sent on the wire.
    pub fn code(&self) -> ErrorCode {
        match self {
            ActionError::NotFound { .. } => ErrorCode::NotFound,
            ActionError::JobRunning(_) => ErrorCode::JobRunning,
            ActionError::JobNotRunning(_) => ErrorCode::JobNotRunning,
            ActionError::JobDisabled(_) => ErrorCode::JobDisabled,
            ActionError::InUse { .. } => ErrorCode::InUse,
            ActionError::CertificateRequired => ErrorCode::CertificateRequired,
            ActionError::ProxyUnavailable(_) => ErrorCode::ProxyUnavailable,
            ActionError::ProxyBusy { .. } => ErrorCode::ProxyBusy,
            ActionError::DuplicateName { .. } => ErrorCode::DuplicateName,
            ActionError::LocalProxy => ErrorCode::LocalProxy,
            ActionError::Invalid { .. } => ErrorCode::Invalid,
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
/// `now_unix_secs` stamps runs and schedules; `simulated` marks new runs.
pub fn apply(
    inv: &mut Inventory,
    action: &BackupAction,
    now_unix_secs: u64,
    simulated: bool,
) -> Result<Applied, ActionError> {
    let now = now_unix_secs;
    match action {
        BackupAction::StartJob { job } => jobs::start(inv, job, now, simulated),
        BackupAction::StopJob { job } => jobs::stop(inv, job, now),
        BackupAction::EnableJob { job } => jobs::set_enabled(inv, job, true, now),
        BackupAction::DisableJob { job } => jobs::set_enabled(inv, job, false, now),
        BackupAction::AddJob { job } => jobs::add(inv, job, now),
        BackupAction::EditJob { id, job } => jobs::edit(inv, id, job, now),
        BackupAction::RemoveJob { id } => jobs::remove(inv, id),
        BackupAction::AddProxy { proxy } => proxies::add(inv, proxy),
        BackupAction::EditProxy { id, proxy } => proxies::edit(inv, id, proxy),
        BackupAction::RemoveProxy { id } => proxies::remove(inv, id),
        BackupAction::SetProxyMaintenance { id, maintenance } => {
            proxies::set_maintenance(inv, id, *maintenance)
        }
        BackupAction::AddPool { pool } => pools::add(inv, pool),
        BackupAction::EditPool { id, pool } => pools::edit(inv, id, pool),
        BackupAction::RemovePool { id } => pools::remove(inv, id),
        BackupAction::AddRepository { repository } => repositories::add(inv, repository),
        BackupAction::EditRepository { id, repository } => repositories::edit(inv, id, repository),
        BackupAction::RemoveRepository { id } => repositories::remove(inv, id),
        BackupAction::SetNotifications { notifications } => notifications::set(inv, notifications),
    }
}

/// An accepted action: what it did, and the changes for the live event stream.
pub(super) type Applied = (ActionOutcome, Vec<Change>);

/// The usual outcome: one object, one change.
fn done(target: &str, kind: &str, what: &str) -> Result<Applied, ActionError> {
    Ok((
        ActionOutcome {
            target: target.to_owned(),
            session: None,
        },
        vec![change(kind, target, what)],
    ))
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

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
    fn action_json_shape() {
        let json = serde_json::json!({"type": "start_job", "job": "job-1"});
        let action: BackupAction = serde_json::from_value(json).expect("parse");
        assert_eq!(
            action,
            BackupAction::StartJob {
                job: "job-1".into()
            }
        );
        let json = serde_json::json!({"type": "add_job", "job": {
            "name": "J", "kind": "azure_vm", "source": {"azure_vms": ["vm-1"]},
            "repository": "repo-2", "schedule": {"type": "daily", "hour": 22, "minute": 30},
            "enabled": true}});
        let action: BackupAction = serde_json::from_value(json).expect("parse");
        assert!(matches!(action, BackupAction::AddJob { .. }));
        let bad = serde_json::json!({"type": "start_job", "job": "job-1", "extra": 1});
        assert!(serde_json::from_value::<BackupAction>(bad).is_err());
    }
}
