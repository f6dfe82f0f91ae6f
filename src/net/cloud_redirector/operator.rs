//! The operator API at the SP (step 4): login, then the tenant list as one snapshot followed
//! by live changes. An operator sees only the tenants their account may open. A console
//! whose session was cut asks here why (`session_end`): the SP cannot say it inside the
//! session's end-to-end channel.
//!
//! A password login first passes [`SpService::begin_login`](crate::sp::SpService::begin_login)
//! (the per-source limit and the cap on password checks running at once) before its Argon2id
//! check gets a blocking thread. An open connection is tracked with the live sessions, by its
//! token: it ends, with an error frame saying why, when the token is revoked (logout, or a
//! `rac sp operator` command) or expires.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::{LiveSession, ServerStream, Shared, lock, send_error};
use crate::sp::Refusal;
use crate::sp::presence::{Presence, TenantEvent};
use crate::sp::registry::Operator;
use crate::wire::frame::{self, Connection, FrameError, MAX_HELLO_LEN};
use crate::wire::protocol::{
    ApiRequest, ApiResponse, ErrorCode, HelloReply, ROWS_PER_PAGE, TenantInfo, TenantPage, Welcome,
};

/// How long an operator connection may take to hear `shutting_down` when the SP stops.
const SHUTDOWN_NOTICE: Duration = Duration::from_secs(1);

/// What an operator hello carries.
pub(super) struct Credentials {
    pub user: String,
    pub password: Option<String>,
    pub token: Option<String>,
    /// The console's key, bound to the token a password login issues.
    pub console_key: Option<String>,
}

pub(super) async fn serve(
    shared: Arc<Shared>,
    mut stream: ServerStream,
    client: SocketAddr,
    credentials: Credentials,
) {
    let Credentials {
        user,
        password,
        token,
        console_key,
    } = credentials;
    let login = match (password, token) {
        // Admitted (or refused: rate_limited, busy) before any thread or memory is spent.
        (Some(password), _) => match shared.sp.begin_login(client.ip()) {
            Ok(attempt) => {
                let user = user.clone();
                // One form for every stored key (`AB:CD:..`), whatever form the console sent.
                let console_key = console_key
                    .and_then(|k| crate::wire::parse_fingerprint(&k).ok())
                    .map(|fp| crate::wire::format_fingerprint(&fp));
                tokio::task::spawn_blocking(move || {
                    attempt.finish(&user, &password, console_key.as_deref())
                })
                .await
                .unwrap_or_else(|_| Err(Refusal::new(ErrorCode::Internal, "login check failed")))
                .and_then(|(token, ttl)| Ok((shared.sp.check_token(&token)?, token, Some(ttl))))
            }
            Err(refusal) => Err(refusal),
        },
        (None, Some(token)) => shared.sp.check_token(&token).and_then(|op| {
            if op.name == user {
                Ok((op, token, None))
            } else {
                Err(Refusal::new(
                    ErrorCode::AuthFailed,
                    "token belongs to another operator",
                ))
            }
        }),
        (None, None) => Err(Refusal::new(
            ErrorCode::BadRequest,
            "operator hello needs a password or a token",
        )),
    };
    let (operator, token, ttl) = match login {
        Ok(ok) => ok,
        Err(refusal) => {
            let _ = send_error(&mut stream, &refusal).await;
            return;
        }
    };
    // Tracked from here on, so a revocation after this point ends the connection; one just
    // before it shows as a token no longer stored.
    let tracked = Tracked::new(&shared, &token);
    let expires_at = match shared.sp.registry.token_expires_at(&token) {
        Ok(Some(at)) => at,
        Ok(None) => {
            let _ = send_error(&mut stream, &revoked(&shared, &operator.name)).await;
            return;
        }
        Err(e) => {
            tracing::error!("registry error: {e}");
            let refusal = Refusal::new(ErrorCode::Internal, ErrorCode::Internal.describe());
            let _ = send_error(&mut stream, &refusal).await;
            return;
        }
    };
    let welcome = HelloReply::Welcome(Welcome {
        server: crate::VERSION.to_string(),
        heartbeat_secs: 0,
        dead_after_secs: 0,
        gateways: shared.sp.gateways(),
        token: Some(token.clone()),
        // A token login says how long the token has left, as a password login does.
        token_expires_in_secs: Some(ttl.unwrap_or_else(|| until(expires_at).as_secs())),
        grant_key: None,
        now: None,
    });
    if frame::write_frame(&mut stream, &welcome).await.is_err() {
        return;
    }
    let ended = requests(
        &shared,
        stream,
        &operator,
        &token,
        &tracked.cancel,
        expires_at,
    );
    if let Err(e) = ended.await {
        // The error may quote what the peer sent: escaped.
        tracing::debug!(%client, operator = ?operator.name, error = ?e.to_string(), "operator connection ended");
    }
}

/// An operator connection in `Shared::live_sessions`, under its token, while it lives.
struct Tracked<'a> {
    shared: &'a Shared,
    number: u64,
    /// Cancelled by the registry watcher when the token is revoked.
    cancel: CancellationToken,
}

impl<'a> Tracked<'a> {
    fn new(shared: &'a Shared, token: &str) -> Self {
        let number = shared
            .next_session
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let cancel = CancellationToken::new();
        lock(&shared.live_sessions).insert(
            number,
            LiveSession {
                token: token.to_string(),
                cancel: cancel.clone(),
            },
        );
        Tracked {
            shared,
            number,
            cancel,
        }
    }
}

impl Drop for Tracked<'_> {
    fn drop(&mut self) {
        lock(&self.shared.live_sessions).remove(&self.number);
    }
}

/// Why a token stopped working, in the words the console shows.
fn revoked(shared: &Shared, operator: &str) -> Refusal {
    let message = match shared.sp.registry.operator_password_hash(operator) {
        Ok(None) => format!("the SP ended this connection: operator {operator} was removed"),
        _ => "the SP ended this connection: the session token was revoked (a logout, or the \
              SP's administrator changed this operator's password, tenants or tokens); \
              log in again"
            .to_string(),
    };
    Refusal::new(ErrorCode::AuthFailed, message)
}

/// How long until `expires_at` (seconds since the Unix epoch).
fn until(expires_at: u64) -> Duration {
    Duration::from_secs(expires_at.saturating_sub(crate::util::now_unix_secs()))
}

async fn requests(
    shared: &Shared,
    stream: ServerStream,
    operator: &Operator,
    token: &str,
    revoked_token: &CancellationToken,
    expires_at: u64,
) -> Result<(), FrameError> {
    let mut conn = Connection::new(stream, MAX_HELLO_LEN);
    let allowed = |info: &TenantInfo| operator.may_open(&info.name);
    let mut events = None;
    let mut compact = false;
    let expiry = tokio::time::sleep(until(expires_at));
    tokio::pin!(expiry);
    loop {
        tokio::select! {
            request = conn.next::<ApiRequest>() => match request {
                Ok(None) => return Ok(()),
                Err(e) => {
                    let refusal = Refusal::new(ErrorCode::BadRequest, format!("malformed request: {e}"));
                    let _ = send_error(conn.get_mut(), &refusal).await;
                    return Err(e);
                }
                Ok(Some(ApiRequest::ListTenants { subscribe, compact: asked_compact })) => {
                    let rx = shared.sp.presence.subscribe();
                    // The form of this request's snapshot is the form of a subscriber's
                    // later ones.
                    compact = asked_compact;
                    send_snapshot(&mut conn, &shared.sp.presence, &allowed, compact).await?;
                    if subscribe {
                        events = Some(rx);
                    }
                }
                Ok(Some(ApiRequest::SessionEnd { session_id })) => {
                    let reason = shared.sp.sessions.end_reason(&session_id, &operator.name);
                    conn.send(&ApiResponse::SessionEnded { session_id, reason }).await?;
                }
                Ok(Some(ApiRequest::Logout)) => {
                    if let Err(e) = shared.sp.registry.revoke_token(token) {
                        tracing::error!("revoking a token: {e}");
                    }
                    conn.send(&ApiResponse::LoggedOut).await?;
                    // close_notify: the console reads a clean end after `logged_out`.
                    let _ = conn.get_mut().shutdown().await;
                    return Ok(());
                }
            },
            event = next_event(&mut events) => {
                let response = match event {
                    Ok(TenantEvent::Changed(info)) if allowed(&info) => ApiResponse::TenantChanged { tenant: info },
                    Ok(TenantEvent::Removed(name)) if operator.may_open(&name) => ApiResponse::TenantRemoved { name },
                    Ok(_) => continue,
                    Err(RecvError::Lagged(_)) => {
                        // Too slow to follow every change: start over from a fresh snapshot.
                        events = Some(shared.sp.presence.subscribe());
                        send_snapshot(&mut conn, &shared.sp.presence, &allowed, compact).await?;
                        continue;
                    }
                    Err(RecvError::Closed) => return Ok(()),
                };
                conn.send(&response).await?;
            }
            _ = revoked_token.cancelled() => {
                tracing::info!(operator = ?operator.name, "token revoked: ending its operator connection");
                let _ = send_error(conn.get_mut(), &revoked(shared, &operator.name)).await;
                return Ok(());
            }
            _ = &mut expiry => {
                tracing::info!(operator = ?operator.name, "token expired: ending its operator connection");
                let refusal = Refusal::new(
                    ErrorCode::TokenExpired,
                    "the SP ended this connection: the session token expired; log in again",
                );
                let _ = send_error(conn.get_mut(), &refusal).await;
                return Ok(());
            }
            _ = shared.shutdown.cancelled() => {
                // Said in the one refusal shape, so a console tells a stopping SP from a
                // broken network; a console that does not read cannot hold the shutdown.
                let refusal = Refusal::new(ErrorCode::ShuttingDown, "the SP is shutting down");
                let _ = tokio::time::timeout(SHUTDOWN_NOTICE, send_error(conn.get_mut(), &refusal)).await;
                return Ok(());
            }
        }
    }
}

/// A snapshot in the form the console asked for: one `tenants` frame, or compact pages, each
/// read from the presence table and sent before the next is read (the first page goes out
/// at once, and the table is never locked for the whole list).
async fn send_snapshot(
    conn: &mut Connection<ServerStream>,
    presence: &Presence,
    allowed: &impl Fn(&TenantInfo) -> bool,
    compact: bool,
) -> Result<(), FrameError> {
    let mut cursor: Option<String> = None;
    // The next rows the operator may see, and whether the table has more after them.
    let next_rows = |cursor: &mut Option<String>| loop {
        let chunk = presence.chunk_after(cursor.as_deref(), ROWS_PER_PAGE);
        let end = chunk.len() < ROWS_PER_PAGE;
        if let Some(last) = chunk.last() {
            *cursor = Some(last.name.clone());
        }
        let rows: Vec<TenantInfo> = chunk.into_iter().filter(|t| allowed(t)).collect();
        if end || !rows.is_empty() {
            return (rows, !end);
        }
    };
    if !compact {
        let mut tenants = Vec::new();
        loop {
            let (rows, more) = next_rows(&mut cursor);
            tenants.extend(rows);
            if !more {
                return conn.send(&ApiResponse::Tenants { tenants }).await;
            }
        }
    }
    let now = crate::util::now_unix_secs();
    let (mut rows, mut more) = next_rows(&mut cursor);
    let mut first = true;
    loop {
        // Read ahead one chunk: a page says whether another follows.
        let (next, next_more) = if more {
            next_rows(&mut cursor)
        } else {
            (Vec::new(), false)
        };
        let last = next.is_empty();
        let page = TenantPage {
            first,
            more: !last,
            ..TenantPage::of(rows.into_iter(), now)
        };
        conn.send(&ApiResponse::TenantPage(page)).await?;
        if last {
            return Ok(());
        }
        (rows, more, first) = (next, next_more, false);
    }
}

async fn next_event(
    events: &mut Option<tokio::sync::broadcast::Receiver<TenantEvent>>,
) -> Result<TenantEvent, RecvError> {
    match events {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
