//! The data of one tenant's backup server, as the console sees it: plain serde types with
//! no behaviour beyond lookups and keeping derived fields consistent. Actions live in `ops`,
//! the job-run simulation in `sim`.
//!
//! This file holds the inventory and the server itself; the objects it lists are in
//! `infrastructure.rs` (proxies, pools, repositories, organizations), `azure.rs` and
//! `jobs.rs` (jobs and their runs), all re-exported here.

mod azure;
mod infrastructure;
mod jobs;

pub use azure::{Azure, AzureRegion, AzureVm, EndpointKind, PrivateEndpoint, Worker, WorkerState};
pub use infrastructure::{
    BusStream, MessageBus, Organization, Proxy, ProxyKind, ProxyPool, ProxyState, Repository,
    RepositoryKind,
};
pub use jobs::{
    Job, JobKind, JobResult, JobRun, JobSource, LogLine, RunStage, RunState, RunTask, Schedule,
};

use serde::{Deserialize, Serialize};

/// Everything a console session shows of one tenant's backup server. Its JSON has exactly
/// the top-level keys `server`, `proxies`, `proxy_pools`, `repositories`, `organizations`,
/// `azure`, `jobs` and `sessions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    /// The backup server itself, with its notification settings and alarms.
    pub server: ServerInfo,
    /// Backup proxies for Microsoft 365 processing.
    pub proxies: Vec<Proxy>,
    /// Groups of proxies that share work over a message bus.
    pub proxy_pools: Vec<ProxyPool>,
    /// Where backups are stored.
    pub repositories: Vec<Repository>,
    /// Microsoft 365 organizations added to the server.
    pub organizations: Vec<Organization>,
    /// Azure VM backup: regions, workers, private endpoints, protected VMs.
    pub azure: Azure,
    pub jobs: Vec<Job>,
    /// Job runs, newest last; bounded to [`MAX_SESSIONS`].
    pub sessions: Vec<JobRun>,
}

/// How many finished sessions the server keeps (running ones are always kept).
pub const MAX_SESSIONS: usize = 200;
/// How many log lines one session keeps (the oldest are dropped first).
pub const MAX_LOG_LINES: usize = 200;
/// How many alarms the server keeps.
pub const MAX_ALARMS: usize = 100;

/// The backup server: identity, version and where it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// Host name of the backup server.
    pub name: String,
    /// Product version string.
    pub version: String,
    /// Operating system of the server.
    pub os: String,
    /// When the service started (Unix seconds).
    pub started_at_unix_secs: u64,
    /// Seconds since `started_at_unix_secs`, filled in when the server answers.
    #[serde(default)]
    pub uptime_secs: u64,
    /// Email notification settings.
    pub notifications: Notifications,
    /// Open alarms, newest last; bounded to [`MAX_ALARMS`].
    #[serde(default)]
    pub alarms: Vec<Alarm>,
}

/// SMTP settings for job result emails (sent by the proxies).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Notifications {
    /// Whether emails are sent at all.
    pub enabled: bool,
    /// SMTP server host name.
    pub smtp_server: String,
    /// SMTP server port.
    pub smtp_port: u16,
    /// Whether the connection uses TLS.
    pub use_tls: bool,
    /// Sender address.
    pub from: String,
    /// Recipient addresses.
    pub to: Vec<String>,
    /// Send on a successful run.
    pub on_success: bool,
    /// Send on a run that ended with warnings.
    pub on_warning: bool,
    /// Send on a failed run.
    pub on_failure: bool,
}

/// Something that needs an operator's attention.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alarm {
    /// When it was raised (Unix seconds).
    pub time_unix_secs: u64,
    /// How serious it is.
    pub severity: Severity,
    /// The object it is about (a job, proxy or repository id).
    pub object: String,
    /// Human-readable text.
    pub text: String,
}

/// Severity of an alarm or a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Informational.
    Info,
    /// Something went partly wrong.
    Warning,
    /// Something failed.
    Error,
}

impl Inventory {
    /// An empty server named `name` (only the local proxy), as a real install starts.
    pub fn empty(name: &str, now_unix_secs: u64) -> Self {
        Inventory {
            server: ServerInfo {
                name: name.to_owned(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                os: std::env::consts::OS.to_owned(),
                started_at_unix_secs: now_unix_secs,
                uptime_secs: 0,
                notifications: Notifications::default(),
                alarms: Vec::new(),
            },
            proxies: vec![Proxy {
                id: "proxy-1".into(),
                name: "Local backup proxy".into(),
                host: name.to_owned(),
                kind: ProxyKind::Local,
                certificate_thumbprint: None,
                state: ProxyState::Online,
                max_concurrent_tasks: 8,
                organizations: Vec::new(),
                pool: None,
            }],
            proxy_pools: Vec::new(),
            repositories: Vec::new(),
            organizations: Vec::new(),
            azure: Azure::default(),
            jobs: Vec::new(),
            sessions: Vec::new(),
        }
    }

    /// The job with this id.
    pub fn job(&self, id: &str) -> Option<&Job> {
        self.jobs.iter().find(|j| j.id == id)
    }

    /// The proxy with this id.
    pub fn proxy(&self, id: &str) -> Option<&Proxy> {
        self.proxies.iter().find(|p| p.id == id)
    }

    /// The pool with this id.
    pub fn pool(&self, id: &str) -> Option<&ProxyPool> {
        self.proxy_pools.iter().find(|p| p.id == id)
    }

    /// The running session of a job, if any.
    pub fn running_session(&self, job: &str) -> Option<&JobRun> {
        self.sessions
            .iter()
            .find(|s| s.job == job && s.state == RunState::Running)
    }

    /// Proxy ids a job's work goes to: its proxy, or its pool's members.
    pub fn job_proxies(&self, job: &Job) -> Vec<String> {
        match (&job.proxy, &job.pool) {
            (Some(p), _) => vec![p.clone()],
            (None, Some(pool)) => self
                .pool(pool)
                .map(|p| p.members.clone())
                .unwrap_or_default(),
            (None, None) => Vec::new(),
        }
    }

    /// Recomputes the derived fields: `proxy.pool` from the pools' members,
    /// `proxy.organizations` and `organization.proxies` from the Microsoft 365 jobs.
    pub fn normalize(&mut self) {
        for proxy in &mut self.proxies {
            proxy.pool = self
                .proxy_pools
                .iter()
                .find(|pool| pool.members.contains(&proxy.id))
                .map(|pool| pool.id.clone());
            proxy.organizations.clear();
        }
        for org in &mut self.organizations {
            org.proxies.clear();
        }
        let pairs: Vec<(String, String)> = self
            .jobs
            .iter()
            .filter_map(|job| match &job.source {
                JobSource::Organization(org) => Some((org.clone(), self.job_proxies(job))),
                JobSource::AzureVms(_) => None,
            })
            .flat_map(|(org, proxies)| proxies.into_iter().map(move |p| (org.clone(), p)))
            .collect();
        for (org_id, proxy_id) in pairs {
            if let Some(proxy) = self.proxies.iter_mut().find(|p| p.id == proxy_id)
                && !proxy.organizations.contains(&org_id)
            {
                proxy.organizations.push(org_id.clone());
            }
            if let Some(org) = self.organizations.iter_mut().find(|o| o.id == org_id)
                && !org.proxies.contains(&proxy_id)
            {
                org.proxies.push(proxy_id);
            }
        }
    }

    /// Drops the oldest finished sessions beyond [`MAX_SESSIONS`] and old alarms.
    pub fn trim(&mut self) {
        let finished = self
            .sessions
            .iter()
            .filter(|s| s.state != RunState::Running)
            .count();
        let mut excess = finished.saturating_sub(MAX_SESSIONS);
        self.sessions.retain(|s| {
            if excess > 0 && s.state != RunState::Running {
                excess -= 1;
                false
            } else {
                true
            }
        });
        let alarms = &mut self.server.alarms;
        if alarms.len() > MAX_ALARMS {
            alarms.drain(..alarms.len() - MAX_ALARMS);
        }
    }

    /// A fresh id `prefix-N` with N one above the highest in use.
    pub fn next_id<'a>(prefix: &str, ids: impl Iterator<Item = &'a str>) -> String {
        let max = ids
            .filter_map(|id| {
                id.strip_prefix(prefix)?
                    .strip_prefix('-')?
                    .parse::<u64>()
                    .ok()
            })
            .max()
            .unwrap_or(0);
        format!("{prefix}-{}", max + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inventory_json_has_exactly_the_eight_keys() {
        let inv = Inventory::empty("srv", 0);
        let value = serde_json::to_value(&inv).expect("serialize");
        let mut keys: Vec<&str> = value
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "azure",
                "jobs",
                "organizations",
                "proxies",
                "proxy_pools",
                "repositories",
                "server",
                "sessions"
            ]
        );
    }

    #[test]
    fn next_id_is_above_the_highest() {
        let ids = ["job-1", "job-7", "jobx-99", "job-abc"];
        assert_eq!(Inventory::next_id("job", ids.into_iter()), "job-8");
        assert_eq!(Inventory::next_id("job", std::iter::empty()), "job-1");
    }
}
