//! The admin listeners: HTTP on a loopback address by default, off unless asked for. The
//! SP's (`rac sp run --admin`, `sp.rs`) serves the REST API v1, `/metrics`, `/healthz` and
//! `/readyz`; a gateway's and a tenant redirector's serve only `/metrics` and `/healthz`
//! ([`probe_router`]). Every answer is JSON (or the metrics' text); every error is
//! `{code, message}` with an [`AdminCode`].

mod accounts;
pub mod client;
mod probes;
mod sp;

pub use probes::{TenantFigures, gateway_metrics};
pub use sp::{AdminState, openapi, router as sp_router, run_sp, run_sp_with};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::AbortOnDrop;
use super::acceptor::Acceptor;
use super::tls::{ServerStream, TlsAcceptor};

use crate::metrics::CONTENT_TYPE;
use crate::sp::admin::{AdminCode, AdminError};

/// The default admin address: loopback, the port after the SP's.
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:6181";

/// The largest request body taken (an account change is a few hundred bytes).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// An admin error as an HTTP answer.
#[derive(Debug)]
pub struct ApiError(pub AdminError);

impl ApiError {
    pub fn new(code: AdminCode, message: impl Into<String>) -> Self {
        ApiError(AdminError::new(code, message))
    }
}

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> Self {
        ApiError(e)
    }
}

/// The HTTP status of each code.
pub fn status_of(code: AdminCode) -> StatusCode {
    match code {
        AdminCode::BadRequest => StatusCode::BAD_REQUEST,
        AdminCode::AuthFailed => StatusCode::UNAUTHORIZED,
        AdminCode::AccessDenied => StatusCode::FORBIDDEN,
        AdminCode::UnknownTenant
        | AdminCode::UnknownOperator
        | AdminCode::UnknownSession
        | AdminCode::UnknownAdminToken
        | AdminCode::NotFound => StatusCode::NOT_FOUND,
        AdminCode::AlreadyExists => StatusCode::CONFLICT,
        AdminCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        AdminCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (status_of(self.0.code), axum::Json(&self.0)).into_response();
        match self.0.code {
            AdminCode::AuthFailed => {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer"),
                );
            }
            // The body was left unread, so the connection cannot carry another request:
            // saying so keeps a client from sending its next one on a closing socket.
            AdminCode::TooLarge => {
                response.headers_mut().insert(
                    header::CONNECTION,
                    header::HeaderValue::from_static("close"),
                );
            }
            _ => {}
        }
        response
    }
}

/// A JSON request body, refused with `bad_request` (or `too_large`) in words when it does
/// not parse; an empty body reads as `{}`.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    AdminCode::TooLarge,
                    format!("the request body is over {MAX_BODY_BYTES} bytes"),
                )
            } else {
                ApiError::new(AdminCode::BadRequest, e.body_text())
            }
        })?;
        let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        serde_json::from_slice(bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::new(AdminCode::BadRequest, format!("malformed JSON body: {e}")))
    }
}

/// A query string, refused with `bad_request` in words when it does not parse.
pub struct QueryArgs<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryArgs<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|q| QueryArgs(q.0))
            .map_err(|e| ApiError::new(AdminCode::BadRequest, e.body_text()))
    }
}

/// `404` for a path the API does not have, as JSON.
async fn not_found() -> ApiError {
    ApiError::new(AdminCode::NotFound, "no such path")
}

/// `405` for a method a path does not take, as JSON.
async fn method_not_allowed() -> Response {
    let mut response =
        ApiError::new(AdminCode::BadRequest, "this path does not take that method").into_response();
    *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    response
}

/// What every admin router shares: JSON for unknown paths and methods, the body limit.
fn finish(router: Router) -> Router {
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
}

/// The metrics text as an answer.
fn metrics_response(text: String) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
}

/// `/healthz` and `/metrics` for an engine without an API (a gateway, a tenant redirector):
/// `metrics` renders the text at each scrape.
pub fn probe_router(metrics: impl Fn() -> String + Clone + Send + Sync + 'static) -> Router {
    let router = Router::new()
        .route("/healthz", axum::routing::get(healthz))
        .route(
            "/metrics",
            axum::routing::get(move || {
                let metrics = metrics.clone();
                async move { metrics_response(metrics()) }
            }),
        );
    finish(router)
}

/// `200` while the process serves.
async fn healthz() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({"status": "ok"}))
}

/// Binds an admin listener, warning when the address is not a loopback one and `tls` is
/// off (the API's tokens then cross a network in the clear).
pub async fn bind(addr: SocketAddr, tls: bool) -> Result<TcpListener> {
    if !addr.ip().is_loopback() && !tls {
        tracing::warn!(%addr, "the admin listener is not on a loopback address: its bearer tokens travel unencrypted; turn on mutual TLS (--admin-mutual-tls), or put it behind a TLS proxy or a private network");
    }
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the admin listener on {addr}"))
}

/// How long a client of a mutual-TLS admin listener has for its handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Admin connections whose handshake may run at once; more wait in the kernel's backlog.
const MAX_TLS_HANDSHAKES: usize = 64;

/// Serves `router` over TLS with `acceptor` (mutual TLS: `tls::mutual_acceptor`) on
/// `listener` until `shutdown` fires. The accept loop only accepts; each handshake runs in
/// its own task under [`TLS_HANDSHAKE_TIMEOUT`], and axum serves the finished streams.
pub async fn serve_tls(
    router: Router,
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shutdown: CancellationToken,
) -> Result<()> {
    let addr = listener
        .local_addr()
        .context("the admin listener's address")?;
    tracing::info!(%addr, "admin listener serving (mutual TLS)");
    let (tx, rx) = mpsc::channel(MAX_TLS_HANDSHAKES);
    let accepting = AbortOnDrop(tokio::spawn(accept_tls(
        Acceptor::new("admin listener", listener),
        acceptor,
        tx,
        shutdown.clone(),
    )));
    let served = axum::serve(TlsListener { rx, addr }, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .context("serving the admin listener");
    drop(accepting);
    served
}

/// Accepts connections and hands each to its own handshake task; the finished streams go
/// to axum through `tx`.
async fn accept_tls(
    mut listener: Acceptor,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<(ServerStream<TcpStream>, SocketAddr)>,
    shutdown: CancellationToken,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_TLS_HANDSHAKES));
    let tasks = TaskTracker::new();
    loop {
        let Ok(permit) = handshakes.clone().acquire_owned().await else {
            return;
        };
        let Some((tcp, peer)) = listener.next(&shutdown).await else {
            break;
        };
        let (acceptor, tx, shutdown) = (acceptor.clone(), tx.clone(), shutdown.clone());
        tasks.spawn(async move {
            let _permit = permit;
            let handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
            let stream = tokio::select! {
                done = handshake => done,
                () = shutdown.cancelled() => return,
            };
            match stream {
                Ok(Ok(stream)) => {
                    let _ = tx.send((stream, peer)).await;
                }
                // A client without a certificate of the SP's CA ends here.
                Ok(Err(e)) => tracing::info!(%peer, "admin TLS handshake refused: {e}"),
                Err(_) => tracing::info!(%peer, "admin TLS handshake timed out"),
            }
        });
    }
    tasks.close();
    tasks.wait().await;
}

/// The finished TLS streams of [`accept_tls`], as axum's listener.
struct TlsListener {
    rx: mpsc::Receiver<(ServerStream<TcpStream>, SocketAddr)>,
    addr: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = ServerStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(accepted) => accepted,
            // The accept loop stopped (shutdown): nothing more comes; axum's graceful
            // shutdown ends the serve.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

/// Serves `router` on `listener` until `shutdown` fires.
pub async fn serve(
    router: Router,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "admin listener serving");
    }
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .context("serving the admin listener")
}
