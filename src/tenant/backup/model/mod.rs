//! The data of one tenant's backup server, as the console sees it: plain serde types with
//! no behaviour beyond lookups and keeping derived fields consistent. Actions live in `ops`,
//! the job-run simulation in `sim`.

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

/// How a backup proxy is connected to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProxyKind {
    /// The proxy role on the backup server itself.
    Local,
    /// A machine in the server's domain or a trusted domain (credentials).
    Domain,
    /// A machine in a workgroup (SSL certificate).
    Workgroup,
}

/// Whether a proxy takes work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProxyState {
    /// Reachable and taking tasks.
    Online,
    /// Not reachable.
    Offline,
    /// Put aside by an operator; takes no tasks.
    Maintenance,
}

/// A backup proxy server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proxy {
    /// Stable id (`proxy-N`).
    pub id: String,
    pub name: String,
    /// Host name or address.
    pub host: String,
    /// Local, domain or workgroup.
    pub kind: ProxyKind,
    /// SHA-1 thumbprint (40 hex digits) of the proxy's SSL certificate; required for workgroup proxies.
    pub certificate_thumbprint: Option<String>,
    /// Online, offline or in maintenance.
    pub state: ProxyState,
    /// How many tasks it runs at once.
    pub max_concurrent_tasks: u32,
    /// Organization ids it processes (derived from the jobs that use it).
    pub organizations: Vec<String>,
    /// The pool it belongs to, if any (derived from the pools' members).
    pub pool: Option<String>,
}

/// A group of proxies that balance the work of a job between them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProxyPool {
    /// Stable id (`pool-N`).
    pub id: String,
    pub name: String,
    /// Proxy ids in the pool.
    pub members: Vec<String>,
    /// The message bus the members talk over.
    pub bus: MessageBus,
}

/// The NATS server (with JetStream) that a pool's members use to exchange work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageBus {
    /// `nats://host:port` of the bus server.
    pub url: String,
    /// JetStream streams the pool uses.
    pub streams: Vec<BusStream>,
}

/// One JetStream stream and its counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BusStream {
    pub name: String,
    /// Subjects bound to the stream.
    pub subjects: Vec<String>,
    /// Messages stored.
    pub messages: u64,
    /// Bytes stored.
    pub bytes: u64,
    /// Consumers attached (one per member).
    pub consumers: u32,
}

/// Where a repository keeps its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RepositoryKind {
    /// A folder on a proxy or the server (`path`).
    Local,
    /// An object storage bucket (`bucket`).
    ObjectStorage,
}

/// A backup repository.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Repository {
    /// Stable id (`repo-N`).
    pub id: String,
    pub name: String,
    /// Local folder or object storage.
    pub kind: RepositoryKind,
    /// Folder, for `local`.
    pub path: Option<String>,
    /// Bucket (and prefix), for `object_storage`.
    pub bucket: Option<String>,
    /// Total capacity.
    pub capacity_bytes: u64,
    /// Space in use.
    pub used_bytes: u64,
    /// How long restore points are kept.
    pub retention_days: u32,
}

/// A Microsoft 365 organization.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Organization {
    /// Stable id (`org-N`).
    pub id: String,
    /// Tenant domain, e.g. `contoso.onmicrosoft.com`.
    pub name: String,
    /// Microsoft 365 region.
    pub region: String,
    /// Mailboxes to protect.
    pub mailboxes: u32,
    /// SharePoint sites.
    pub sites: u32,
    pub teams: u32,
    /// Proxy ids that process it (derived from the jobs).
    pub proxies: Vec<String>,
}

/// Azure VM backup on this server.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Azure {
    /// Regions with worker infrastructure.
    pub regions: Vec<AzureRegion>,
    /// Protected virtual machines.
    pub vms: Vec<AzureVm>,
}

/// The worker infrastructure in one Azure region (private network deployment).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AzureRegion {
    /// Region name, e.g. `westeurope`.
    pub name: String,
    /// Virtual network the workers run in.
    pub vnet: String,
    /// Storage account holding worker binaries and queues.
    pub storage_account: String,
    /// Worker instances.
    pub workers: Vec<Worker>,
    /// Private endpoints in the workers' network.
    pub private_endpoints: Vec<PrivateEndpoint>,
}

/// A worker instance (a short-lived Linux VM that moves the data).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Worker {
    pub id: String,
    /// Azure VM size.
    pub vm_size: String,
    /// Lifecycle state.
    pub state: WorkerState,
}

/// Lifecycle of a worker instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// Stopped and not billed.
    Deallocated,
    /// Being created and configured.
    Deploying,
    /// Processing a VM.
    Running,
    /// Being stopped.
    Deallocating,
}

/// What a private endpoint gives access to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointKind {
    /// Azure Blob Storage (worker binaries, backup data).
    Blob,
    /// Azure Queue Storage (talking to the workers).
    Queue,
    /// Disk access resources (reading snapshots).
    DiskAccess,
}

/// A private endpoint in a region's worker network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrivateEndpoint {
    pub name: String,
    /// Blob, queue or disk access.
    pub kind: EndpointKind,
    /// Private address in the vnet.
    pub address: String,
    /// Whether the endpoint is approved and usable.
    pub connected: bool,
}

/// A protected Azure VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AzureVm {
    /// Stable id (`vm-N`).
    pub id: String,
    /// VM name.
    pub name: String,
    /// Region it runs in.
    pub region: String,
    /// Number of attached disks.
    pub disks: u32,
    /// Provisioned size of all disks.
    pub provisioned_bytes: u64,
    /// Space actually written on the disks.
    pub used_bytes: u64,
    /// Share of the used space that changes per day, in thousandths (45 = 4.5 %).
    pub daily_change_permille: u32,
}

/// What a job protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// Microsoft 365 mailboxes, sites and teams of one organization.
    M365,
    /// Azure virtual machines.
    AzureVm,
}

/// The objects a job processes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobSource {
    /// One Microsoft 365 organization (by id).
    Organization(String),
    /// Azure VMs (by id).
    AzureVms(Vec<String>),
}

/// When a job runs by itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Schedule {
    /// Only when started by hand.
    Manual,
    /// Once a day at `hour:minute` UTC.
    Daily {
        /// Hour of day (0..24).
        hour: u8,
        /// Minute (0..60).
        minute: u8,
    },
    /// Every `every_minutes` minutes.
    Periodically {
        /// Interval in minutes (at least 5).
        every_minutes: u32,
    },
}

impl Schedule {
    /// The first run time strictly after `now_unix_secs`, if the schedule has one.
    pub fn next_after(&self, now_unix_secs: u64) -> Option<u64> {
        match *self {
            Schedule::Manual => None,
            Schedule::Daily { hour, minute } => {
                let day = now_unix_secs - now_unix_secs % 86_400;
                let at = day + u64::from(hour) * 3600 + u64::from(minute) * 60;
                Some(if at > now_unix_secs { at } else { at + 86_400 })
            }
            Schedule::Periodically { every_minutes } => {
                let period = u64::from(every_minutes.max(1)) * 60;
                Some(now_unix_secs - now_unix_secs % period + period)
            }
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobResult {
    /// Everything was processed.
    Success,
    /// Finished, but some objects were skipped or retried.
    Warning,
    /// The run failed.
    Failed,
    /// Stopped by an operator.
    Stopped,
}

/// A backup job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Stable id (`job-N`).
    pub id: String,
    pub name: String,
    /// Microsoft 365 or Azure VM.
    pub kind: JobKind,
    /// What it protects.
    pub source: JobSource,
    /// The proxy that processes it (Microsoft 365 only; exclusive with `pool`).
    pub proxy: Option<String>,
    /// The pool that processes it (Microsoft 365 only; exclusive with `proxy`).
    pub pool: Option<String>,
    /// Target repository id.
    pub repository: String,
    /// When it runs by itself.
    pub schedule: Schedule,
    /// Disabled jobs neither run on schedule nor can be started.
    pub enabled: bool,
    /// How the last run ended.
    pub last_result: Option<JobResult>,
    /// When the last run ended (Unix seconds).
    pub last_run_unix_secs: Option<u64>,
    /// When it runs next (Unix seconds), if enabled and scheduled.
    pub next_run_unix_secs: Option<u64>,
}

/// State of a job run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// In progress.
    Running,
    /// Finished without problems.
    Success,
    /// Finished with warnings.
    Warning,
    /// Failed.
    Failed,
    /// Stopped by an operator.
    Stopped,
}

impl RunState {
    /// The job result a finished session state maps to (`None` while running).
    pub fn result(self) -> Option<JobResult> {
        match self {
            RunState::Running => None,
            RunState::Success => Some(JobResult::Success),
            RunState::Warning => Some(JobResult::Warning),
            RunState::Failed => Some(JobResult::Failed),
            RunState::Stopped => Some(JobResult::Stopped),
        }
    }
}

/// The stage a run is in. Azure VM runs go snapshot → worker deployment → reading changed
/// blocks → compressing → transferring → removing access → deallocating worker; Microsoft 365
/// runs go connecting → processing (tasks spread over proxies) → finalizing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStage {
    /// Queued, not started yet.
    Pending,
    /// Azure: creating disk snapshots.
    Snapshot,
    /// Azure: starting a worker in the VM's region.
    WorkerDeployment,
    /// Azure: reading changed blocks from the snapshot.
    ReadingChangedBlocks,
    /// Azure: compressing read data.
    Compressing,
    /// Azure: writing to the repository.
    Transferring,
    /// Azure: removing SAS access to the snapshots.
    RemovingAccess,
    /// Azure: deallocating the worker.
    DeallocatingWorker,
    /// Microsoft 365: connecting to the organization.
    Connecting,
    /// Microsoft 365: processing mailboxes, sites and teams.
    Processing,
    /// Microsoft 365: committing the restore point.
    Finalizing,
    /// Finished.
    Done,
}

/// One task of a Microsoft 365 run: a share of the objects given to one proxy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunTask {
    /// Proxy id running it.
    pub proxy: String,
    /// Objects given to this proxy.
    pub objects_total: u32,
    /// Objects done.
    pub objects_done: u32,
}

/// One line of a session log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    /// When (Unix seconds).
    pub time_unix_secs: u64,
    /// Info, warning or error.
    pub severity: Severity,
    pub text: String,
}

/// One run of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRun {
    /// Stable id (`session-N`).
    pub id: String,
    pub job: String,
    /// Job name at the time of the run.
    pub job_name: String,
    /// Running or how it ended.
    pub state: RunState,
    pub stage: RunStage,
    /// Overall progress, 0..=1.
    pub progress: f64,
    /// Bytes read from the source.
    pub bytes_read: u64,
    /// Bytes written to the repository (after compression).
    pub bytes_transferred: u64,
    /// Current processing rate.
    pub rate_bytes_per_sec: u64,
    /// When it started (Unix seconds).
    pub started_at_unix_secs: u64,
    /// When it ended (Unix seconds).
    pub ended_at_unix_secs: Option<u64>,
    /// Microsoft 365 tasks per proxy (empty for Azure runs).
    #[serde(default)]
    pub tasks: Vec<RunTask>,
    /// Log, oldest first; bounded to [`MAX_LOG_LINES`].
    pub log: Vec<LogLine>,
    /// True when the run is a simulation (lab tenants), not real work.
    pub simulated: bool,
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

impl JobRun {
    /// Appends a log line, dropping the oldest beyond [`MAX_LOG_LINES`].
    pub fn push_log(&mut self, time_unix_secs: u64, severity: Severity, text: String) -> LogLine {
        let line = LogLine {
            time_unix_secs,
            severity,
            text,
        };
        self.log.push(line.clone());
        if self.log.len() > MAX_LOG_LINES {
            self.log.remove(0);
        }
        line
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
    fn schedule_next_run() {
        let day = 86_400 * 100;
        let daily = Schedule::Daily {
            hour: 22,
            minute: 0,
        };
        assert_eq!(daily.next_after(day + 3600), Some(day + 22 * 3600));
        assert_eq!(
            daily.next_after(day + 22 * 3600),
            Some(day + 86_400 + 22 * 3600)
        );
        let every = Schedule::Periodically { every_minutes: 30 };
        assert_eq!(every.next_after(day + 60), Some(day + 1800));
        assert_eq!(Schedule::Manual.next_after(day), None);
    }

    #[test]
    fn next_id_is_above_the_highest() {
        let ids = ["job-1", "job-7", "jobx-99", "job-abc"];
        assert_eq!(Inventory::next_id("job", ids.into_iter()), "job-8");
        assert_eq!(Inventory::next_id("job", std::iter::empty()), "job-1");
    }
}
