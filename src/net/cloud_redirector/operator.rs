//! The operator API at the SP (step 4): login, then the tenant list as one snapshot followed
//! by live changes. An operator sees only the tenants their account may open.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

use super::{ServerStream, Shared, send_error};
use crate::net::AbortOnDrop;
use crate::net::frame::{self, FrameError, MAX_HELLO_LEN};
use crate::net::protocol::{ApiRequest, ApiResponse, ErrorCode, HelloReply, TenantInfo, Welcome};
use crate::sp::Refusal;
use crate::sp::presence::TenantEvent;
use crate::sp::registry::Operator;

pub(super) async fn serve(
    shared: Arc<Shared>,
    mut stream: ServerStream,
    client: SocketAddr,
    user: String,
    password: Option<String>,
    token: Option<String>,
) {
    let login = match (password, token) {
        (Some(password), _) => {
            let sp = shared.sp.clone();
            let user = user.clone();
            tokio::task::spawn_blocking(move || sp.login(&user, &password, client.ip()))
                .await
                .unwrap_or_else(|_| Err(Refusal::new(ErrorCode::Internal, "login check failed")))
                .and_then(|(token, ttl)| Ok((shared.sp.check_token(&token)?, token, Some(ttl))))
        }
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
    let welcome = HelloReply::Welcome(Welcome {
        server: crate::VERSION.to_string(),
        heartbeat_secs: 0,
        dead_after_secs: 0,
        gateways: shared.sp.gateways(),
        token: Some(token.clone()),
        token_expires_in_secs: ttl,
    });
    if frame::write_frame(&mut stream, &welcome).await.is_err() {
        return;
    }
    if let Err(e) = requests(&shared, stream, &operator, &token).await {
        tracing::debug!(%client, operator = %operator.name, "operator connection ended: {e}");
    }
}

async fn requests(
    shared: &Shared,
    stream: ServerStream,
    operator: &Operator,
    token: &str,
) -> Result<(), FrameError> {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let (tx, mut incoming) = mpsc::channel(8);
    let _reader = AbortOnDrop(tokio::spawn(async move {
        loop {
            let item = frame::read_frame::<ApiRequest, _>(&mut reader, MAX_HELLO_LEN).await;
            let stop = !matches!(item, Ok(Some(_)));
            if tx.send(item).await.is_err() || stop {
                return;
            }
        }
    }));
    let allowed = |info: &TenantInfo| operator.may_open(&info.name);
    let mut events = None;
    loop {
        tokio::select! {
            request = incoming.recv() => match request {
                None | Some(Ok(None)) => return Ok(()),
                Some(Err(e)) => {
                    let refusal = Refusal::new(ErrorCode::BadRequest, format!("malformed request: {e}"));
                    let _ = send_error(&mut writer, &refusal).await;
                    return Err(e);
                }
                Some(Ok(Some(ApiRequest::ListTenants { subscribe }))) => {
                    let (tenants, rx) = shared.sp.presence.snapshot_and_subscribe();
                    let tenants = tenants.into_iter().filter(allowed).collect();
                    frame::write_frame(&mut writer, &ApiResponse::Tenants { tenants }).await?;
                    if subscribe {
                        events = Some(rx);
                    }
                }
                Some(Ok(Some(ApiRequest::Logout))) => {
                    if let Err(e) = shared.sp.registry.revoke_token(token) {
                        tracing::error!("revoking a token: {e}");
                    }
                    frame::write_frame(&mut writer, &ApiResponse::LoggedOut).await?;
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
                        let (tenants, rx) = shared.sp.presence.snapshot_and_subscribe();
                        events = Some(rx);
                        ApiResponse::Tenants { tenants: tenants.into_iter().filter(allowed).collect() }
                    }
                    Err(RecvError::Closed) => return Ok(()),
                };
                frame::write_frame(&mut writer, &response).await?;
            }
            _ = shared.shutdown.cancelled() => return Ok(()),
        }
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
