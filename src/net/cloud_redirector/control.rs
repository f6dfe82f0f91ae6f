//! A tenant's control connection at the SP (steps 2, 3 and 6): authenticated once, then
//! heartbeats both ways, `OpenData` requests out, `Reject` and status changes in.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use super::{ControlHandle, DataOutcome, ServerStream, Shared, lock, send_error};
use crate::net::frame::{self, MAX_HELLO_LEN};
use crate::net::protocol::{ControlMsg, ErrorCode, HelloReply, Welcome};
use crate::sp::Refusal;
use crate::sp::presence::Live;

/// A tenant that keeps pinging is pinged back only every this many heartbeat ticks (for the
/// round trip shown in the tenant list).
const RTT_EVERY_TICKS: u64 = 6;

pub(super) async fn serve(
    shared: Arc<Shared>,
    mut stream: ServerStream,
    tenant: String,
    secret: String,
    live: Live,
) {
    let mut auth = shared.sp.authenticate_tenant(&tenant, &secret);
    if auth.is_err() {
        // The account may have been added or re-keyed a moment ago by another process:
        // look at the registry now rather than at the next poll.
        match shared.sp.refresh_accounts() {
            Ok(kicks) => kicks.iter().for_each(|k| shared.kick(k)),
            Err(e) => tracing::error!("reading the registry: {e:#}"),
        }
        auth = shared.sp.authenticate_tenant(&tenant, &secret);
    }
    if let Err(refusal) = auth {
        tracing::warn!(%tenant, addr = %live.remote_addr, "tenant refused: {}", refusal.message);
        let _ = send_error(&mut stream, &refusal).await;
        return;
    }
    let Some(conn_id) = shared.sp.presence.connect(&tenant, live) else {
        let _ = send_error(
            &mut stream,
            &Refusal::new(ErrorCode::AuthFailed, "unknown tenant"),
        )
        .await;
        return;
    };
    let config = &shared.sp.config;
    let (tx, mut commands) = mpsc::channel(64);
    let replaced = shared.shutdown.child_token();
    if let Some(old) = lock(&shared.controls).insert(
        tenant.clone(),
        ControlHandle {
            conn_id,
            tx,
            replaced: replaced.clone(),
        },
    ) {
        tracing::info!(%tenant, "a newer control connection replaces the older one");
        old.replaced.cancel();
    }
    tracing::info!(%tenant, "tenant online");

    let welcome = HelloReply::Welcome(Welcome {
        server: crate::VERSION.to_string(),
        heartbeat_secs: config.heartbeat_secs,
        dead_after_secs: config.dead_after_secs,
        gateways: shared.sp.gateways(),
        token: None,
        token_expires_in_secs: None,
    });
    let (mut reader, mut writer) = tokio::io::split(stream);
    let ended = match frame::write_frame(&mut writer, &welcome).await {
        Err(e) => format!("could not send welcome: {e}"),
        Ok(()) => {
            // One task per control connection, no reader task and no channel between them:
            // thousands of idle tenants each cost as little memory and as few wake-ups as
            // possible. The read in progress is kept across the other branches, so a frame
            // is never half read and dropped.
            let mut tick = tokio::time::interval(config.heartbeat());
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            let mut last_heard = Instant::now();
            let mut seq = 0u64;
            let mut ticks = 0u64;
            let mut ping_sent: Option<(u64, Instant)> = None;
            'connection: loop {
                let read = frame::read_frame::<ControlMsg, _>(&mut reader, MAX_HELLO_LEN);
                tokio::pin!(read);
                loop {
                    let (outgoing, read_done) = tokio::select! {
                        _ = replaced.cancelled() => {
                            if shared.shutdown.is_cancelled() {
                                (Some(ControlMsg::Goodbye { code: ErrorCode::ShuttingDown, reason: "SP shutting down".into() }), false)
                            } else {
                                // Either a newer connection took over, or a kick already
                                // queued its goodbye; flush what is queued and end.
                                while let Ok(msg) = commands.try_recv() {
                                    let _ = frame::write_frame(&mut writer, &*msg).await;
                                }
                                break 'connection "replaced or dropped by the SP".to_string();
                            }
                        }
                        cmd = commands.recv() => (cmd.map(|m| *m), false),
                        msg = &mut read => {
                            last_heard = Instant::now();
                            match msg {
                                Ok(None) => break 'connection "closed by the tenant".to_string(),
                                Err(e) => break 'connection format!("bad frame from the tenant: {e}"),
                                Ok(Some(msg)) => (handle_incoming(&shared, &tenant, conn_id, msg, &mut ping_sent), true),
                            }
                        }
                        _ = tick.tick() => {
                            if last_heard.elapsed() > config.dead_after() {
                                break 'connection format!("no heartbeat for {} s", config.dead_after_secs);
                            }
                            ticks += 1;
                            // The tenant's own pings prove it alive and our pongs prove us
                            // alive to it: ping only a tenant that has been quiet for a whole
                            // interval, and every RTT_EVERY_TICKS ticks to measure the round
                            // trip. Halves the heartbeat frames of a large idle fleet.
                            if last_heard.elapsed() < config.heartbeat() && ticks % RTT_EVERY_TICKS != 1 {
                                (None, false)
                            } else {
                                seq += 1;
                                ping_sent = Some((seq, Instant::now()));
                                (Some(ControlMsg::Ping { seq }), false)
                            }
                        }
                    };
                    if let Some(msg) = outgoing {
                        let goodbye = matches!(msg, ControlMsg::Goodbye { .. });
                        match tokio::time::timeout(
                            config.dead_after(),
                            frame::write_frame(&mut writer, &msg),
                        )
                        .await
                        {
                            Ok(Ok(())) if goodbye => break 'connection "goodbye sent".to_string(),
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => break 'connection format!("write failed: {e}"),
                            Err(_) => break 'connection "tenant stopped reading".to_string(),
                        }
                    }
                    if read_done {
                        // Start reading the next frame.
                        continue 'connection;
                    }
                }
            }
        }
    };

    {
        let mut controls = lock(&shared.controls);
        if controls.get(&tenant).is_some_and(|h| h.conn_id == conn_id) {
            controls.remove(&tenant);
        }
    }
    if shared.sp.presence.disconnect(&tenant, conn_id)
        && let Err(e) = shared
            .sp
            .registry
            .set_last_seen(&tenant, crate::sp::registry::now_secs())
    {
        tracing::warn!(%tenant, "could not store last seen: {e}");
    }
    tracing::info!(%tenant, "tenant control connection ended: {ended}");
}

/// Answers what the tenant sent; returns a message to send back, if any.
fn handle_incoming(
    shared: &Shared,
    tenant: &str,
    conn_id: u64,
    msg: ControlMsg,
    ping_sent: &mut Option<(u64, Instant)>,
) -> Option<ControlMsg> {
    match msg {
        ControlMsg::Ping { seq } => Some(ControlMsg::Pong { seq }),
        ControlMsg::Pong { seq } => {
            if let Some((sent_seq, at)) = *ping_sent
                && sent_seq == seq
            {
                shared
                    .sp
                    .presence
                    .set_rtt(tenant, conn_id, at.elapsed().as_secs_f64() * 1000.0);
                *ping_sent = None;
            }
            None
        }
        ControlMsg::Reject {
            session_id,
            code,
            reason,
        } => {
            let mut pending = lock(&shared.pending);
            // Only the tenant the request went to may reject it.
            if pending.get(&session_id).is_some_and(|p| p.tenant == tenant)
                && let Some(p) = pending.remove(&session_id)
            {
                let _ = p.tx.send(DataOutcome::Rejected(Refusal::new(code, reason)));
            }
            None
        }
        ControlMsg::Status {
            services,
            provider_access,
        } => {
            shared
                .sp
                .presence
                .update_status(tenant, conn_id, services, provider_access);
            None
        }
        other => {
            tracing::debug!(%tenant, "ignoring unexpected control message {other:?}");
            None
        }
    }
}
