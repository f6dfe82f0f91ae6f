//! The SP's admin API v1, `/metrics`, `/healthz` and `/readyz`. Account changes go through
//! `sp::admin`, the same code as `rac sp tenant ...` and `rac sp operator ...`; sessions
//! through the SP's live session table. Every path but the health probes needs a bearer
//! token (`rac sp admin-token create`); a read-only one may only `GET`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{ApiError, QueryArgs, accounts, finish, healthz, metrics_response};
use crate::sp::SpService;
use crate::sp::admin::{Admin, AdminCode, AdminError};
use crate::sp::registry::{Actor, AdminScope, AuditPage, AuditQuery, Operator};
use crate::sp::sessions::SessionView;
use crate::util::lock;

/// What the SP's admin routes share.
#[derive(Clone)]
pub struct AdminState {
    pub(super) sp: Arc<SpService>,
    /// Why the registry cannot be written now (`None`: it can), as the last probe found.
    registry_problem: Arc<Mutex<Option<String>>>,
}

impl AdminState {
    pub fn new(sp: Arc<SpService>) -> Self {
        AdminState {
            sp,
            registry_problem: Arc::new(Mutex::new(None)),
        }
    }
}

/// The SP's admin listener: serves the API on `listener`, and probes the registry for
/// `/readyz`, until `shutdown` fires. Start it beside `cloud_redirector::run` with the same
/// service, and stop it after that returns, so `/readyz` answers `503` while the SP drains.
pub async fn run_sp(
    sp: Arc<SpService>,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    run_sp_with(sp, listener, None, shutdown).await
}

/// [`run_sp`], over TLS with `tls` when given (`[admin] mutual_tls`: an acceptor from
/// `tls::mutual_acceptor`, which takes only clients with a certificate of the SP's CA).
pub async fn run_sp_with(
    sp: Arc<SpService>,
    listener: tokio::net::TcpListener,
    tls: Option<crate::net::tls::TlsAcceptor>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let state = AdminState::new(sp);
    let _probe =
        crate::net::AbortOnDrop(tokio::spawn(run_readiness(state.clone(), shutdown.clone())));
    match tls {
        Some(acceptor) => super::serve_tls(router(state), listener, acceptor, shutdown).await,
        None => super::serve(router(state), listener, shutdown).await,
    }
}

/// How often `/readyz`'s registry probe runs: a change shows within a second.
const PROBE_EVERY: Duration = Duration::from_millis(250);

/// Probes whether the registry can be written, every [`PROBE_EVERY`], until `shutdown`.
async fn run_readiness(state: AdminState, shutdown: CancellationToken) {
    loop {
        let sp = state.sp.clone();
        let found = tokio::task::spawn_blocking(move || sp.registry.probe_writable())
            .await
            .unwrap_or_else(|e| Err(format!("the probe failed: {e}")));
        let problem = found.err();
        {
            let mut last = lock(&state.registry_problem);
            if *last != problem {
                match &problem {
                    Some(p) => tracing::warn!("not ready: the registry cannot be written: {p}"),
                    None => tracing::info!("the registry can be written again"),
                }
            }
            *last = problem;
        }
        tokio::select! {
            _ = tokio::time::sleep(PROBE_EVERY) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// The router of the SP's admin listener.
pub fn router(state: AdminState) -> Router {
    let v1 = Router::new()
        .route("/v1/server", get(server))
        .route("/v1/node/drain", post(drain))
        .route(
            "/v1/tenants",
            get(accounts::tenants).post(accounts::add_tenant),
        )
        .route(
            "/v1/tenants/{name}",
            get(accounts::tenant).delete(accounts::remove_tenant),
        )
        .route("/v1/tenants/{name}/disable", post(accounts::disable_tenant))
        .route("/v1/tenants/{name}/enable", post(accounts::enable_tenant))
        .route(
            "/v1/tenants/{name}/rotate-secret",
            post(accounts::rotate_secret),
        )
        .route("/v1/tenants/{name}/reset-key", post(accounts::reset_key))
        .route(
            "/v1/operators",
            get(accounts::operators).post(accounts::add_operator),
        )
        .route(
            "/v1/operators/{name}",
            axum::routing::delete(accounts::remove_operator),
        )
        .route("/v1/operators/{name}/passwd", post(accounts::passwd))
        .route(
            "/v1/operators/{name}/tenants",
            axum::routing::put(accounts::set_tenants),
        )
        .route("/v1/operators/{name}/revoke", post(accounts::revoke))
        .route("/v1/sessions", get(sessions))
        .route("/v1/sessions/{id}", get(session).delete(end_session))
        .route("/v1/audit", get(audit))
        .route("/v1/gateways", get(gateways))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authorize,
        ));
    let open = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/openapi.json", get(openapi_json));
    finish(v1.merge(open).with_state(state))
}

/// Checks the bearer token: any admin token may read, only a read-write one may change.
/// The token's name goes with the request as its [`Actor`].
async fn authorize(
    State(state): State<AdminState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            ApiError::new(
                AdminCode::AuthFailed,
                "no bearer token: send `Authorization: Bearer TOKEN` (rac sp admin-token create)",
            )
        })?
        .to_string();
    let sp = state.sp.clone();
    let token = blocking(move || {
        sp.registry
            .check_admin_token(&presented)
            .map_err(crate::sp::admin::AdminError::from)
    })
    .await?
    .ok_or_else(|| ApiError::new(AdminCode::AuthFailed, "unknown or revoked admin token"))?;
    let reads = request.method() == Method::GET || request.method() == Method::HEAD;
    if !reads && token.scope != AdminScope::ReadWrite {
        return Err(ApiError::new(
            AdminCode::AccessDenied,
            format!("admin token {} is read-only", token.name),
        ));
    }
    request
        .extensions_mut()
        .insert(Actor::AdminToken(token.name));
    Ok(next.run(request).await)
}

/// Runs registry work (a few ms; an operator's password hash, far more) off the runtime.
pub(super) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> crate::sp::admin::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::new(AdminCode::Internal, format!("the request failed: {e}")))?
        .map_err(ApiError)
}

/// Runs `work` on the registry as `by`, off the runtime.
pub(super) async fn change<T: Send + 'static>(
    state: AdminState,
    by: Actor,
    work: impl FnOnce(&Admin<'_>) -> crate::sp::admin::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    let sp = state.sp.clone();
    blocking(move || work(&Admin::new(&sp.registry, by))).await
}

/// `200` only when the SP port accepts connections, the SP is not draining and the registry
/// can be written; else `503` with the reasons.
async fn readyz(State(state): State<AdminState>) -> Response {
    let mut reasons = Vec::new();
    if state.sp.is_draining() {
        reasons.push("draining: the SP is shutting down".to_string());
    } else if !state.sp.is_serving() {
        reasons.push("the SP port is not accepting connections".to_string());
    }
    if let Some(problem) = lock(&state.registry_problem).clone() {
        reasons.push(format!("the registry cannot be written: {problem}"));
    }
    if let Some(problem) = state.sp.bus_problem() {
        reasons.push(format!("the cluster bus cannot be used: {problem}"));
    }
    if reasons.is_empty() {
        Json(json!({"status": "ready"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready", "reasons": reasons})),
        )
            .into_response()
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    metrics_response(state.sp.metrics.encode())
}

/// The server itself.
#[utoipa::path(
    get,
    path = "/v1/server",
    tag = "server",
    summary = "Version, node, uptime, tenants online, sessions active",
    responses(
        (status = 200, description = "the server", body = serde_json::Value),
        (status = 401, description = "no, an unknown or a revoked token", body = AdminError),
    )
)]
async fn server(State(state): State<AdminState>) -> Json<serde_json::Value> {
    let sp = &state.sp;
    let now = crate::util::now_unix_secs();
    Json(json!({
        "version": crate::VERSION,
        "node": node_name(sp),
        "started_at": sp.started_at,
        "uptime_secs": now.saturating_sub(sp.started_at),
        "serving": sp.is_serving(),
        "draining": sp.is_draining(),
        "tenants_online": sp.metrics.tenants_connected.get(),
        "sessions_active": sp.sessions.len(),
    }))
}

/// Drains this cluster node and stops it, as SIGTERM does: the SP port closes, its tenants
/// are sent to the other nodes at `drain_rate` a second, its sessions may go on for up to
/// `drain_secs`, then the process exits (this listener last). `/v1/server` shows the
/// progress until then. A single SP (no `[cluster]`) refuses: its tenants have nowhere to go.
#[utoipa::path(
    post,
    path = "/v1/node/drain",
    tag = "server",
    summary = "Drain this cluster node and stop it (as SIGTERM)",
    responses(
        (status = 202, description = "`{node, draining, tenants_online, sessions_active, drain_rate, drain_secs}`", body = serde_json::Value),
        (status = 400, description = "not a cluster node", body = AdminError),
        (status = 401, description = "no, an unknown or a revoked token", body = AdminError),
        (status = 403, description = "a read-only token", body = AdminError),
    )
)]
async fn drain(
    State(state): State<AdminState>,
    Extension(by): Extension<Actor>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let sp = state.sp.clone();
    let Some(cluster) = &sp.config.cluster else {
        return Err(ApiError::new(
            AdminCode::BadRequest,
            "this SP is not a cluster node: its tenants have no other node to go to. Stop it \
             with SIGTERM (systemctl stop rac-sp) if that is what you want",
        ));
    };
    if !sp.stop_requested().is_cancelled() {
        tracing::warn!(by = %by, "drain asked for over the admin API");
        let audited = {
            let (sp, by) = (sp.clone(), by.clone());
            tokio::task::spawn_blocking(move || {
                sp.registry
                    .audit_change(&by, "node", "drain", ("-", "-"), "drain requested")
            })
            .await
        };
        match audited {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("auditing the drain request: {e:#}"),
            Err(e) => tracing::error!("auditing the drain request: {e}"),
        }
        sp.request_stop();
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "node": cluster.node,
            "draining": true,
            "tenants_online": sp.metrics.tenants_connected.get(),
            "sessions_active": sp.sessions.len(),
            "drain_rate": cluster.drain_rate,
            "drain_secs": cluster.drain_secs,
        })),
    ))
}

/// This node's name: its `[cluster]` name, else the host's.
fn node_name(sp: &crate::sp::SpService) -> String {
    match &sp.config.cluster {
        Some(cluster) => cluster.node.clone(),
        None => crate::util::host_name().unwrap_or_else(|| "unknown".to_string()),
    }
}

#[utoipa::path(
    get,
    path = "/v1/sessions",
    tag = "sessions",
    summary = "Sessions being relayed now, with bytes so far and route",
    responses(
        (status = 200, description = "`{sessions: [SessionView]}`", body = serde_json::Value),
        (status = 401, description = "no, an unknown or a revoked token", body = AdminError),
    )
)]
async fn sessions(State(state): State<AdminState>) -> Json<serde_json::Value> {
    Json(json!({"sessions": state.sp.sessions.list()}))
}

#[utoipa::path(
    get,
    path = "/v1/sessions/{id}",
    tag = "sessions",
    summary = "One live session",
    params(("id" = String, Path, description = "the session id")),
    responses(
        (status = 200, description = "the session", body = SessionView),
        (status = 401, description = "no, an unknown or a revoked token", body = AdminError),
        (status = 404, description = "no such live session", body = AdminError),
    )
)]
async fn session(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<crate::sp::sessions::SessionView>, ApiError> {
    state
        .sp
        .sessions
        .get(&id)
        .map(Json)
        .ok_or_else(|| no_session(&id))
}

fn no_session(id: &str) -> ApiError {
    ApiError::new(
        AdminCode::UnknownSession,
        format!("no live session {id:?} (it may have ended)"),
    )
}

/// Ends a live session. Its splice is cancelled at once; its audit row closes as
/// `ended: by admin (admin token NAME)`.
#[utoipa::path(
    delete,
    path = "/v1/sessions/{id}",
    tag = "sessions",
    summary = "End a live session now; its audit row names the token",
    params(("id" = String, Path, description = "the session id")),
    responses(
        (status = 202, description = "`{session_id, ending}`", body = serde_json::Value),
        (status = 401, description = "no, an unknown or a revoked token", body = AdminError),
        (status = 403, description = "a read-only token", body = AdminError),
        (status = 404, description = "no such live session", body = AdminError),
    )
)]
async fn end_session(
    State(state): State<AdminState>,
    Extension(by): Extension<Actor>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    tracing::info!(session_id = ?id, by = %by, "ending a session on an admin's request");
    if !state.sp.sessions.end(&id, by) {
        return Err(no_session(&id));
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"session_id": id, "ending": true})),
    ))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct AuditArgs {
    /// Rows of this tenant.
    tenant: Option<String>,
    /// Rows of this operator.
    operator: Option<String>,
    /// Rows started at or after this time (Unix seconds).
    since: Option<u64>,
    /// Rows started before this time (Unix seconds).
    until: Option<u64>,
    /// Rows whose outcome starts with this text (`closed`, `failed`, `ended`, `open`).
    outcome: Option<String>,
    /// Rows older than this id: the previous page's `next`.
    before: Option<i64>,
    /// Rows in the page (default 100, at most 1000).
    limit: Option<usize>,
}

#[utoipa::path(
    get,
    path = "/v1/audit",
    tag = "audit",
    summary = "The audit log, newest first, one page",
    params(AuditArgs),
    responses(
        (status = 200, description = "a page; `next` is the `before` of the next", body = AuditPage),
        (status = 401, description = "no, an unknown or a revoked token", body = AdminError),
        (status = 400, description = "malformed JSON, an unknown field, a bad name", body = AdminError),
    )
)]
async fn audit(
    State(state): State<AdminState>,
    Extension(by): Extension<Actor>,
    QueryArgs(args): QueryArgs<AuditArgs>,
) -> Result<Json<crate::sp::registry::AuditPage>, ApiError> {
    let query = AuditQuery {
        tenant: args.tenant,
        operator: args.operator,
        since: args.since,
        until: args.until,
        outcome: args.outcome,
        before: args.before,
        limit: args.limit.unwrap_or(100),
    };
    change(state, by, move |a| a.audit(&query)).await.map(Json)
}

#[utoipa::path(
    get,
    path = "/v1/gateways",
    tag = "server",
    summary = "The gateway pool handed to tenants and the trusted gateways as this SP saw them",
    responses(
        (status = 200, description = "`{pool, trusted: [{address, connections, last_seen}]}`", body = serde_json::Value),
        (status = 401, description = "no, an unknown or a revoked token", body = AdminError),
    )
)]
async fn gateways(State(state): State<AdminState>) -> Json<serde_json::Value> {
    let trusted: Vec<serde_json::Value> = state
        .sp
        .gateways_seen()
        .into_iter()
        .map(|(address, seen)| {
            json!({
                "address": address,
                "connections": seen.connections,
                "last_seen": (seen.last_seen > 0).then_some(seen.last_seen),
            })
        })
        .collect();
    Json(json!({"pool": state.sp.gateways(), "trusted": trusted}))
}

/// The API's OpenAPI document, derived from the handlers above and their types.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "rac SP admin API",
        description = "The admin listener of `rac sp run --admin`: accounts, live sessions, the audit log. Every path needs `Authorization: Bearer TOKEN` (`rac sp admin-token create`); a read-only token may only GET. Errors are `{code, message}`. `/healthz`, `/readyz` and this document need no token; `/metrics` is Prometheus' text format."
    ),
    paths(
        server,
        drain,
        accounts::tenants,
        accounts::tenant,
        accounts::add_tenant,
        accounts::disable_tenant,
        accounts::enable_tenant,
        accounts::remove_tenant,
        accounts::rotate_secret,
        accounts::reset_key,
        accounts::operators,
        accounts::add_operator,
        accounts::passwd,
        accounts::set_tenants,
        accounts::revoke,
        accounts::remove_operator,
        sessions,
        session,
        end_session,
        audit,
        gateways
    ),
    components(schemas(
        accounts::TenantRow,
        accounts::NewTenant,
        accounts::NewOperator,
        accounts::Passwd,
        accounts::Scope,
        Operator,
        SessionView,
        AuditPage,
        crate::sp::registry::AuditEntry,
        AdminError,
        AdminCode
    )),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
struct ApiDoc;

/// Declares the bearer token scheme the document's `security` names.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document of the SP's admin API, as JSON.
pub fn openapi() -> String {
    use utoipa::OpenApi;
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

async fn openapi_json() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi()).into_response()
}
