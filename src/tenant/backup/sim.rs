//! Simulated job runs for lab tenants. Each running session follows the stages of its kind
//! (Azure VM: snapshot, worker deployment, reading changed blocks, compressing, transferring,
//! removing access, deallocating the worker; Microsoft 365: connecting, objects processed in
//! tasks spread over the proxies of the job's pool, finalizing) with plausible sizes and rates.
//! [`Simulator::tick`] advances everything by `dt`; it is deterministic for a seed.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::model::*;
use super::ops::{Change, finish_job, start_session};
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

#[derive(Debug)]
enum Detail {
    Azure {
        region: String,
        worker: Option<String>,
        vm_names: Vec<String>,
        read_total: u64,
        transfer_total: u64,
    },
    M365 {
        org: String,
        mailboxes: u32,
        sites: u32,
        tasks: Vec<TaskPlan>,
        pool: Option<String>,
    },
}

#[derive(Debug)]
struct TaskPlan {
    proxy: String,
    proxy_name: String,
    first_object: u32,
    done: f64,
    objects_per_sec: f64,
    bytes_per_object: f64,
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
        let stage = |stage, duration_secs: f64, weight| StagePlan {
            stage,
            duration_secs: duration_secs.max(1.0),
            weight,
        };
        match &job.source {
            JobSource::AzureVms(vm_ids) => {
                let vms: Vec<&AzureVm> = inv
                    .azure
                    .vms
                    .iter()
                    .filter(|v| vm_ids.contains(&v.id))
                    .collect();
                if vms.is_empty() {
                    return Err("none of the job's VMs exists any more".into());
                }
                let region = vms[0].region.clone();
                let read_total: u64 = vms
                    .iter()
                    .map(|v| {
                        if first_run {
                            v.used_bytes
                        } else {
                            v.used_bytes / 1000 * u64::from(v.daily_change_permille)
                        }
                    })
                    .sum();
                let ratio = rng.random_range(0.45..0.7);
                let transfer_total = (read_total as f64 * ratio) as u64;
                let read_rate = rng.random_range(150.0..400.0) * MB;
                let write_rate = rng.random_range(100.0..300.0) * MB;
                let worker = inv
                    .azure
                    .regions
                    .iter()
                    .find(|r| r.name == region)
                    .and_then(|r| {
                        r.workers
                            .iter()
                            .find(|w| w.state == WorkerState::Deallocated)
                    })
                    .map(|w| w.id.clone());
                let disks: u32 = vms.iter().map(|v| v.disks).sum();
                Ok(Plan {
                    stages: vec![
                        stage(
                            RunStage::Snapshot,
                            f64::from(disks) * rng.random_range(3.0..8.0),
                            0.03,
                        ),
                        stage(
                            RunStage::WorkerDeployment,
                            rng.random_range(60.0..150.0),
                            0.07,
                        ),
                        stage(
                            RunStage::ReadingChangedBlocks,
                            read_total as f64 / read_rate,
                            0.5,
                        ),
                        stage(RunStage::Compressing, rng.random_range(5.0..20.0), 0.05),
                        stage(
                            RunStage::Transferring,
                            transfer_total as f64 / write_rate,
                            0.3,
                        ),
                        stage(RunStage::RemovingAccess, rng.random_range(3.0..10.0), 0.02),
                        stage(
                            RunStage::DeallocatingWorker,
                            rng.random_range(30.0..60.0),
                            0.03,
                        ),
                    ],
                    current: 0,
                    elapsed_secs: 0.0,
                    outcome,
                    detail: Detail::Azure {
                        region,
                        worker,
                        vm_names: vms.iter().map(|v| v.name.clone()).collect(),
                        read_total,
                        transfer_total,
                    },
                })
            }
            JobSource::Organization(org_id) => {
                let org = inv
                    .organizations
                    .iter()
                    .find(|o| o.id == *org_id)
                    .cloned()
                    .ok_or("the organization was removed")?;
                let proxies: Vec<Proxy> = inv
                    .job_proxies(&job)
                    .iter()
                    .filter_map(|p| inv.proxy(p))
                    .filter(|p| p.state == ProxyState::Online)
                    .cloned()
                    .collect();
                if proxies.is_empty() {
                    return Err("no backup proxy is online for this job".into());
                }
                let objects = org.mailboxes + org.sites + org.teams;
                let slots: u32 = proxies.iter().map(|p| p.max_concurrent_tasks).sum();
                let mut tasks = Vec::new();
                let mut first = 0;
                for (i, p) in proxies.iter().enumerate() {
                    let share = if i + 1 == proxies.len() {
                        objects - first
                    } else {
                        objects * p.max_concurrent_tasks / slots.max(1)
                    };
                    let bytes_per_object = if first_run {
                        rng.random_range(200.0..900.0) * MB
                    } else {
                        rng.random_range(2.0..40.0) * MB
                    };
                    let throughput = rng.random_range(15.0..60.0)
                        * MB
                        * (f64::from(p.max_concurrent_tasks) / 16.0).clamp(0.5, 2.0);
                    tasks.push(TaskPlan {
                        proxy: p.id.clone(),
                        proxy_name: p.name.clone(),
                        first_object: first,
                        done: 0.0,
                        objects_per_sec: throughput / bytes_per_object,
                        bytes_per_object,
                    });
                    first += share;
                }
                let session = inv.sessions.iter_mut().find(|s| s.id == session_id);
                if let Some(session) = session {
                    let bounds: Vec<u32> = tasks
                        .iter()
                        .map(|t| t.first_object)
                        .chain([objects])
                        .collect();
                    session.tasks = tasks
                        .iter()
                        .zip(bounds.windows(2))
                        .map(|(t, w)| RunTask {
                            proxy: t.proxy.clone(),
                            objects_total: w[1] - w[0],
                            objects_done: 0,
                        })
                        .collect();
                }
                Ok(Plan {
                    stages: vec![
                        stage(RunStage::Connecting, rng.random_range(3.0..10.0), 0.02),
                        // Processing ends when every task is done; the duration is unused.
                        stage(RunStage::Processing, f64::INFINITY, 0.95),
                        stage(RunStage::Finalizing, rng.random_range(3.0..8.0), 0.03),
                    ],
                    current: 0,
                    elapsed_secs: 0.0,
                    outcome,
                    detail: Detail::M365 {
                        org: org.name.clone(),
                        mailboxes: org.mailboxes,
                        sites: org.sites,
                        tasks,
                        pool: job.pool.clone(),
                    },
                })
            }
        }
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
                let done = self.process_objects(inv, idx, &mut plan, remaining, &mut logs);
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

    /// Advances the Microsoft 365 tasks; true when every object is processed.
    fn process_objects(
        &mut self,
        inv: &mut Inventory,
        idx: usize,
        plan: &mut Plan,
        dt: f64,
        logs: &mut Vec<(Severity, String)>,
    ) -> bool {
        let Detail::M365 {
            org,
            mailboxes,
            sites,
            tasks,
            pool,
        } = &mut plan.detail
        else {
            return true;
        };
        let session = &mut inv.sessions[idx];
        let mut all_done = true;
        let mut processed_now = 0u64;
        for (task, state) in tasks.iter_mut().zip(session.tasks.iter_mut()) {
            let total = f64::from(state.objects_total);
            let before = state.objects_done;
            task.done = (task.done + task.objects_per_sec * dt).min(total);
            state.objects_done = task.done as u32;
            if state.objects_done < state.objects_total {
                all_done = false;
            }
            let newly = state.objects_done - before;
            processed_now += u64::from(newly);
            if newly > 0 {
                let object = task.first_object + state.objects_done - 1;
                let name = object_name(object, *mailboxes, *sites, org);
                let items = self.rng.random_range(50..5000);
                logs.push((
                    Severity::Info,
                    format!(
                        "{}: processed {name} ({items} items, {:.1} MB){}",
                        task.proxy_name,
                        task.bytes_per_object / MB,
                        if newly > 1 {
                            format!(" and {} more", newly - 1)
                        } else {
                            String::new()
                        }
                    ),
                ));
                if plan.outcome == RunState::Warning && self.rng.random_bool(0.02) {
                    logs.push((
                        Severity::Warning,
                        format!(
                            "{}: skipped an item larger than 150 MB in {name}",
                            task.proxy_name
                        ),
                    ));
                }
            }
        }
        if let Some(pool) = pool
            && let Some(p) = inv.proxy_pools.iter_mut().find(|p| p.id == *pool)
        {
            for stream in &mut p.bus.streams {
                stream.messages += processed_now;
                stream.bytes += processed_now * 512;
            }
        }
        all_done
    }
}

fn object_name(index: u32, mailboxes: u32, sites: u32, org: &str) -> String {
    let tenant = org.split('.').next().unwrap_or(org);
    if index < mailboxes {
        format!("mailbox user{:04}@{org}", index + 1)
    } else if index < mailboxes + sites {
        format!(
            "site https://{tenant}.sharepoint.com/sites/site{:03}",
            index - mailboxes + 1
        )
    } else {
        format!("team Team {:03}", index - mailboxes - sites + 1)
    }
}

fn enter_stage(
    inv: &mut Inventory,
    plan: &Plan,
    stage: RunStage,
    logs: &mut Vec<(Severity, String)>,
    out: &mut TickOutput,
) {
    let text = match (&plan.detail, stage) {
        (Detail::Azure { vm_names, .. }, RunStage::Snapshot) => {
            format!(
                "Creating disk snapshots of {} (tagged for this backup)",
                vm_names.join(", ")
            )
        }
        (Detail::Azure { region, worker, .. }, RunStage::WorkerDeployment) => {
            if let Some(w) = worker {
                set_worker(inv, region, w, WorkerState::Deploying, out);
            }
            format!(
                "Deploying worker {} in {region}: uploading binaries to the storage account over the blob private endpoint, creating the worker queue",
                worker.as_deref().unwrap_or("(new)")
            )
        }
        (
            Detail::Azure {
                region,
                worker,
                read_total,
                ..
            },
            RunStage::ReadingChangedBlocks,
        ) => {
            if let Some(w) = worker {
                set_worker(inv, region, w, WorkerState::Running, out);
            }
            format!(
                "Reading {:.1} GB of changed blocks from the snapshots through the disk access private endpoint",
                *read_total as f64 / MB / 1024.0
            )
        }
        (Detail::Azure { .. }, RunStage::Compressing) => "Compressing read data".to_owned(),
        (Detail::Azure { transfer_total, .. }, RunStage::Transferring) => format!(
            "Transferring {:.1} GB to the repository through the blob private endpoint",
            *transfer_total as f64 / MB / 1024.0
        ),
        (Detail::Azure { .. }, RunStage::RemovingAccess) => {
            "Removing SAS access to the snapshots".to_owned()
        }
        (Detail::Azure { region, worker, .. }, RunStage::DeallocatingWorker) => {
            if let Some(w) = worker {
                set_worker(inv, region, w, WorkerState::Deallocating, out);
            }
            format!("Deallocating worker {}", worker.as_deref().unwrap_or(""))
        }
        (Detail::M365 { org, .. }, RunStage::Connecting) => {
            format!("Connecting to organization {org}")
        }
        (Detail::M365 { tasks, .. }, RunStage::Processing) => format!(
            "Processing objects in {} task(s) on {}",
            tasks.len(),
            tasks
                .iter()
                .map(|t| t.proxy_name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        (Detail::M365 { .. }, RunStage::Finalizing) => "Committing the restore point".to_owned(),
        _ => return,
    };
    logs.push((Severity::Info, text));
}

fn update_figures(session: &mut JobRun, plan: &Plan, dt: f64) {
    let Some(stage) = plan.stages.get(plan.current) else {
        return;
    };
    session.stage = stage.stage;
    let before: f64 = plan.stages[..plan.current].iter().map(|s| s.weight).sum();
    let fraction = match (&plan.detail, stage.stage) {
        (Detail::M365 { .. }, RunStage::Processing) => {
            let total: u32 = session.tasks.iter().map(|t| t.objects_total).sum();
            let done: u32 = session.tasks.iter().map(|t| t.objects_done).sum();
            if total == 0 {
                1.0
            } else {
                f64::from(done) / f64::from(total)
            }
        }
        _ => (plan.elapsed_secs / stage.duration_secs).clamp(0.0, 1.0),
    };
    session.progress = (before + stage.weight * fraction).clamp(0.0, 1.0);
    let old_read = session.bytes_read;
    let old_transferred = session.bytes_transferred;
    match &plan.detail {
        Detail::Azure {
            read_total,
            transfer_total,
            ..
        } => {
            let read_idx = 2;
            let transfer_idx = 4;
            session.bytes_read = portion(plan, read_idx, fraction, *read_total);
            session.bytes_transferred = portion(plan, transfer_idx, fraction, *transfer_total);
            let moved = (session.bytes_read - old_read.min(session.bytes_read))
                + (session.bytes_transferred - old_transferred.min(session.bytes_transferred));
            session.rate_bytes_per_sec = (moved as f64 / dt.max(0.001)) as u64;
        }
        Detail::M365 { tasks, .. } => {
            let read: f64 = tasks.iter().map(|t| t.done * t.bytes_per_object).sum();
            session.bytes_read = read as u64;
            session.bytes_transferred = (read * 0.6) as u64;
            session.rate_bytes_per_sec = ((session.bytes_read - old_read.min(session.bytes_read))
                as f64
                / dt.max(0.001)) as u64;
        }
    }
}

/// Bytes done of a stage's total: all of it once the stage is past, a fraction while in it.
fn portion(plan: &Plan, stage_idx: usize, fraction: f64, total: u64) -> u64 {
    match plan.current.cmp(&stage_idx) {
        std::cmp::Ordering::Less => 0,
        std::cmp::Ordering::Equal => (total as f64 * fraction) as u64,
        std::cmp::Ordering::Greater => total,
    }
}

fn set_worker(
    inv: &mut Inventory,
    region: &str,
    worker: &str,
    state: WorkerState,
    out: &mut TickOutput,
) {
    let found = inv
        .azure
        .regions
        .iter_mut()
        .filter(|r| r.name == region)
        .flat_map(|r| r.workers.iter_mut())
        .find(|w| w.id == worker);
    if let Some(w) = found
        && w.state != state
    {
        w.state = state;
        out.events.push(BackupEvent::Changed(Change {
            kind: "worker".into(),
            id: worker.to_owned(),
            change: serde_json::to_value(state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
        }));
    }
}

fn release_worker(inv: &mut Inventory, plan: &Plan, out: &mut TickOutput) {
    if let Detail::Azure {
        region,
        worker: Some(w),
        ..
    } = &plan.detail
    {
        set_worker(inv, region, w, WorkerState::Deallocated, out);
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

    const NOW: u64 = 1_780_000_000;

    fn run_to_end(
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

    fn quiet(mut inv: Inventory) -> Inventory {
        // No scheduled runs interfering with the test.
        for job in &mut inv.jobs {
            job.next_run_unix_secs = None;
        }
        inv
    }

    #[test]
    fn azure_run_goes_through_every_stage() {
        let mut inv = quiet(generate_with_shape(1, Shape::Azure, "az", NOW));
        let job = inv
            .jobs
            .iter()
            .find(|j| j.kind == JobKind::AzureVm && j.enabled)
            .expect("azure job")
            .id
            .clone();
        apply(
            &mut inv,
            &BackupAction::StartJob { job: job.clone() },
            NOW,
            true,
        )
        .expect("start");
        let mut sim = Simulator::new(9);
        let (events, stages) = run_to_end(&mut sim, &mut inv, &job, 5.0);
        assert_eq!(
            stages,
            [
                RunStage::Snapshot,
                RunStage::WorkerDeployment,
                RunStage::ReadingChangedBlocks,
                RunStage::Compressing,
                RunStage::Transferring,
                RunStage::RemovingAccess,
                RunStage::DeallocatingWorker
            ]
        );
        let session = inv
            .sessions
            .iter()
            .rfind(|s| s.job == job)
            .expect("session");
        assert!(session.simulated);
        assert_ne!(session.state, RunState::Running);
        assert!(session.bytes_read > 0 && session.bytes_transferred > 0);
        assert!(session.bytes_transferred < session.bytes_read);
        assert!(
            events
                .iter()
                .any(|e| matches!(e, BackupEvent::JobProgress { .. }))
        );
        assert!(events.iter().any(
            |e| matches!(e, BackupEvent::Changed(c) if c.kind == "worker" && c.change == "running")
        ));
        assert!(
            inv.azure
                .regions
                .iter()
                .flat_map(|r| &r.workers)
                .all(|w| w.state == WorkerState::Deallocated)
        );
        assert!(inv.job(&job).and_then(|j| j.last_result).is_some());
        // Progress never goes back.
        let progress: Vec<f64> = events
            .iter()
            .filter_map(|e| match e {
                BackupEvent::JobProgress { progress, .. } => Some(*progress),
                _ => None,
            })
            .collect();
        assert!(progress.windows(2).all(|w| w[0] <= w[1]), "{progress:?}");
    }

    #[test]
    fn m365_run_spreads_tasks_over_the_pool() {
        let mut inv = quiet(generate_with_shape(2, Shape::Pooled, "pool", NOW));
        let job = inv
            .jobs
            .iter()
            .find(|j| {
                j.enabled
                    && j.pool
                        .as_ref()
                        .is_some_and(|p| inv.pool(p).is_some_and(|p| p.members.len() > 1))
            })
            .expect("pool job")
            .clone();
        for p in &mut inv.proxies {
            p.state = ProxyState::Online;
        }
        apply(
            &mut inv,
            &BackupAction::StartJob {
                job: job.id.clone(),
            },
            NOW,
            true,
        )
        .expect("start");
        let mut sim = Simulator::new(4);
        sim.tick(&mut inv, NOW, 20.0);
        let members = inv.job_proxies(&job).len();
        let session = inv.running_session(&job.id).expect("running");
        assert_eq!(session.tasks.len(), members);
        assert_eq!(session.stage, RunStage::Processing);
        let (events, stages) = run_to_end(&mut sim, &mut inv, &job.id, 30.0);
        assert_eq!(stages.last(), Some(&RunStage::Finalizing));
        let session = inv
            .sessions
            .iter()
            .rfind(|s| s.job == job.id)
            .expect("session");
        assert!(
            session
                .tasks
                .iter()
                .all(|t| t.objects_done == t.objects_total)
        );
        assert!(
            session
                .log
                .iter()
                .any(|l| l.text.contains("processed mailbox"))
        );
        assert!(events.iter().any(
            |e| matches!(e, BackupEvent::SessionState { state, .. } if *state != RunState::Running)
        ));
        let pool = inv
            .pool(job.pool.as_deref().unwrap_or_default())
            .expect("pool");
        assert!(pool.bus.streams.iter().all(|s| s.messages > 0));
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
                apply(
                    &mut inv,
                    &BackupAction::StartJob { job: job.clone() },
                    NOW,
                    true,
                )
                .expect("start");
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
        apply(
            &mut inv,
            &BackupAction::StartJob { job: job.clone() },
            NOW,
            true,
        )
        .expect("start");
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
        assert!(
            inv.azure
                .regions
                .iter()
                .flat_map(|r| &r.workers)
                .all(|w| w.state == WorkerState::Deallocated)
        );

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
        apply(
            &mut inv,
            &BackupAction::StartJob { job: job.clone() },
            NOW,
            true,
        )
        .expect("start");
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
        apply(
            &mut inv,
            &BackupAction::StartJob { job: job.clone() },
            NOW,
            true,
        )
        .expect("start");
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
