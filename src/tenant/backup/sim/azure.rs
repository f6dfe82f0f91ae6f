//! An Azure VM backup run: disk snapshots, a worker deployed in the VMs' region, changed
//! blocks read through the disk access endpoint, compressed and transferred to the
//! repository, snapshot access removed and the worker deallocated again.

use rand::Rng;
use rand::rngs::StdRng;

use super::{Detail, MB, StagePlan, TickOutput};
use crate::tenant::backup::model::*;
use crate::tenant::backup::ops::Change;
use crate::tenant::backup::protocol::BackupEvent;

/// Where the bytes of a run are read (stage index in [`plan`]'s stages).
const READ_STAGE: usize = 2;
/// Where they are written to the repository.
const TRANSFER_STAGE: usize = 4;

/// What an Azure VM run keeps besides its stages.
#[derive(Debug)]
pub(super) struct AzureRun {
    region: String,
    worker: Option<String>,
    vm_names: Vec<String>,
    read_total: u64,
    transfer_total: u64,
}

/// The stages of a run over the VMs `vm_ids`, with sizes from their disks (all used bytes on
/// a first run, a day's changes after).
pub(super) fn plan(
    inv: &Inventory,
    rng: &mut StdRng,
    vm_ids: &[String],
    first_run: bool,
) -> Result<(Vec<StagePlan>, Detail), String> {
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
    let stage = StagePlan::new;
    let stages = vec![
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
    ];
    let detail = Detail::Azure(AzureRun {
        region,
        worker,
        vm_names: vms.iter().map(|v| v.name.clone()).collect(),
        read_total,
        transfer_total,
    });
    Ok((stages, detail))
}

/// The log line of a stage that begins; the worker's state follows the stages.
pub(super) fn enter_stage(
    inv: &mut Inventory,
    run: &AzureRun,
    stage: RunStage,
    out: &mut TickOutput,
) -> Option<String> {
    let AzureRun {
        region,
        worker,
        vm_names,
        read_total,
        transfer_total,
    } = run;
    Some(match stage {
        RunStage::Snapshot => format!(
            "Creating disk snapshots of {} (tagged for this backup)",
            vm_names.join(", ")
        ),
        RunStage::WorkerDeployment => {
            if let Some(w) = worker {
                set_worker(inv, region, w, WorkerState::Deploying, out);
            }
            format!(
                "Deploying worker {} in {region}: uploading binaries to the storage account over the blob private endpoint, creating the worker queue",
                worker.as_deref().unwrap_or("(new)")
            )
        }
        RunStage::ReadingChangedBlocks => {
            if let Some(w) = worker {
                set_worker(inv, region, w, WorkerState::Running, out);
            }
            format!(
                "Reading {:.1} GB of changed blocks from the snapshots through the disk access private endpoint",
                *read_total as f64 / MB / 1024.0
            )
        }
        RunStage::Compressing => "Compressing read data".to_owned(),
        RunStage::Transferring => format!(
            "Transferring {:.1} GB to the repository through the blob private endpoint",
            *transfer_total as f64 / MB / 1024.0
        ),
        RunStage::RemovingAccess => "Removing SAS access to the snapshots".to_owned(),
        RunStage::DeallocatingWorker => {
            if let Some(w) = worker {
                set_worker(inv, region, w, WorkerState::Deallocating, out);
            }
            format!("Deallocating worker {}", worker.as_deref().unwrap_or(""))
        }
        _ => return None,
    })
}

/// Bytes read and transferred so far, and the rate, for a run now in stage `current`
/// (`fraction` of the way through it).
pub(super) fn update_bytes(
    session: &mut JobRun,
    run: &AzureRun,
    current: usize,
    fraction: f64,
    dt: f64,
) {
    let old_read = session.bytes_read;
    let old_transferred = session.bytes_transferred;
    session.bytes_read = portion(current, READ_STAGE, fraction, run.read_total);
    session.bytes_transferred = portion(current, TRANSFER_STAGE, fraction, run.transfer_total);
    let moved = (session.bytes_read - old_read.min(session.bytes_read))
        + (session.bytes_transferred - old_transferred.min(session.bytes_transferred));
    session.rate_bytes_per_sec = (moved as f64 / dt.max(0.001)) as u64;
}

/// Bytes done of a stage's total: all of it once the stage is past, a fraction while in it.
fn portion(current: usize, stage_idx: usize, fraction: f64, total: u64) -> u64 {
    match current.cmp(&stage_idx) {
        std::cmp::Ordering::Less => 0,
        std::cmp::Ordering::Equal => (total as f64 * fraction) as u64,
        std::cmp::Ordering::Greater => total,
    }
}

/// The run's worker goes back to deallocated (the run ended or was stopped).
pub(super) fn release_worker(inv: &mut Inventory, run: &AzureRun, out: &mut TickOutput) {
    if let Some(w) = &run.worker {
        set_worker(inv, &run.region, w, WorkerState::Deallocated, out);
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

#[cfg(test)]
mod tests {
    use super::super::Simulator;
    use super::super::tests::{NOW, all_workers_deallocated, quiet, run_to_end, start};
    use crate::tenant::backup::generator::{Shape, generate_with_shape};
    use crate::tenant::backup::model::*;
    use crate::tenant::backup::protocol::BackupEvent;

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
        start(&mut inv, &job);
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
        assert!(all_workers_deallocated(&inv));
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
}
