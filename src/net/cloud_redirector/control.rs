//! A tenant's control connection at the SP (steps 2, 3 and 6): authenticated once, then
//! heartbeats both ways, `OpenData` requests out, `Reject` and status changes in.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{ControlHandle, DataOutcome, ServerStream, Shared, lock, send_error};
use crate::net::frame::{self, MAX_HELLO_LEN};
use crate::net::protocol::{ControlMsg, ErrorCode, HelloReply, Welcome};
use crate::net::tls;
use crate::sp::Refusal;
use crate::sp::presence::Live;

/// A tenant that keeps pinging is pinged back only every this many heartbeat ticks (for the
/// round trip shown in the tenant list).
const RTT_EVERY_TICKS: u64 = 6;

/// How long a control connection may take to say goodbye once the SP shuts down (or to flush
/// a kick's goodbye), however slowly the tenant reads.
const GOODBYE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

pub(super) async fn serve(
    shared: Arc<Shared>,
    stream: ServerStream,
    tenant: String,
    secret: String,
    live: Live,
) {
    // Boxed: the admission's state (a whole rustls connection, the welcome) is freed once it
    // is done, and the task keeps only the steady loop's state for as long as the tenant
    // stays connected.
    let Some(admitted) = Box::pin(admit(&shared, stream, &tenant, &secret, live)).await else {
        return;
    };
    let conn_id = admitted.conn_id;
    let ended = match admitted.io {
        Ok((reader, writer)) => {
            let channel = Channel {
                reader,
                writer,
                commands: admitted.commands,
                replaced: admitted.replaced,
            };
            steady(&shared, &tenant, conn_id, channel).await
        }
        Err(e) => format!("could not send welcome: {e}"),
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

/// A tenant that passed authentication and is marked online.
struct Admitted {
    conn_id: u64,
    commands: mpsc::Receiver<Box<ControlMsg>>,
    replaced: CancellationToken,
    /// The connection after the welcome, or why the welcome could not be sent.
    io: Result<(tls::RecordReader, tls::RecordWriter), frame::FrameError>,
}

/// What the steady loop works with.
struct Channel {
    reader: tls::RecordReader,
    writer: tls::RecordWriter,
    commands: mpsc::Receiver<Box<ControlMsg>>,
    replaced: CancellationToken,
}

/// Authenticates the tenant, marks it online, sends the welcome and hands the connection
/// over to the record layer. `None`: refused (and told why).
async fn admit(
    shared: &Shared,
    mut stream: ServerStream,
    tenant: &str,
    secret: &str,
    live: Live,
) -> Option<Admitted> {
    let mut auth = shared.sp.authenticate_tenant(tenant, secret);
    if auth.is_err() {
        // The account may have been added or re-keyed a moment ago by another process:
        // look at the registry now rather than at the next poll.
        match shared.sp.refresh_accounts() {
            Ok(kicks) => kicks.iter().for_each(|k| shared.kick(k)),
            Err(e) => tracing::error!("reading the registry: {e:#}"),
        }
        auth = shared.sp.authenticate_tenant(tenant, secret);
    }
    let addr = live.remote_addr.clone();
    if let Err(refusal) = auth {
        tracing::warn!(%tenant, %addr, "tenant refused: {}", refusal.message);
        let _ = send_error(&mut stream, &refusal).await;
        return None;
    }
    let (tx, commands) = mpsc::channel(64);
    let replaced = shared.shutdown.child_token();
    // The secret and enabled flag are checked again, atomically with going online, and the
    // control slot is taken under the same `controls` lock a kick takes: a rotation or a
    // disable after the check above is either seen here, or kicks this very connection.
    let admitted = {
        let mut controls = lock(&shared.controls);
        shared.sp.admit_tenant(tenant, secret, live).map(|conn_id| {
            let handle = ControlHandle {
                conn_id,
                tx,
                replaced: replaced.clone(),
            };
            (conn_id, controls.insert(tenant.to_string(), handle))
        })
    };
    let conn_id = match admitted {
        Ok((conn_id, old)) => {
            if let Some(old) = old {
                tracing::info!(%tenant, "a newer control connection replaces the older one");
                old.replaced.cancel();
            }
            conn_id
        }
        Err(refusal) => {
            tracing::warn!(%tenant, %addr, "tenant refused at admission (account changed meanwhile): {}", refusal.message);
            let _ = send_error(&mut stream, &refusal).await;
            return None;
        }
    };
    let config = &shared.sp.config;
    tracing::info!(%tenant, "tenant online");

    let welcome = HelloReply::Welcome(Welcome {
        server: crate::VERSION.to_string(),
        heartbeat_secs: config.heartbeat_secs,
        dead_after_secs: config.dead_after_secs,
        gateways: shared.sp.gateways(),
        token: None,
        token_expires_in_secs: None,
    });
    // The welcome goes out through rustls; then the connection carries on with only its
    // record keys (`tls::take_over`), so an idle tenant holds no TLS buffers at all. The
    // tenant sends nothing between its hello and the welcome: nothing is in flight at the
    // switch.
    let io = match frame::write_frame(&mut stream, &welcome).await {
        Ok(()) => tls::take_over(stream).map_err(frame::FrameError::Io),
        Err(e) => Err(e),
    };
    Some(Admitted {
        conn_id,
        commands,
        replaced,
        io,
    })
}

/// Heartbeats both ways, commands out, the tenant's messages in, until the connection ends;
/// returns why it ended.
///
/// One task per control connection, no reader task and no channel between them: thousands
/// of idle tenants each cost as little memory and as few wake-ups as possible. The read in
/// progress is kept across the other branches, so a frame is never half read and dropped.
async fn steady(shared: &Shared, tenant: &str, conn_id: u64, channel: Channel) -> String {
    let Channel {
        mut reader,
        mut writer,
        mut commands,
        replaced,
    } = channel;
    let config = &shared.sp.config;
    let mut tick = tokio::time::interval(config.heartbeat());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut last_heard = Instant::now();
    let mut seq = 0u64;
    let mut ticks = 0u64;
    let mut ping_sent: Option<(u64, Instant)> = None;
    loop {
        let read = frame::read_frame::<ControlMsg, _>(&mut reader, MAX_HELLO_LEN);
        tokio::pin!(read);
        loop {
            let (outgoing, read_done) = tokio::select! {
                _ = replaced.cancelled() => {
                    if shared.shutdown.is_cancelled() {
                        (Some(ControlMsg::Goodbye { code: ErrorCode::ShuttingDown, reason: "SP shutting down".into() }), false)
                    } else {
                        // Either a newer connection took over, or a kick already queued
                        // its goodbye; flush what is queued (within the goodbye deadline:
                        // a tenant that stopped reading must not hold this task) and end.
                        let flush = async {
                            while let Ok(msg) = commands.try_recv() {
                                let _ = frame::write_frame(&mut writer, &*msg).await;
                            }
                        };
                        let _ = tokio::time::timeout(GOODBYE_DEADLINE, flush).await;
                        return "replaced or dropped by the SP".to_string();
                    }
                }
                cmd = commands.recv() => (cmd.map(|m| *m), false),
                msg = &mut read => {
                    last_heard = Instant::now();
                    match msg {
                        Ok(None) => return "closed by the tenant".to_string(),
                        Err(e) if e.is_connection_lost() => return format!("connection lost: {e}"),
                        Err(e) => return format!("bad frame from the tenant: {e}"),
                        Ok(Some(msg)) => (handle_incoming(shared, tenant, conn_id, msg, &mut ping_sent), true),
                    }
                }
                _ = tick.tick() => {
                    if last_heard.elapsed() > config.dead_after() {
                        return format!("no heartbeat for {} s", config.dead_after_secs);
                    }
                    ticks += 1;
                    // The tenant's own pings prove it alive and our pongs prove us alive to
                    // it: ping only a tenant that has been quiet for a whole interval, and
                    // every RTT_EVERY_TICKS ticks to measure the round trip. Halves the
                    // heartbeat frames of a large idle fleet.
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
                // A write may wait `dead_after` for a slow tenant, but once the SP shuts down
                // only GOODBYE_DEADLINE more: a tenant that stopped reading cannot hold the
                // shutdown (the goodbye itself, or a write already stuck, ends by then).
                let write = tokio::time::timeout(
                    config.dead_after(),
                    frame::write_frame(&mut writer, &msg),
                );
                let cut = async {
                    shared.shutdown.cancelled().await;
                    tokio::time::sleep(GOODBYE_DEADLINE).await;
                };
                let written = tokio::select! {
                    written = write => written,
                    _ = cut => return format!("tenant stopped reading; gave up {GOODBYE_DEADLINE:?} after shutdown"),
                };
                match written {
                    Ok(Ok(())) if goodbye => return "goodbye sent".to_string(),
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return format!("write failed: {e}"),
                    Err(_) => return "tenant stopped reading".to_string(),
                }
            }
            if read_done {
                // Start reading the next frame.
                break;
            }
        }
    }
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
