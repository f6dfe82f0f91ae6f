//! Process signals: SIGINT/SIGTERM as a cancellation token, what every long-running command
//! (`rac sp run`, `rac gateway`, `rac tenant`, `rac bench`) stops on; SIGHUP as a call, what
//! `systemctl reload` sends.

use tokio_util::sync::CancellationToken;

/// Cancelled on SIGINT or SIGTERM. Must be called inside the runtime.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!("cannot watch SIGTERM: {e}");
                        let _ = ctrl_c.await;
                        t.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        t.cancel();
        tracing::info!("shutting down");
    });
    token
}

/// Calls `on_hangup` at each SIGHUP until `shutdown`. The signal is watched from this call
/// on, before it returns: a SIGHUP that comes early no longer meets the default action
/// (which ends the process), and after `shutdown` it is still caught, and ignored. Must be
/// called inside the runtime.
pub fn on_hangup(
    shutdown: CancellationToken,
    on_hangup: impl Fn() + Send + 'static,
) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    got = hup.recv() => match got {
                        Some(()) => on_hangup(),
                        None => return,
                    },
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = (shutdown, on_hangup);
    Ok(())
}
