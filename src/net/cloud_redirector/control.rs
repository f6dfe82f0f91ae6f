//! A tenant's control connection at the SP (steps 2, 3 and 6): authenticated once, then
//! heartbeats both ways, `OpenData` requests out, `Reject` and status changes in.

use std::sync::Arc;
use std::time::Instant;

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{ControlHandle, DataOutcome, ServerStream, Shared, lock, nodes, send_error};
use crate::net::tls;
use crate::sp::Refusal;
use crate::sp::presence::Live;
use crate::wire::frame::{self, MAX_HELLO_LEN};
use crate::wire::protocol::{
    Beat, ControlMsg, ErrorCode, HeartbeatClock, HelloReply, TENANT_REJECT_CODES, Welcome,
    escape_untrusted, parse_control, validate_services,
};

/// A tenant that keeps pinging is pinged back (in the same record as the pong) on its first
/// ping and then every this many, for the round trip shown in the tenant list.
const RTT_EVERY_PINGS: u64 = 6;

/// A tenant's `status` frames reach the presence table (and every operator's feed) at most
/// once per this window; the latest one wins.
pub(super) const STATUS_WINDOW: std::time::Duration = std::time::Duration::from_secs(1);

/// Longest `reject` reason passed on to a console, in characters.
const MAX_REASON_CHARS: usize = 200;

/// How long a control connection may take to say goodbye once the SP shuts down (or to flush
/// a kick's goodbye), however slowly the tenant reads.
const GOODBYE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

pub(super) async fn serve(
    shared: Arc<Shared>,
    stream: ServerStream,
    tenant: String,
    secret: String,
    tenant_key: String,
    live: Live,
    early_client_hello: bool,
) {
    // Boxed: the admission's state (a whole rustls connection, the welcome) is freed once it
    // is done, and the task keeps only the steady loop's state for as long as the tenant
    // stays connected.
    let Some(admitted) = Box::pin(admit(
        &shared,
        stream,
        &tenant,
        &secret,
        &tenant_key,
        live,
        early_client_hello,
    ))
    .await
    else {
        return;
    };
    let conn_id = admitted.conn_id;
    if let Some(claim) = &admitted.claim {
        nodes::watch_claim(shared.clone(), tenant.clone(), conn_id, claim.lost_token());
    }
    // The rest of the connection's life runs on the control thread, whose reactor its socket
    // was moved to at the take-over (see `ControlThread`); this task ends here.
    let control_thread = shared.control_thread.clone();
    control_thread.spawn(connected(shared, tenant, admitted));
}

/// A control connection from its welcome to its end, then the cleanup: on the control
/// thread.
async fn connected(shared: Arc<Shared>, tenant: String, admitted: Admitted) {
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
    if let Some(claim) = admitted.claim {
        nodes::release(&shared, claim).await;
    }
    // Requests this connection carried will get no answer now: their consoles hear at once
    // (the dropped sender), not after the open timeout.
    lock(&shared.pending).retain(|_, p| p.tenant != tenant || p.conn_id != Some(conn_id));
    if shared.sp.presence.disconnect(&tenant, conn_id)
        && let Err(e) = shared
            .sp
            .registry
            .set_last_seen(&tenant, crate::util::now_unix_secs())
    {
        tracing::warn!(?tenant, "could not store last seen: {e}");
    }
    // `ended` may quote the tenant's bytes (a parse error names what it read): escaped.
    tracing::info!(?tenant, ?ended, "tenant control connection ended");
}

/// A tenant that passed authentication and is marked online.
struct Admitted {
    conn_id: u64,
    /// This node's claim on the tenant, in a cluster with a bus.
    claim: Option<crate::cluster::Claim>,
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
    tenant_key: &str,
    live: Live,
    early_client_hello: bool,
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
        shared.sp.count_control(Err(&refusal));
        tracing::warn!(?tenant, %addr, reason = ?refusal.message, "tenant refused");
        let _ = send_error(&mut stream, &refusal).await;
        return None;
    }
    // In a cluster the tenant is this node's once its claim is on the bus; the claim takes
    // the tenant from any other node, as a newer connection replaces an older one here.
    let claim = match nodes::claim(shared, tenant, &live).await {
        Ok(claim) => claim,
        Err(refusal) => {
            tracing::warn!(?tenant, %addr, reason = ?refusal.message, "tenant refused");
            let _ = send_error(&mut stream, &refusal).await;
            return None;
        }
    };
    let (tx, commands) = mpsc::channel(64);
    let replaced = shared.shutdown.child_token();
    // The secret and enabled flag are checked again, atomically with going online, and the
    // control slot is taken under the same `controls` lock a kick takes: a rotation or a
    // disable after the check above is either seen here, or kicks this very connection.
    let admitted = {
        let mut controls = lock(&shared.controls);
        shared
            .sp
            .admit_tenant(tenant, secret, tenant_key, live)
            .map(|conn_id| {
                let handle = ControlHandle {
                    conn_id,
                    tx,
                    replaced: replaced.clone(),
                    early_client_hello,
                };
                (conn_id, controls.insert(tenant.to_string(), handle))
            })
    };
    let conn_id = match admitted {
        Ok((conn_id, old)) => {
            if let Some(old) = old {
                tracing::warn!(?tenant, %addr, "a newer control connection replaces the older one (two redirectors with one tenant's secret?)");
                // The older one hears why, so its redirector backs off instead of coming
                // straight back to replace this one. It ends once the goodbye is flushed.
                let _ = old.tx.try_send(Box::new(ControlMsg::Goodbye {
                    code: ErrorCode::Replaced,
                    reason: format!("replaced by a connection from {addr}"),
                }));
                old.replaced.cancel();
            }
            conn_id
        }
        Err(refusal) => {
            tracing::warn!(?tenant, %addr, reason = ?refusal.message, "tenant refused at admission (account changed meanwhile)");
            if let Some(claim) = claim {
                nodes::release(shared, claim).await;
            }
            let _ = send_error(&mut stream, &refusal).await;
            return None;
        }
    };
    let config = &shared.sp.config;
    tracing::info!(?tenant, "tenant online");

    let welcome = HelloReply::Welcome(Welcome {
        server: crate::VERSION.to_string(),
        heartbeat_secs: config.heartbeat_secs,
        dead_after_secs: config.dead_after_secs,
        gateways: shared.sp.gateways(),
        token: None,
        token_expires_in_secs: None,
        grant_key: Some(shared.sp.grant_public_key()),
        now: Some(crate::util::now_unix_secs()),
    });
    // The welcome goes out through rustls; then the connection carries on with only its
    // record keys (`tls::take_over`), so an idle tenant holds no TLS buffers at all. The
    // tenant sends nothing between its hello and the welcome: nothing is in flight at the
    // switch.
    let io = match frame::write_frame(&mut stream, &welcome).await {
        Ok(()) => tls::take_over_onto(stream, Some(shared.control_thread.handle()))
            .map_err(frame::FrameError::Io),
        Err(e) => Err(e),
    };
    Some(Admitted {
        conn_id,
        claim,
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
    // The tenant pings every heartbeat and the SP's pongs prove the SP alive to it, so the
    // SP pings only a tenant quiet for a heartbeat and a quarter (a tenant's ping is due
    // after one), and measures the round trip by a ping sent with a pong. A tenant that
    // keeps pinging never wakes this task's timer: per heartbeat, one wake-up for its ping.
    let quiet = config.heartbeat() + config.heartbeat() / 4;
    let mut clock = HeartbeatClock::new(Instant::now(), config.heartbeat(), config.dead_after());
    clock.heard_postponing_tick(Instant::now(), quiet);
    // One timer for the heartbeat ticks and the dead-peer deadline (see HeartbeatClock).
    let wake = tokio::time::sleep_until(clock.next_wake().into());
    tokio::pin!(wake);
    // Kept across the loop's turns like the read: made once, not once per wake-up.
    let cancelled = replaced.cancelled();
    tokio::pin!(cancelled);
    let mut seq = 0u64;
    let mut pings_heard = 0u64;
    let mut ping_sent: Option<(u64, Instant)> = None;
    let mut status = StatusThrottle::default();
    loop {
        let read = frame::read_frame_bytes(&mut reader, MAX_HELLO_LEN);
        tokio::pin!(read);
        loop {
            let mut rtt_ping = false;
            let (outgoing, read_done) = tokio::select! {
                _ = &mut cancelled => {
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
                            let _ = writer.shutdown().await;
                        };
                        let _ = tokio::time::timeout(GOODBYE_DEADLINE, flush).await;
                        return "replaced or dropped by the SP".to_string();
                    }
                }
                cmd = commands.recv() => (cmd.map(|m| *m), false),
                msg = &mut read => {
                    clock.heard_postponing_tick(Instant::now(), quiet);
                    wake.as_mut().reset(clock.next_wake().into());
                    match msg {
                        Ok(None) => return "closed by the tenant".to_string(),
                        Err(e) if e.is_connection_lost() => return format!("connection lost: {e}"),
                        // Not a frame this SP understands (too long, not JSON, an unknown
                        // type, a field missing or of the wrong type): say so once, then close.
                        Err(e) => (Some(bad_frame(tenant, &e.to_string())), true),
                        Ok(Some(body)) => match parse_control(&body) {
                            Ok(msg) => {
                                if let ControlMsg::Ping { rtt_us, .. } = msg {
                                    pings_heard += 1;
                                    if pings_heard % RTT_EVERY_PINGS == 1 {
                                        match rtt_us {
                                            // The tenant measured its own round trip: no ping
                                            // of ours (and no wake-up for its pong) needed.
                                            Some(us) => {
                                                let secs = (us as f64 / 1e6).min(config.dead_after().as_secs_f64());
                                                record_rtt(shared, tenant, conn_id, secs);
                                            }
                                            None => rtt_ping = true,
                                        }
                                    }
                                }
                                let incoming = Incoming { shared, tenant, conn_id };
                                (incoming.handle(msg, &mut ping_sent, &mut status), true)
                            }
                            Err(problem) => (Some(bad_frame(tenant, &problem.0)), true),
                        },
                    }
                }
                // The window of a coalesced status ended: apply the latest one.
                () = status.window_end(), if status.pending.is_some() => {
                    if let Some((services, access)) = status.take_pending(tokio::time::Instant::now()) {
                        nodes::update_status(shared, tenant, conn_id, services, access);
                    }
                    (None, false)
                }
                () = &mut wake => {
                    let now = Instant::now();
                    let beat = clock.wake(now);
                    wake.as_mut().reset(clock.next_wake().into());
                    match beat {
                        Beat::Dead => return format!("no heartbeat for {} s", config.dead_after_secs),
                        // A tick comes only once the tenant has been quiet (see `quiet`).
                        Beat::Tick => {
                            seq += 1;
                            ping_sent = Some((seq, Instant::now()));
                            (Some(ControlMsg::Ping { seq, rtt_us: None }), false)
                        }
                        Beat::Nothing => (None, false),
                    }
                }
            };
            if let Some(msg) = outgoing {
                let goodbye = matches!(msg, ControlMsg::Goodbye { .. });
                let mut msgs = vec![msg];
                if rtt_ping {
                    seq += 1;
                    ping_sent = Some((seq, Instant::now()));
                    msgs.push(ControlMsg::Ping { seq, rtt_us: None });
                }
                // A write may wait `dead_after` for a slow tenant, but once the SP shuts down
                // only GOODBYE_DEADLINE more: a tenant that stopped reading cannot hold the
                // shutdown (the goodbye itself, or a write already stuck, ends by then).
                let write = tokio::time::timeout(
                    config.dead_after(),
                    frame::write_frames(&mut writer, &msgs),
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
                    Ok(Ok(())) if goodbye => {
                        // close_notify after the goodbye: the tenant reads a clean end.
                        let _ = tokio::time::timeout(GOODBYE_DEADLINE, writer.shutdown()).await;
                        return format!("goodbye sent: {:?}", msgs[0]);
                    }
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

/// A tenant's heartbeat round trip, measured by the SP or reported by the tenant: in the
/// metrics and the tenant's row.
fn record_rtt(shared: &Shared, tenant: &str, conn_id: u64, secs: f64) {
    shared.sp.metrics.heartbeat_rtt_seconds.observe(secs);
    shared.sp.presence.set_rtt(tenant, conn_id, secs * 1000.0);
}

/// The `goodbye` for a frame the SP cannot take; the reason is logged too.
fn bad_frame(tenant: &str, problem: &str) -> ControlMsg {
    let reason = format!("bad frame from the tenant: {problem}");
    tracing::warn!(?tenant, ?reason, "ending the control connection");
    ControlMsg::Goodbye {
        code: ErrorCode::BadRequest,
        reason,
    }
}

/// A tenant's offered services and consent, as a `status` frame gives them.
type Status = (Vec<String>, bool);

/// Coalesces a tenant's `status` frames: the first one after a quiet [`STATUS_WINDOW`] is
/// applied at once and opens a window; the frames inside it only replace the pending one,
/// which is applied when the window ends (and opens the next). A tenant that floods `status`
/// costs each operator's feed at most one change per window, and the list still ends on the
/// tenant's latest word.
#[derive(Default)]
struct StatusThrottle {
    /// When the current window ends; `None` before the first status.
    window_end: Option<tokio::time::Instant>,
    /// The latest status received inside the window, not applied yet.
    pending: Option<Status>,
}

impl StatusThrottle {
    /// Takes a new status: `Some` if it is to be applied now, else it waits for the window.
    fn offer(&mut self, status: Status, now: tokio::time::Instant) -> Option<Status> {
        if self.window_end.is_some_and(|end| now < end) {
            self.pending = Some(status);
            None
        } else {
            // Newer than anything still pending, which it replaces.
            self.pending = None;
            self.window_end = Some(now + STATUS_WINDOW);
            Some(status)
        }
    }

    /// Completes when the current window ends (never, before the first status).
    async fn window_end(&self) {
        match self.window_end {
            Some(end) => tokio::time::sleep_until(end).await,
            None => std::future::pending().await,
        }
    }

    /// The pending status, opening the next window (from `now`) for what comes after it.
    fn take_pending(&mut self, now: tokio::time::Instant) -> Option<Status> {
        let status = self.pending.take()?;
        self.window_end = Some(now + STATUS_WINDOW);
        Some(status)
    }
}

/// One control connection's view, for handling what its tenant sent.
struct Incoming<'a> {
    shared: &'a Shared,
    tenant: &'a str,
    conn_id: u64,
}

impl Incoming<'_> {
    /// Answers what the tenant sent; returns a message to send back, if any (a `goodbye`
    /// ends the connection once it is sent).
    fn handle(
        &self,
        msg: ControlMsg,
        ping_sent: &mut Option<(u64, Instant)>,
        status: &mut StatusThrottle,
    ) -> Option<ControlMsg> {
        let Incoming {
            shared,
            tenant,
            conn_id,
        } = *self;
        match msg {
            ControlMsg::Ping { seq, .. } => Some(ControlMsg::Pong { seq }),
            ControlMsg::Pong { seq } => {
                if let Some((sent_seq, at)) = *ping_sent
                    && sent_seq == seq
                {
                    record_rtt(shared, tenant, conn_id, at.elapsed().as_secs_f64());
                    *ping_sent = None;
                }
                None
            }
            ControlMsg::Reject {
                session_id,
                code,
                reason,
            } => {
                // Only the tenant the request went to may reject it.
                let waiting = {
                    let mut pending = lock(&shared.pending);
                    match pending.get(&session_id) {
                        Some(p) if p.tenant == tenant => pending.remove(&session_id),
                        _ => None,
                    }
                };
                if let Some(p) = waiting {
                    let refusal = tenant_refusal(tenant, code, &reason);
                    let _ = p.tx.send(DataOutcome::Rejected(refusal));
                } else if let Some(forward) = nodes::take_forward(shared, tenant, &session_id) {
                    // The console waits on another node.
                    let refusal = tenant_refusal(tenant, code, &reason);
                    nodes::pass_on_rejection(shared, forward, session_id, refusal);
                }
                None
            }
            ControlMsg::Status {
                services,
                provider_access,
            } => {
                if let Err(problem) = validate_services(&services) {
                    tracing::warn!(?tenant, ?problem, "invalid status from the tenant");
                    return Some(ControlMsg::Goodbye {
                        code: ErrorCode::BadRequest,
                        reason: format!("invalid status: {problem}"),
                    });
                }
                let now = tokio::time::Instant::now();
                if let Some((services, access)) = status.offer((services, provider_access), now) {
                    nodes::update_status(shared, tenant, conn_id, services, access);
                }
                None
            }
            other => {
                tracing::debug!(?tenant, "ignoring unexpected control message {other:?}");
                None
            }
        }
    }
}

/// What the console hears when its tenant rejects a session. The tenant's code is passed on
/// only if it is one of [`TENANT_REJECT_CODES`]; any other (an SP code such as
/// `token_expired`, or one this build does not know) becomes `tenant_rejected`, so a tenant
/// cannot make a console believe the SP refused it. The reason is escaped and capped either
/// way: it is the tenant's text on the operator's screen.
fn tenant_refusal(tenant: &str, code: ErrorCode, reason: &str) -> Refusal {
    let reason = escape_untrusted(reason, MAX_REASON_CHARS);
    if TENANT_REJECT_CODES.contains(&code) {
        return Refusal::new(code, reason);
    }
    tracing::warn!(
        ?tenant,
        ?code,
        "the tenant rejected a session with a code a tenant may not use; passed on as tenant_rejected"
    );
    Refusal::new(
        ErrorCode::TenantRejected,
        format!("tenant {tenant} refused the session: {reason}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(name: &str) -> Status {
        (vec![name.to_string()], true)
    }

    #[test]
    fn status_throttle_applies_the_first_at_once_and_the_latest_at_the_window_end() {
        let mut throttle = StatusThrottle::default();
        let t0 = tokio::time::Instant::now();
        assert_eq!(throttle.offer(status("a"), t0), Some(status("a")));
        assert_eq!(throttle.window_end, Some(t0 + STATUS_WINDOW));
        for name in ["b", "c", "d"] {
            assert_eq!(throttle.offer(status(name), t0 + STATUS_WINDOW / 2), None);
        }
        // At the window's end (the steady loop's timer), the latest is applied.
        let now = t0 + STATUS_WINDOW;
        assert_eq!(throttle.take_pending(now), Some(status("d")));
        assert_eq!(throttle.take_pending(now), None);
        // The pending one opened a new window: the next waits again.
        assert_eq!(throttle.offer(status("e"), now), None);
        // After a quiet window, the next is applied at once.
        let later = now + STATUS_WINDOW * 2;
        assert_eq!(throttle.offer(status("f"), later), Some(status("f")));
        // ... and it supersedes one still pending (its timer had not run yet).
        assert_eq!(throttle.take_pending(later), None);
    }

    #[test]
    fn reject_codes_outside_the_whitelist_become_tenant_rejected() {
        for code in TENANT_REJECT_CODES {
            assert_eq!(tenant_refusal("acme", code, "r").code, code);
        }
        for code in [
            ErrorCode::TokenExpired,
            ErrorCode::AuthFailed,
            ErrorCode::AccessDenied,
            ErrorCode::TenantOffline,
            ErrorCode::Internal,
        ] {
            let refusal = tenant_refusal("acme", code, "\u{1b}[2Jlog in again\n");
            assert_eq!(refusal.code, ErrorCode::TenantRejected, "{code:?}");
            assert!(
                refusal.message.ends_with("\\u{1b}[2Jlog in again\\n"),
                "{}",
                refusal.message
            );
        }
        let long = "x".repeat(1000);
        let refusal = tenant_refusal("acme", ErrorCode::Busy, &long);
        assert_eq!(refusal.message.len(), MAX_REASON_CHARS + 3);
    }
}
