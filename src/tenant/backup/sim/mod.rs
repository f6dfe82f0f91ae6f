//! Simulated job runs for lab tenants. Each running session follows the stages of its kind
//! (Azure VM: snapshot, worker deployment, reading changed blocks, compressing, transferring,
//! removing access, deallocating the worker; Microsoft 365: connecting, objects processed in
//! tasks spread over the proxies of the job's pool, finalizing) with plausible sizes and rates.
//! [`Simulator::tick`] advances everything by `dt`; it is deterministic for a seed.
//!
//! This file keeps what every run shares (the plan of stages, progress, ending a run);
//! `azure.rs` and `m365.rs` hold what each kind of job does in its stages.

mod azure;
mod m365;

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::model::*;
use super::ops::{finish_job, start_session};
use super::protocol::BackupEvent;

const MB: f64 = 1024.0 * 1024.0;

/// Advances simulated sessions and starts scheduled jobs.
#[derive(Debug)]
pub struct Simulator {
    rng: StdRng,
    plans: HashMap<String, Plan>,
}

/// What one tick did.
#[derive(Debug, Default)]
pub struct TickOutput {
    /// Events for subscribers, in order.
    pub events: Vec<BackupEvent>,
    /// Whether a session started or ended (worth persisting now rather than later).
    pub sessions_changed: bool,
}

#[derive(Debug)]
struct Plan {
    stages: Vec<StagePlan>,
    current: usize,
    elapsed_secs: f64,
    outcome: RunState,
    detail: Detail,
}

#[derive(Debug)]
struct StagePlan {
    stage: RunStage,
    duration_secs: f64,
    weight: f64,
}

impl StagePlan {
    /// A stage that lasts `duration_secs` (at least one second) and is `weight` of the run's
    /// progress.
    fn new(stage: RunStage, duration_secs: f64, weight: f64) -> Self {
        StagePlan {
            stage,
            duration_secs: duration_secs.max(1.0),
            weight,
        }
    }
}

/// What a run of each kind keeps besides its stages.
#[derive(Debug)]
enum Detail {
    Azure(azure::AzureRun),
    M365(m365::M365Run),
}

impl Simulator {
    /// A simulator whose random choices follow `seed`.
    pub fn new(seed: u64) -> Self {
        Simulator {
            rng: StdRng::seed_from_u64(seed),
            plans: HashMap::new(),
        }
    }

    /// Advances every running session by `dt_secs` of simulated time and starts enabled
    /// jobs whose `next_run` has come. `now_unix_secs` stamps logs and results.
    pub fn tick(&mut self, inv: &mut Inventory, now_unix_secs: u64, dt_secs: f64) -> TickOutput {
        let mut out = TickOutput::default();
        self.start_scheduled(inv, now_unix_secs, &mut out);

        // Forget plans of sessions that ended outside the simulation (stopped by an operator).
        let running: Vec<String> = inv
            .sessions
            .iter()
            .filter(|s| s.state == RunState::Running)
            .map(|s| s.id.clone())
            .collect();
        let stale: Vec<String> = self
            .plans
            .keys()
            .filter(|id| !running.contains(id))
            .cloned()
            .collect();
        for id in stale {
            if let Some(plan) = self.plans.remove(&id) {
                release_worker(inv, &plan, &mut out);
            }
        }

        for id in running {
            if !self.plans.contains_key(&id) {
                match self.plan(inv, &id) {
                    Ok(plan) => {
                        self.plans.insert(id.clone(), plan);
                    }
                    Err(reason) => {
                        end_session(inv, &id, RunState::Failed, &reason, now_unix_secs, &mut out);
                        continue;
                    }
                }
            }
            self.advance(inv, &id, now_unix_secs, dt_secs, &mut out);
        }
        out
    }

    fn start_scheduled(&mut self, inv: &mut Inventory, now: u64, out: &mut TickOutput) {
        let due: Vec<String> = inv
            .jobs
            .iter()
            .filter(|j| j.enabled && j.next_run_unix_secs.is_some_and(|t| t <= now))
            .map(|j| j.id.clone())
            .collect();
        for job in due {
            if let Some(j) = inv.jobs.iter_mut().find(|j| j.id == job) {
                j.next_run_unix_secs = j.schedule.next_after(now);
            }
            if inv.running_session(&job).is_some() {
                continue;
            }
            let session = start_session(inv, &job, now, true);
            out.sessions_changed = true;
            out.events.push(BackupEvent::SessionState {
                session,
                job,
                state: RunState::Running,
            });
        }
    }

    fn plan(&mut self, inv: &mut Inventory, session_id: &str) -> Result<Plan, String> {
        let rng = &mut self.rng;
        let job_id = inv
            .sessions
            .iter()
            .find(|s| s.id == session_id)
            .map(|s| s.job.clone())
            .unwrap_or_default();
        let job = inv.job(&job_id).cloned().ok_or("the job was removed")?;
        let first_run = job.last_result.is_none();
        let outcome = match rng.random_range(0..100) {
            0..=89 => RunState::Success,
            90..=96 => RunState::Warning,
            _ => RunState::Failed,
        };
        let (stages, detail) = match &job.source {
            JobSource::AzureVms(vm_ids) => azure::plan(inv, rng, vm_ids, first_run)?,
            JobSource::Organization(org_id) => {
                m365::plan(inv, rng, &job, org_id, session_id, first_run)?
            }
        };
        Ok(Plan {
            stages,
            current: 0,
            elapsed_secs: 0.0,
            outcome,
            detail,
        })
    }

    fn advance(&mut self, inv: &mut Inventory, id: &str, now: u64, dt: f64, out: &mut TickOutput) {
        let Some(mut plan) = self.plans.remove(id) else {
            return;
        };
        let Some(idx) = inv.sessions.iter().position(|s| s.id == id) else {
            return;
        };
        let mut logs: Vec<(Severity, String)> = Vec::new();
        let mut remaining = dt;
        let mut finished = false;
        while remaining > 0.0 {
            let Some(stage) = plan.stages.get(plan.current) else {
                finished = true;
                break;
            };
            let stage_kind = stage.stage;
            if plan.elapsed_secs == 0.0 {
                enter_stage(inv, &plan, stage_kind, &mut logs, out);
            }
            let step_done = if stage_kind == RunStage::Processing {
                let done =
                    m365::process_objects(&mut self.rng, inv, idx, &mut plan, remaining, &mut logs);
                remaining = 0.0;
                done
            } else {
                let left = stage.duration_secs - plan.elapsed_secs;
                let step = remaining.min(left);
                plan.elapsed_secs += step;
                remaining -= step;
                plan.elapsed_secs >= stage.duration_secs
            };
            if step_done {
                plan.current += 1;
                plan.elapsed_secs = 0.0;
            }
            update_figures(&mut inv.sessions[idx], &plan, dt);
        }
        if plan.current >= plan.stages.len() {
            finished = true;
        }
        let session = &mut inv.sessions[idx];
        let job = session.job.clone();
        for (severity, text) in logs {
            let line = session.push_log(now, severity, text);
            out.events.push(BackupEvent::LogLine {
                session: id.to_owned(),
                job: job.clone(),
                line,
            });
        }
        out.events.push(BackupEvent::JobProgress {
            session: id.to_owned(),
            job: job.clone(),
            stage: session.stage,
            progress: session.progress,
            bytes_read: session.bytes_read,
            bytes_transferred: session.bytes_transferred,
            rate_bytes_per_sec: session.rate_bytes_per_sec,
        });
        if finished {
            let bytes = session.bytes_transferred;
            let repo = inv.job(&job).map(|j| j.repository.clone());
            if let Some(r) = inv
                .repositories
                .iter_mut()
                .find(|r| Some(&r.id) == repo.as_ref())
            {
                r.used_bytes = (r.used_bytes + bytes).min(r.capacity_bytes);
            }
            release_worker(inv, &plan, out);
            let text = match plan.outcome {
                RunState::Success => "Job finished successfully",
                RunState::Warning => "Job finished with warnings: some items were skipped",
                _ => "Job failed: the source did not answer in time",
            };
            end_session(inv, id, plan.outcome, text, now, out);
        } else {
            self.plans.insert(id.to_owned(), plan);
        }
    }
}

/// Logs what a stage does as it begins (and moves an Azure worker along).
fn enter_stage(
    inv: &mut Inventory,
    plan: &Plan,
    stage: RunStage,
    logs: &mut Vec<(Severity, String)>,
    out: &mut TickOutput,
) {
    let text = match &plan.detail {
        Detail::Azure(run) => azure::enter_stage(inv, run, stage, out),
        Detail::M365(run) => m365::enter_stage(run, stage),
    };
    if let Some(text) = text {
        logs.push((Severity::Info, text));
    }
}

fn update_figures(session: &mut JobRun, plan: &Plan, dt: f64) {
    let Some(stage) = plan.stages.get(plan.current) else {
        return;
    };
    session.stage = stage.stage;
    let before: f64 = plan.stages[..plan.current].iter().map(|s| s.weight).sum();
    let fraction = match (&plan.detail, stage.stage) {
        (Detail::M365(_), RunStage::Processing) => m365::processed_fraction(session),
        _ => (plan.elapsed_secs / stage.duration_secs).clamp(0.0, 1.0),
    };
    session.progress = (before + stage.weight * fraction).clamp(0.0, 1.0);
    match &plan.detail {
        Detail::Azure(run) => azure::update_bytes(session, run, plan.current, fraction, dt),
        Detail::M365(run) => m365::update_bytes(session, run, dt),
    }
}

fn release_worker(inv: &mut Inventory, plan: &Plan, out: &mut TickOutput) {
    if let Detail::Azure(run) = &plan.detail {
        azure::release_worker(inv, run, out);
    }
}

fn end_session(
    inv: &mut Inventory,
    id: &str,
    state: RunState,
    text: &str,
    now: u64,
    out: &mut TickOutput,
) {
    let Some(session) = inv.sessions.iter_mut().find(|s| s.id == id) else {
        return;
    };
    session.state = state;
    session.stage = RunStage::Done;
    session.rate_bytes_per_sec = 0;
    session.ended_at_unix_secs = Some(now);
    if state != RunState::Failed {
        session.progress = 1.0;
    }
    let severity = match state {
        RunState::Success => Severity::Info,
        RunState::Warning => Severity::Warning,
        _ => Severity::Error,
    };
    let line = session.push_log(now, severity, text.to_owned());
    let job = session.job.clone();
    let job_name = session.job_name.clone();
    out.events.push(BackupEvent::LogLine {
        session: id.to_owned(),
        job: job.clone(),
        line,
    });
    out.events.push(BackupEvent::SessionState {
        session: id.to_owned(),
        job: job.clone(),
        state,
    });
    out.sessions_changed = true;
    if let Some(result) = state.result() {
        finish_job(inv, &job, result, now);
    }
    if state == RunState::Failed {
        inv.server.alarms.push(Alarm {
            time_unix_secs: now,
            severity: Severity::Error,
            object: job,
            text: format!("Job {job_name} failed: {text}"),
        });
    }
    inv.trim();
}

/// Marks sessions left running by a previous process (a crash or restart) as failed: their
/// work did not finish. Returns how many there were.
pub fn recover_interrupted(inv: &mut Inventory, now_unix_secs: u64) -> usize {
    let ids: Vec<String> = inv
        .sessions
        .iter()
        .filter(|s| s.state == RunState::Running)
        .map(|s| s.id.clone())
        .collect();
    let mut out = TickOutput::default();
    for id in &ids {
        end_session(
            inv,
            id,
            RunState::Failed,
            "Interrupted: the backup service restarted",
            now_unix_secs,
            &mut out,
        );
    }
    for region in &mut inv.azure.regions {
        for worker in &mut region.workers {
            worker.state = WorkerState::Deallocated;
        }
    }
    ids.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenant::backup::generator::{Shape, generate_with_shape};
    use crate::tenant::backup::ops::{BackupAction, apply};

    pub(super) const NOW: u64 = 1_780_000_000;

    /// Ticks until `job` has no running session; the events and the stages it went through.
    pub(super) fn run_to_end(
        sim: &mut Simulator,
        inv: &mut Inventory,
        job: &str,
        dt: f64,
    ) -> (Vec<BackupEvent>, Vec<RunStage>) {
        let mut events = Vec::new();
        let mut stages = Vec::new();
        for step in 0..100_000u64 {
            let out = sim.tick(inv, NOW + step, dt);
            events.extend(out.events);
            let running = inv.running_session(job).map(|s| s.stage);
            match running {
                Some(stage) => {
                    if stages.last() != Some(&stage) {
                        stages.push(stage);
                    }
                }
                None => return (events, stages),
            }
        }
        panic!("job {job} never finished");
    }

    /// No scheduled runs interfering with the test.
    pub(super) fn quiet(mut inv: Inventory) -> Inventory {
        for job in &mut inv.jobs {
            job.next_run_unix_secs = None;
        }
        inv
    }

    /// Starts `job` as an operator would.
    pub(super) fn start(inv: &mut Inventory, job: &str) {
        apply(
            inv,
            &BackupAction::StartJob {
                job: job.to_owned(),
            },
            NOW,
            true,
        )
        .expect("start");
    }

    /// Whether every Azure worker is back to deallocated.
    pub(super) fn all_workers_deallocated(inv: &Inventory) -> bool {
        inv.azure
            .regions
            .iter()
            .flat_map(|r| &r.workers)
            .all(|w| w.state == WorkerState::Deallocated)
    }

    #[test]
    fn deterministic_for_a_seed() {
        let run = || {
            let mut inv = quiet(generate_with_shape(3, Shape::Mixed, "mix", NOW));
            let jobs: Vec<String> = inv
                .jobs
                .iter()
                .filter(|j| j.enabled)
                .map(|j| j.id.clone())
                .take(4)
                .collect();
            for p in &mut inv.proxies {
                p.state = ProxyState::Online;
            }
            for job in &jobs {
                start(&mut inv, job);
            }
            let mut sim = Simulator::new(42);
            for step in 0..200 {
                sim.tick(&mut inv, NOW + step, 2.0);
            }
            serde_json::to_string(&inv).expect("json")
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn stopped_sessions_release_their_worker_and_schedules_start_jobs() {
        let mut inv = quiet(generate_with_shape(1, Shape::Azure, "az", NOW));
        let job = inv.jobs.iter().find(|j| j.enabled).expect("job").id.clone();
        start(&mut inv, &job);
        let mut sim = Simulator::new(1);
        for step in 0..30 {
            sim.tick(&mut inv, NOW + step, 10.0);
        }
        apply(
            &mut inv,
            &BackupAction::StopJob { job: job.clone() },
            NOW,
            true,
        )
        .expect("stop");
        sim.tick(&mut inv, NOW + 31, 1.0);
        assert!(all_workers_deallocated(&inv));

        // A due job starts by itself.
        if let Some(j) = inv.jobs.iter_mut().find(|j| j.id == job) {
            j.next_run_unix_secs = Some(NOW + 40);
        }
        let out = sim.tick(&mut inv, NOW + 41, 1.0);
        assert!(out.sessions_changed);
        assert!(inv.running_session(&job).is_some());
        assert!(
            inv.job(&job)
                .and_then(|j| j.next_run_unix_secs)
                .is_some_and(|t| t > NOW + 41)
        );
    }

    #[test]
    fn interrupted_sessions_are_marked_failed() {
        let mut inv = quiet(generate_with_shape(1, Shape::Small, "s", NOW));
        let job = inv.jobs.iter().find(|j| j.enabled).expect("job").id.clone();
        start(&mut inv, &job);
        assert_eq!(recover_interrupted(&mut inv, NOW + 5), 1);
        assert!(inv.running_session(&job).is_none());
        assert_eq!(
            inv.job(&job).and_then(|j| j.last_result),
            Some(JobResult::Failed)
        );
    }

    #[test]
    fn job_without_online_proxy_fails_cleanly() {
        let mut inv = quiet(generate_with_shape(1, Shape::Small, "s", NOW));
        let job = inv.jobs.iter().find(|j| j.enabled).expect("job").id.clone();
        start(&mut inv, &job);
        inv.proxies[0].state = ProxyState::Offline;
        let out = Simulator::new(1).tick(&mut inv, NOW, 1.0);
        assert!(inv.running_session(&job).is_none());
        assert!(out.events.iter().any(|e| matches!(
            e,
            BackupEvent::SessionState {
                state: RunState::Failed,
                ..
            }
        )));
    }
}
