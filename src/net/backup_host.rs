//! Hosting the tenant backup service: on a TCP listener of its own ([`run`]), or behind the
//! tenant redirector as a local service of `rac tenant` (`[backup_service]`) and of the lab
//! ([`host_backup_service`]). The service itself (state, actions, simulation, the per-stream
//! protocol) is `tenant::backup`; this file only brings it sockets and tasks.

use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::acceptor::Acceptor;
use super::tenant_redirector::LocalHandler;
use crate::tenant::backup::service::MAX_CONNECTIONS;
use crate::tenant::backup::{
    self, BackupService, Inventory, ServiceConfig, Store, serve_connection, simulate,
};
use crate::tenant::config::BackupServiceConfig;
use crate::util::now_unix_secs;

/// Runs the service on `listener` until `shutdown`: accepts consoles (each served in its own
/// task) and ticks the simulation every `tick_interval`. On shutdown, waits for the
/// connections to close and saves the state.
pub async fn run(
    service: Arc<BackupService>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<()> {
    let mut tasks = JoinSet::new();
    tasks.spawn(simulate(service.clone(), shutdown.clone()));
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut listener = Acceptor::new("backup service", listener);
    loop {
        while tasks.try_join_next().is_some() {}
        let permit = tokio::select! {
            permit = limit.clone().acquire_owned() => permit.context("connection limit closed")?,
            () = shutdown.cancelled() => break,
        };
        let Some((stream, peer)) = listener.next(&shutdown).await else {
            break;
        };
        let service = service.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let _permit = permit;
            tokio::select! {
                result = serve_connection(service, stream) => {
                    if let Err(e) = result {
                        tracing::debug!("backup console {peer}: {e:#}");
                    }
                }
                () = shutdown.cancelled() => {}
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    service
        .persist()
        .await
        .context("saving the backup state at shutdown")?;
    Ok(())
}

/// Opens a backup service on its state file, starts its simulation on `tracker`, and returns
/// the handler the tenant redirector calls for each session.
pub fn host_backup_service(
    store: Store,
    config: ServiceConfig,
    fresh: impl FnOnce() -> Inventory,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) -> Result<LocalHandler> {
    let path = store.path().display().to_string();
    let service = BackupService::open(store, config, fresh)
        .with_context(|| format!("opening the backup service state {path}"))?;
    tracker.spawn(backup::service::simulate(service.clone(), shutdown.clone()));
    Ok(handler(service))
}

/// Serves each session's stream with `service`.
pub fn handler(service: Arc<BackupService>) -> LocalHandler {
    Arc::new(move |mut stream| {
        let service = service.clone();
        Box::pin(async move {
            if let Err(e) = backup::serve_connection(service, &mut stream).await {
                tracing::debug!("backup session ended: {e:#}");
            }
            // Close our side cleanly so the SP records a clean end.
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
        })
    })
}

/// `[backup_service]` of `rac tenant`.
pub fn backup_handler(
    config: &BackupServiceConfig,
    tenant: &str,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) -> Result<LocalHandler> {
    let name = tenant.to_string();
    let seed = config.demo_seed;
    host_backup_service(
        Store::new(&config.state_file),
        ServiceConfig::default(),
        move || match seed {
            Some(seed) => backup::generate(seed, &name, now_unix_secs()),
            None => Inventory::empty(&name, now_unix_secs()),
        },
        shutdown,
        tracker,
    )
}
