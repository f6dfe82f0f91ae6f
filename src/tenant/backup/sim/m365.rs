//! A Microsoft 365 backup run: connecting to the organization, its mailboxes, sites and teams
//! processed in tasks spread over the job's proxies (in proportion to their task slots, their
//! pool's message bus counting the work), then the restore point committed.

use rand::Rng;
use rand::rngs::StdRng;

use super::{Detail, MB, Plan, StagePlan};
use crate::tenant::backup::model::*;

/// What a Microsoft 365 run keeps besides its stages.
#[derive(Debug)]
pub(super) struct M365Run {
    org: String,
    mailboxes: u32,
    sites: u32,
    tasks: Vec<TaskPlan>,
    pool: Option<String>,
}

/// One proxy's share of the objects.
#[derive(Debug)]
struct TaskPlan {
    proxy: String,
    proxy_name: String,
    first_object: u32,
    done: f64,
    objects_per_sec: f64,
    bytes_per_object: f64,
}

/// The stages of a run over the organization `org_id` on the job's online proxies; the
/// session's tasks are set here, one per proxy.
pub(super) fn plan(
    inv: &mut Inventory,
    rng: &mut StdRng,
    job: &Job,
    org_id: &str,
    session_id: &str,
    first_run: bool,
) -> Result<(Vec<StagePlan>, Detail), String> {
    let org = inv
        .organizations
        .iter()
        .find(|o| o.id == *org_id)
        .cloned()
        .ok_or("the organization was removed")?;
    let proxies: Vec<Proxy> = inv
        .job_proxies(job)
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
    let stage = StagePlan::new;
    let stages = vec![
        stage(RunStage::Connecting, rng.random_range(3.0..10.0), 0.02),
        // Processing ends when every task is done; the duration is unused.
        stage(RunStage::Processing, f64::INFINITY, 0.95),
        stage(RunStage::Finalizing, rng.random_range(3.0..8.0), 0.03),
    ];
    let detail = Detail::M365(M365Run {
        org: org.name.clone(),
        mailboxes: org.mailboxes,
        sites: org.sites,
        tasks,
        pool: job.pool.clone(),
    });
    Ok((stages, detail))
}

/// The log line of a stage that begins.
pub(super) fn enter_stage(run: &M365Run, stage: RunStage) -> Option<String> {
    Some(match stage {
        RunStage::Connecting => format!("Connecting to organization {}", run.org),
        RunStage::Processing => format!(
            "Processing objects in {} task(s) on {}",
            run.tasks.len(),
            run.tasks
                .iter()
                .map(|t| t.proxy_name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        RunStage::Finalizing => "Committing the restore point".to_owned(),
        _ => return None,
    })
}

/// Advances the Microsoft 365 tasks of the session at `idx` by `dt`; true when every object
/// is processed (or the plan is not a Microsoft 365 one).
pub(super) fn process_objects(
    rng: &mut StdRng,
    inv: &mut Inventory,
    idx: usize,
    plan: &mut Plan,
    dt: f64,
    logs: &mut Vec<(Severity, String)>,
) -> bool {
    let Detail::M365(M365Run {
        org,
        mailboxes,
        sites,
        tasks,
        pool,
    }) = &mut plan.detail
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
            let items = rng.random_range(50..5000);
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
            if plan.outcome == RunState::Warning && rng.random_bool(0.02) {
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

/// How far the processing stage is: objects done of all the tasks' objects.
pub(super) fn processed_fraction(session: &JobRun) -> f64 {
    let total: u32 = session.tasks.iter().map(|t| t.objects_total).sum();
    let done: u32 = session.tasks.iter().map(|t| t.objects_done).sum();
    if total == 0 {
        1.0
    } else {
        f64::from(done) / f64::from(total)
    }
}

/// Bytes read (the objects done) and transferred (compressed to 60 %), and the read rate.
pub(super) fn update_bytes(session: &mut JobRun, run: &M365Run, dt: f64) {
    let old_read = session.bytes_read;
    let read: f64 = run.tasks.iter().map(|t| t.done * t.bytes_per_object).sum();
    session.bytes_read = read as u64;
    session.bytes_transferred = (read * 0.6) as u64;
    session.rate_bytes_per_sec =
        ((session.bytes_read - old_read.min(session.bytes_read)) as f64 / dt.max(0.001)) as u64;
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

#[cfg(test)]
mod tests {
    use super::super::Simulator;
    use super::super::tests::{NOW, quiet, run_to_end, start};
    use crate::tenant::backup::generator::{Shape, generate_with_shape};
    use crate::tenant::backup::model::*;
    use crate::tenant::backup::protocol::BackupEvent;

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
        start(&mut inv, &job.id);
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
}
