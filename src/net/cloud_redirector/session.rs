//! Console sessions at the SP (steps 5, 6 and 8): the console's connection is held while the
//! tenant is asked for a data connection, with a grant the SP signs for this one session; the
//! nonce the tenant brings back is matched (single use, short-lived, bound to that tenant);
//! then both connections leave the SP's TLS, and the SP copies the bytes of the end-to-end
//! channel between them (which it cannot read) until the session ends, and audits it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::AsyncReadExt;
use tokio::sync::oneshot;

use super::{DataOutcome, Pending, ServerStream, Shared, lock, nodes, send_error};
use crate::metrics::SessionEnd;
use crate::net::socket_splice::{RawSide, splice_sockets};
use crate::net::splice::{Counters, Side, SpliceEnd};
use crate::net::tls;
use crate::sp::registry::{Party, SessionOutcome};
use crate::sp::sessions::LiveSession;
use crate::sp::{Refusal, auth};
use crate::wire::frame;
use crate::wire::protocol::{ControlMsg, ErrorCode, SessionMsg, Stage};

/// Removes a pending request however the console's wait ends.
struct PendingGuard<'a> {
    shared: &'a Shared,
    session_id: String,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        lock(&self.shared.pending).remove(&self.session_id);
    }
}

/// Where a console connection came from.
pub(super) struct ConsoleAddr {
    /// The console (behind a gateway, the client its PROXY header named).
    pub client: SocketAddr,
    /// The trusted gateway it came through, if any.
    pub via: Option<SocketAddr>,
}

/// What a console asked for in its hello.
pub(super) struct Asked {
    pub tenant: String,
    pub service: String,
    /// Its end-to-end ClientHello sent ahead (hex), for a tenant that takes it early.
    pub client_hello: Option<String>,
}

pub(super) async fn console(
    shared: Arc<Shared>,
    mut stream: ServerStream,
    from: ConsoleAddr,
    token: String,
    asked: Asked,
) {
    let Asked {
        tenant,
        service,
        client_hello,
    } = asked;
    let started = Instant::now();
    let client = from.client;
    let metrics = &shared.sp.metrics;
    let who = match shared.sp.authorize_session(&token, &tenant, &service) {
        Ok(who) => who,
        Err(refusal) => {
            metrics.session_end(SessionEnd::Refused);
            tracing::info!(%client, ?tenant, ?service, reason = ?refusal.message, "session refused");
            let _ = send_error(&mut stream, &refusal).await;
            return;
        }
    };
    let data =
        request_data_connection(&shared, &mut stream, &tenant, &service, &who, client_hello).await;
    let Opened {
        session_id,
        mut data,
        client_hello_sent,
    } = match data {
        Ok(data) => data,
        Err(refusal) => {
            metrics.session_end(SessionEnd::Refused);
            tracing::info!(%client, ?tenant, ?service, reason = ?refusal.message, "session failed");
            let _ = send_error(&mut stream, &refusal).await;
            return;
        }
    };
    let operator = &who.operator;

    let audit_id =
        match shared
            .sp
            .registry
            .audit_start(&operator.name, &tenant, &service, &client.to_string())
        {
            Ok(id) => id,
            Err(e) => {
                // No session without its audit record.
                metrics.session_end(SessionEnd::Refused);
                tracing::error!("audit log write failed: {e}");
                let refusal =
                    Refusal::new(ErrorCode::Internal, "the SP could not write its audit log");
                let _ = tokio::join!(
                    send_error(&mut stream, &refusal),
                    send_error(&mut data, &refusal)
                );
                return;
            }
        };
    let to_console = SessionMsg::Ready {
        session_id: session_id.clone(),
        tenant_key: shared
            .sp
            .presence
            .account(&tenant)
            .and_then(|a| a.tenant_key),
        client_hello_sent,
    };
    let to_tenant = SessionMsg::Ready {
        session_id: session_id.clone(),
        tenant_key: None,
        client_hello_sent: false,
    };
    // `ready` is the last record of the SP's TLS on both connections; from the next byte on
    // they carry the end-to-end channel, which the SP copies without reading.
    let (a, b) = tokio::join!(
        frame::write_frame(&mut stream, &to_console),
        frame::write_frame(&mut data, &to_tenant)
    );
    let raw = match (a, b) {
        (Err(e), _) => Err((Side::A, format!("sending ready: {e}"))),
        (_, Err(e)) => Err((Side::B, format!("sending ready: {e}"))),
        _ => match (tls::e2e::leave_server(stream), tls::e2e::leave_server(data)) {
            (Err(e), _) => Err((Side::A, e.to_string())),
            (_, Err(e)) => Err((Side::B, e.to_string())),
            (Ok(console), Ok(tenant)) => Ok((console, tenant)),
        },
    };
    let report = match raw {
        Err((side, error)) => {
            let report = crate::net::splice::SpliceReport {
                a_to_b: 0,
                b_to_a: 0,
                end: SpliceEnd::Failed { side, error },
            };
            (report, false, None)
        }
        Ok((console, tenant_side)) => {
            metrics
                .session_setup_seconds
                .observe(started.elapsed().as_secs_f64());
            tracing::info!(operator = ?operator.name, ?tenant, ?service, ?session_id, "session spliced");
            shared.sp.presence.session_delta(&tenant, true);
            let tenant_cancel = shared.sessions_token(&tenant);
            let cancel = tenant_cancel.child_token();
            let number = shared
                .next_session
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            lock(&shared.live_sessions).insert(
                number,
                super::LiveSession {
                    token: token.clone(),
                    cancel: cancel.clone(),
                },
            );
            let counters = Counters::default();
            let listed = shared.sp.sessions.insert(LiveSession::new(
                session_id.clone(),
                tenant.clone(),
                operator.name.clone(),
                service.clone(),
                client.to_string(),
                from.via.map(|gateway| gateway.ip().to_string()),
                (counters.a_to_b.clone(), counters.b_to_a.clone()),
                cancel.clone(),
            ));
            metrics.sessions_active.inc();
            let raw = |stream: tls::ReadAhead| {
                let (tcp, pending) = stream.into_parts();
                RawSide { tcp, pending }
            };
            let report = splice_sockets(raw(console), raw(tenant_side), &counters, &cancel).await;
            metrics.sessions_active.dec();
            let ended_by = listed.ended_by();
            drop(listed);
            lock(&shared.live_sessions).remove(&number);
            shared.sp.presence.session_delta(&tenant, false);
            (report, tenant_cancel.is_cancelled(), ended_by)
        }
    };
    let (report, tenant_ended, ended_by) = report;
    // The splice's side A is the console, side B the tenant's data channel.
    let who = |side: &Side| match side {
        Side::A => Party::Console,
        Side::B => Party::Tenant,
    };
    let outcome = match &report.end {
        SpliceEnd::Closed => SessionOutcome::Closed,
        SpliceEnd::ClosedWithoutNotify { side } => {
            SessionOutcome::ClosedWithoutNotify { by: who(side) }
        }
        SpliceEnd::Failed { side, error } => SessionOutcome::Failed {
            by: who(side),
            error: error.clone(),
        },
        SpliceEnd::Cancelled if ended_by.is_some() => SessionOutcome::EndedByAdmin {
            by: ended_by.unwrap_or(crate::sp::registry::Actor::Local),
        },
        SpliceEnd::Cancelled if shared.shutdown.is_cancelled() => SessionOutcome::SpShutdown,
        SpliceEnd::Cancelled if tenant_ended => SessionOutcome::TenantEnded,
        SpliceEnd::Cancelled => SessionOutcome::TokenRevoked,
    };
    metrics.session_end(match &outcome {
        SessionOutcome::Closed => SessionEnd::Closed,
        SessionOutcome::ClosedWithoutNotify { .. } => SessionEnd::ClosedWithoutNotify,
        SessionOutcome::Failed { .. } | SessionOutcome::Interrupted => SessionEnd::Failed,
        SessionOutcome::SpShutdown => SessionEnd::SpShutdown,
        SessionOutcome::TenantEnded => SessionEnd::TenantEnded,
        SessionOutcome::TokenRevoked => SessionEnd::TokenRevoked,
        SessionOutcome::EndedByAdmin { .. } => SessionEnd::EndedByAdmin,
    });
    metrics.relayed(report.a_to_b, report.b_to_a);
    tracing::info!(
        ?tenant,
        ?session_id,
        to_tenant = report.a_to_b,
        from_tenant = report.b_to_a,
        outcome = %outcome,
        "session ended"
    );
    let end = AuditEnd {
        id: audit_id,
        bytes_to_tenant: report.a_to_b,
        bytes_from_tenant: report.b_to_a,
        outcome,
    };
    close_audit_row(&end, AUDIT_END_BACKOFF, |e| {
        shared
            .sp
            .registry
            .audit_end(e.id, e.bytes_to_tenant, e.bytes_from_tenant, &e.outcome)
    })
    .await;
}

/// The delays between attempts to close a session's audit row: a locked or busy registry
/// (another process's long transaction, a full disk being cleared) gets a few chances.
const AUDIT_END_BACKOFF: [std::time::Duration; 4] = [
    std::time::Duration::from_millis(100),
    std::time::Duration::from_millis(300),
    std::time::Duration::from_millis(1000),
    std::time::Duration::from_millis(3000),
];

/// What closes one audit row.
struct AuditEnd {
    id: i64,
    bytes_to_tenant: u64,
    bytes_from_tenant: u64,
    outcome: SessionOutcome,
}

/// Closes a session's audit row, trying again after each delay of `backoff` when the write
/// fails, and logs at error level if it still fails (the row then stays open and is marked
/// `interrupted: SP stopped` at the next start). Returns whether it was written.
async fn close_audit_row<E: std::fmt::Display>(
    end: &AuditEnd,
    backoff: impl IntoIterator<Item = std::time::Duration>,
    mut write: impl FnMut(&AuditEnd) -> Result<(), E>,
) -> bool {
    let mut delays = backoff.into_iter();
    let mut attempt = 1;
    loop {
        match write(end) {
            Ok(()) => return true,
            Err(e) => match delays.next() {
                Some(delay) => {
                    tracing::warn!(
                        audit_id = end.id,
                        attempt,
                        "closing the audit row failed, retrying in {delay:?}: {e}"
                    );
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                None => {
                    tracing::error!(
                        audit_id = end.id,
                        attempt,
                        outcome = %end.outcome,
                        to_tenant = end.bytes_to_tenant,
                        from_tenant = end.bytes_from_tenant,
                        "audit log write failed for good; the session's row stays open: {e}"
                    );
                    return false;
                }
            },
        }
    }
}

/// A tenant's data connection for a waiting console.
struct Opened {
    session_id: String,
    data: ServerStream,
    /// The console's ClientHello went to the tenant inside `open_data`.
    client_hello_sent: bool,
}

/// Steps 6 to 8: asks the tenant for a data connection, with the session's grant (and the
/// console's ClientHello, for a tenant that takes it early), and waits for it while watching
/// the console: one that closes (or half-closes) its side has stopped waiting, and its nonce
/// dies at once. A console must send nothing more before `ready` (its next bytes belong to
/// the end-to-end channel); one that does is refused.
async fn request_data_connection(
    shared: &Shared,
    console: &mut ServerStream,
    tenant: &str,
    service: &str,
    who: &crate::sp::Authorized,
    client_hello: Option<String>,
) -> Result<Opened, Refusal> {
    let offline = || {
        Refusal::new(
            ErrorCode::TenantOffline,
            format!("tenant {tenant} is offline"),
        )
    };
    // Here, or (in a cluster) on the node that holds the tenant.
    let control = shared.control_sender(tenant);
    if control.is_none() && !nodes::held_elsewhere(shared, tenant) {
        return Err(offline());
    }
    let config = &shared.sp.config;
    let session_id = auth::random_hex_16();
    let nonce = auth::random_hex_32();
    let (tx, rx) = oneshot::channel();
    lock(&shared.pending).insert(
        session_id.clone(),
        Pending {
            tenant: tenant.to_string(),
            conn_id: control.as_ref().map(|route| route.conn_id),
            nonce: nonce.clone(),
            deadline: Instant::now() + config.session_open_timeout(),
            tx,
        },
    );
    let _guard = PendingGuard {
        shared,
        session_id: session_id.clone(),
    };
    let grant = shared.sp.grant(&session_id, tenant, service, who);
    let client_hello_sent = match control {
        Some(route) => {
            let client_hello = client_hello.filter(|_| route.early_client_hello);
            let sent = client_hello.is_some();
            route
                .tx
                .send(Box::new(ControlMsg::OpenData {
                    session_id: session_id.clone(),
                    nonce,
                    service: service.to_string(),
                    grant,
                    client_hello,
                }))
                .await
                .map_err(|_| offline())?;
            sent
        }
        None => {
            let request = crate::cluster::OpenData {
                tenant: tenant.to_string(),
                epoch: crate::cluster::Epoch(0),
                session_id: session_id.clone(),
                service: service.to_string(),
                from_node: String::new(),
                nonce,
                grant: Some(grant),
                client_hello,
            };
            nodes::open_on_owner(shared, tenant, request).await?
        }
    };
    frame::write_frame(
        console,
        &SessionMsg::Progress {
            stage: Stage::WaitingForTenant,
        },
    )
    .await
    .map_err(|e| Refusal::new(ErrorCode::BadRequest, format!("console went away: {e}")))?;

    let cancel = shared.sessions_token(tenant);
    tokio::select! {
        outcome = rx => match outcome {
            Ok(DataOutcome::Connected(data)) => Ok(Opened {
                session_id,
                data: *data,
                client_hello_sent,
            }),
            Ok(DataOutcome::Rejected(refusal)) => Err(refusal),
            Err(_) => Err(Refusal::new(
                ErrorCode::TenantOffline,
                format!("tenant {tenant} went offline before it answered"),
            )),
        },
        gone = console_left(console) => Err(Refusal::new(
            ErrorCode::BadRequest,
            format!("the console stopped waiting: {gone}"),
        )),
        _ = tokio::time::sleep(config.session_open_timeout()) => Err(Refusal::new(
            ErrorCode::TenantTimeout,
            format!("tenant {tenant} did not open a data connection within {} s", config.session_open_timeout_secs),
        )),
        _ = cancel.cancelled() => Err(Refusal::new(
            if shared.shutdown.is_cancelled() { ErrorCode::ShuttingDown } else { ErrorCode::TenantDisabled },
            "the session was ended by the SP before it opened",
        )),
    }
}

/// Completes, saying how, when a waiting console ends its side (close_notify, a bare FIN, a
/// reset) or breaks the protocol by sending data before `ready`.
async fn console_left(console: &mut ServerStream) -> String {
    let mut buf = [0u8; 1];
    match console.read(&mut buf).await {
        Ok(0) => "it closed its connection".to_string(),
        Ok(_) => "it sent data before ready (a console must wait for ready)".to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            "it closed its connection (no close_notify)".to_string()
        }
        Err(e) => format!("its connection failed: {e}"),
    }
}

/// A tenant's data connection (step 7 at the SP): hand it to the console that waits for it.
pub(super) async fn tenant_data(
    shared: Arc<Shared>,
    mut stream: ServerStream,
    tenant: String,
    session_id: String,
    nonce: String,
) {
    let pending = {
        let mut map = lock(&shared.pending);
        let valid = map.get(&session_id).is_some_and(|p| {
            p.tenant == tenant
                && auth::constant_time_eq(&p.nonce, &nonce)
                && Instant::now() < p.deadline
        });
        // A wrong guess leaves the real request in place; only the right tenant with the
        // right nonce consumes it, once.
        if valid { map.remove(&session_id) } else { None }
    };
    let Some(pending) = pending else {
        // In a cluster the console may wait on another node, which asked this one.
        if let Some(forward) = nodes::take_forward(&shared, &tenant, &session_id) {
            nodes::forward_data(shared, stream, tenant, session_id, nonce, forward).await;
            return;
        }
        tracing::warn!(
            ?tenant,
            ?session_id,
            "data connection refused: unknown, expired, used or foreign nonce"
        );
        let _ = send_error(
            &mut stream,
            &Refusal::new(ErrorCode::BadNonce, ErrorCode::BadNonce.describe()),
        )
        .await;
        return;
    };
    if let Err(DataOutcome::Connected(mut stream)) =
        pending.tx.send(DataOutcome::Connected(Box::new(stream)))
    {
        // The console's wait ended in the moment between: the nonce had just expired.
        let refusal = Refusal::new(
            ErrorCode::BadNonce,
            "expired nonce: the console stopped waiting",
        );
        let _ = send_error(&mut stream, &refusal).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn end() -> AuditEnd {
        AuditEnd {
            id: 7,
            bytes_to_tenant: 1,
            bytes_from_tenant: 2,
            outcome: SessionOutcome::Closed,
        }
    }

    /// The real delays' count, a millisecond each (the test checks attempts, not time).
    fn quick() -> Vec<Duration> {
        vec![Duration::from_millis(1); AUDIT_END_BACKOFF.len()]
    }

    #[tokio::test]
    async fn a_failed_audit_end_is_retried_until_it_succeeds() {
        let mut calls = 0;
        let written = close_audit_row(&end(), quick(), |_| {
            calls += 1;
            if calls < 3 {
                Err("database is locked")
            } else {
                Ok(())
            }
        })
        .await;
        assert!(written);
        assert_eq!(calls, 3);
    }

    #[tokio::test]
    async fn an_audit_end_that_keeps_failing_gives_up_after_the_backoff() {
        let mut calls = 0;
        let written = close_audit_row(&end(), quick(), |_| {
            calls += 1;
            Err::<(), _>("disk I/O error")
        })
        .await;
        assert!(!written);
        assert_eq!(calls, AUDIT_END_BACKOFF.len() + 1);
        // A few seconds in all: a session's end is not held for long.
        let total: Duration = AUDIT_END_BACKOFF.iter().sum();
        assert!(total <= Duration::from_secs(5), "{total:?}");
    }
}
