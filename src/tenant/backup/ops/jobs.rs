//! Jobs: start and stop runs, enable and disable, add, edit and remove; and the bookkeeping
//! of a run's start and end that the simulation shares.

use serde::{Deserialize, Serialize};

use super::{
    ActionError, ActionOutcome, Applied, change, check_name, check_unique, done, invalid, not_found,
};
use crate::tenant::backup::model::*;

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

/// Starts a run of an enabled job that is not running.
pub(super) fn start(
    inv: &mut Inventory,
    job: &str,
    now: u64,
    simulated: bool,
) -> Result<Applied, ActionError> {
    let j = inv.job(job).ok_or_else(|| not_found("job", job))?;
    if !j.enabled {
        return Err(ActionError::JobDisabled(job.to_owned()));
    }
    if inv.running_session(job).is_some() {
        return Err(ActionError::JobRunning(job.to_owned()));
    }
    if j.kind == JobKind::M365 {
        let usable = inv
            .job_proxies(j)
            .iter()
            .filter_map(|p| inv.proxy(p))
            .any(|p| p.state == ProxyState::Online);
        if !usable {
            return Err(ActionError::ProxyUnavailable(job.to_owned()));
        }
    }
    let session = start_session(inv, job, now, simulated);
    Ok((
        ActionOutcome {
            target: job.to_owned(),
            session: Some(session.clone()),
        },
        vec![
            change("job", job, "started"),
            change("session", &session, "added"),
        ],
    ))
}

/// Stops a running job.
pub(super) fn stop(inv: &mut Inventory, job: &str, now: u64) -> Result<Applied, ActionError> {
    inv.job(job).ok_or_else(|| not_found("job", job))?;
    let session = inv
        .sessions
        .iter_mut()
        .find(|s| s.job == *job && s.state == RunState::Running)
        .ok_or_else(|| ActionError::JobNotRunning(job.to_owned()))?;
    session.state = RunState::Stopped;
    session.stage = RunStage::Done;
    session.rate_bytes_per_sec = 0;
    session.ended_at_unix_secs = Some(now);
    session.push_log(now, Severity::Warning, "Job stopped by an operator".into());
    let session_id = session.id.clone();
    finish_job(inv, job, JobResult::Stopped, now);
    Ok((
        ActionOutcome {
            target: job.to_owned(),
            session: Some(session_id),
        },
        vec![change("job", job, "stopped")],
    ))
}

/// Lets a job run (on schedule or by hand), or keeps it from running.
pub(super) fn set_enabled(
    inv: &mut Inventory,
    job: &str,
    enable: bool,
    now: u64,
) -> Result<Applied, ActionError> {
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

/// Adds a job.
pub(super) fn add(inv: &mut Inventory, job: &JobSpec, now: u64) -> Result<Applied, ActionError> {
    validate_job(inv, job, None)?;
    let id = Inventory::next_id("job", inv.jobs.iter().map(|j| j.id.as_str()));
    inv.jobs.push(Job {
        id: id.to_owned(),
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

/// Changes a job that is not running.
pub(super) fn edit(
    inv: &mut Inventory,
    id: &str,
    job: &JobSpec,
    now: u64,
) -> Result<Applied, ActionError> {
    inv.job(id).ok_or_else(|| not_found("job", id))?;
    if inv.running_session(id).is_some() {
        return Err(ActionError::JobRunning(id.to_owned()));
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

/// Removes a job that is not running (its past runs stay).
pub(super) fn remove(inv: &mut Inventory, id: &str) -> Result<Applied, ActionError> {
    inv.job(id).ok_or_else(|| not_found("job", id))?;
    if inv.running_session(id).is_some() {
        return Err(ActionError::JobRunning(id.to_owned()));
    }
    inv.jobs.retain(|j| j.id != *id);
    inv.normalize();
    done(id, "job", "removed")
}

/// Creates a running session for `job` (checks already done) and returns its id. The
/// simulation fills in the stages from the next tick on.
pub(crate) fn start_session(inv: &mut Inventory, job: &str, now: u64, simulated: bool) -> String {
    let id = Inventory::next_id("session", inv.sessions.iter().map(|s| s.id.as_str()));
    let name = inv.job(job).map(|j| j.name.clone()).unwrap_or_default();
    let mut session = JobRun {
        id: id.clone(),
        job: job.to_owned(),
        job_name: name.clone(),
        state: RunState::Running,
        stage: RunStage::Pending,
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
    use super::super::testing::*;
    use super::super::*;

    #[test]
    fn start_and_stop_job() {
        let mut inv = fixture();
        let out = ok(
            &mut inv,
            BackupAction::StartJob {
                job: "job-1".into(),
            },
        );
        let session = out.session.expect("session id");
        let s = inv
            .sessions
            .iter()
            .find(|s| s.id == session)
            .expect("session");
        assert_eq!(s.state, RunState::Running);
        assert!(s.simulated);
        refused(
            &mut inv,
            BackupAction::StartJob {
                job: "job-1".into(),
            },
            "job_running",
        );
        ok(
            &mut inv,
            BackupAction::StopJob {
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
            BackupAction::StopJob {
                job: "job-1".into(),
            },
            "job_not_running",
        );
        // Azure jobs need no proxy.
        ok(
            &mut inv,
            BackupAction::StartJob {
                job: "job-2".into(),
            },
        );
    }

    #[test]
    fn start_refusals() {
        let mut inv = fixture();
        refused(
            &mut inv,
            BackupAction::StartJob {
                job: "job-99".into(),
            },
            "not_found",
        );
        refused(
            &mut inv,
            BackupAction::StopJob {
                job: "job-99".into(),
            },
            "not_found",
        );
        refused(
            &mut inv,
            BackupAction::StartJob {
                job: "job-3".into(),
            },
            "job_disabled",
        );
        ok(
            &mut inv,
            BackupAction::SetProxyMaintenance {
                id: "proxy-2".into(),
                maintenance: true,
            },
        );
        refused(
            &mut inv,
            BackupAction::StartJob {
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
            BackupAction::EnableJob {
                job: "job-3".into(),
            },
        );
        let job = inv.job("job-3").expect("job");
        assert!(job.enabled);
        assert_eq!(job.next_run_unix_secs, job.schedule.next_after(NOW));
        ok(
            &mut inv,
            BackupAction::DisableJob {
                job: "job-3".into(),
            },
        );
        let job = inv.job("job-3").expect("job");
        assert!(!job.enabled && job.next_run_unix_secs.is_none());
        refused(
            &mut inv,
            BackupAction::EnableJob { job: "nope".into() },
            "not_found",
        );
        refused(
            &mut inv,
            BackupAction::DisableJob { job: "nope".into() },
            "not_found",
        );
    }

    #[test]
    fn add_edit_remove_job() {
        let mut inv = fixture();
        let id = ok(
            &mut inv,
            BackupAction::AddJob {
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
            BackupAction::EditJob {
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
        ok(&mut inv, BackupAction::RemoveJob { id: id.clone() });
        assert!(inv.job(&id).is_none());
    }

    #[test]
    fn job_refusals() {
        let mut inv = fixture();
        refused(
            &mut inv,
            BackupAction::AddJob {
                job: m365_spec("Mail", Some("proxy-1"), None),
            },
            "duplicate_name",
        );
        refused(
            &mut inv,
            BackupAction::AddJob {
                job: m365_spec("J", Some("proxy-1"), Some("pool-1")),
            },
            "invalid",
        );
        refused(
            &mut inv,
            BackupAction::AddJob {
                job: m365_spec("J", None, None),
            },
            "invalid",
        );
        refused(
            &mut inv,
            BackupAction::AddJob {
                job: m365_spec("J", Some("proxy-9"), None),
            },
            "not_found",
        );
        refused(
            &mut inv,
            BackupAction::AddJob {
                job: m365_spec("J", None, Some("pool-9")),
            },
            "not_found",
        );
        refused(
            &mut inv,
            BackupAction::AddJob {
                job: m365_spec("J", Some("proxy-2"), None),
            },
            "invalid",
        );
        refused(
            &mut inv,
            BackupAction::AddJob {
                job: JobSpec {
                    repository: "repo-9".into(),
                    ..m365_spec("J", Some("proxy-1"), None)
                },
            },
            "not_found",
        );
        refused(
            &mut inv,
            BackupAction::AddJob {
                job: JobSpec {
                    source: JobSource::Organization("org-9".into()),
                    ..m365_spec("J", Some("proxy-1"), None)
                },
            },
            "not_found",
        );
        refused(
            &mut inv,
            BackupAction::AddJob {
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
            BackupAction::AddJob {
                job: azure(vec![], None),
            },
            "invalid",
        );
        refused(
            &mut inv,
            BackupAction::AddJob {
                job: azure(vec!["vm-9".into()], None),
            },
            "not_found",
        );
        refused(
            &mut inv,
            BackupAction::AddJob {
                job: azure(vec!["vm-1".into()], Some("proxy-1".into())),
            },
            "invalid",
        );
        refused(
            &mut inv,
            BackupAction::AddJob {
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
            BackupAction::AddJob {
                job: JobSpec {
                    schedule: Schedule::Periodically { every_minutes: 1 },
                    ..m365_spec("J", Some("proxy-1"), None)
                },
            },
            "invalid",
        );
        refused(
            &mut inv,
            BackupAction::EditJob {
                id: "job-9".into(),
                job: m365_spec("J", Some("proxy-1"), None),
            },
            "not_found",
        );
        refused(
            &mut inv,
            BackupAction::RemoveJob { id: "job-9".into() },
            "not_found",
        );
        ok(
            &mut inv,
            BackupAction::StartJob {
                job: "job-1".into(),
            },
        );
        refused(
            &mut inv,
            BackupAction::EditJob {
                id: "job-1".into(),
                job: m365_spec("Mail", None, Some("pool-1")),
            },
            "job_running",
        );
        refused(
            &mut inv,
            BackupAction::RemoveJob { id: "job-1".into() },
            "job_running",
        );
    }
}
