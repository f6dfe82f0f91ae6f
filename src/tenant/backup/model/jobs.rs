//! Jobs (what they protect, when they run, how the last run ended) and their runs, with
//! each run's stage, progress, tasks and log.

use serde::{Deserialize, Serialize};

use super::{MAX_LOG_LINES, Severity};

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
}
