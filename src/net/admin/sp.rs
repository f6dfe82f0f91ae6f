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
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{ApiError, JsonBody, QueryArgs, finish, healthz, metrics_response};
use crate::sp::SpService;
use crate::sp::admin::{Admin, AdminCode, AdminError, TenantQuery};
use crate::sp::registry::{Actor, AdminScope, AuditPage, AuditQuery, Operator, TenantAccount};
use crate::sp::sessions::SessionView;
use crate::util::lock;
use crate::wire::protocol::TenantStatus;

/// What the SP's admin routes share.
#[derive(Clone)]
pub struct AdminState {
    sp: Arc<SpService>,
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
    let state = AdminState::new(sp);
    let _probe =
        crate::net::AbortOnDrop(tokio::spawn(run_readiness(state.clone(), shutdown.clone())));
    super::serve(router(state), listener, shutdown).await
}

/// How often `/readyz`'s registry probe runs: a change shows within a second.
const PROBE_EVERY: Duration = Duration::from_millis(250);

/// Probes whether the registry can be written, every [`PROBE_EVERY`], until `shutdown`.
async fn run_readiness(state: AdminState, shutdown: CancellationToken) {
    let Some(path) = state.sp.registry_path().map(|p| p.to_path_buf()) else {
        return;
    };
    loop {
        let probe_path = path.clone();
        let found = tokio::task::spawn_blocking(move || {
            crate::sp::registry::Registry::probe_writable(&probe_path)
        })
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
        .route("/v1/tenants", get(tenants).post(add_tenant))
        .route("/v1/tenants/{name}", get(tenant).delete(remove_tenant))
        .route("/v1/tenants/{name}/disable", post(disable_tenant))
        .route("/v1/tenants/{name}/enable", post(enable_tenant))
        .route("/v1/tenants/{name}/rotate-secret", post(rotate_secret))
        .route("/v1/tenants/{name}/reset-key", post(reset_key))
        .route("/v1/operators", get(operators).post(add_operator))
        .route(
            "/v1/operators/{name}",
            axum::routing::delete(remove_operator),
        )
        .route("/v1/operators/{name}/passwd", post(passwd))
        .route(
            "/v1/operators/{name}/tenants",
            axum::routing::put(set_tenants),
        )
        .route("/v1/operators/{name}/revoke", post(revoke))
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
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> crate::sp::admin::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::new(AdminCode::Internal, format!("the request failed: {e}")))?
        .map_err(ApiError)
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
        "node": node_name(),
        "started_at": sp.started_at,
        "uptime_secs": now.saturating_sub(sp.started_at),
        "serving": sp.is_serving(),
        "draining": sp.is_draining(),
        "tenants_online": sp.metrics.tenants_connected.get(),
        "sessions_active": sp.sessions.len(),
    }))
}

/// The host's name, as this node calls itself.
fn node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".to_string())
}

/// A tenant as the API shows it: its account and, while it is connected, its live state.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct TenantRow {
    name: String,
    enabled: bool,
    description: String,
    created_at: u64,
    last_seen: Option<u64>,
    tenant_key: Option<String>,
    /// `online`, `offline` or `disabled`.
    #[schema(value_type = String)]
    status: TenantStatus,
    connected_since: Option<u64>,
    remote_addr: Option<String>,
    agent_version: Option<String>,
    services: Vec<String>,
    provider_access: bool,
    heartbeat_rtt_ms: Option<f64>,
    open_sessions: u32,
}

fn tenant_row(sp: &SpService, account: TenantAccount) -> TenantRow {
    let live = sp.presence.info(&account.name);
    let status = match &live {
        _ if !account.enabled => TenantStatus::Disabled,
        Some(info) => info.status,
        None => TenantStatus::Offline,
    };
    let live = live.filter(|info| info.status == TenantStatus::Online);
    TenantRow {
        status,
        connected_since: live.as_ref().and_then(|i| i.connected_since),
        remote_addr: live.as_ref().and_then(|i| i.remote_addr.clone()),
        agent_version: live.as_ref().and_then(|i| i.agent_version.clone()),
        services: live
            .as_ref()
            .map(|i| i.services.clone())
            .unwrap_or_default(),
        provider_access: live.as_ref().is_some_and(|i| i.provider_access),
        heartbeat_rtt_ms: live.as_ref().and_then(|i| i.heartbeat_rtt_ms),
        open_sessions: live.as_ref().map_or(0, |i| i.open_sessions),
        last_seen: live
            .as_ref()
            .and_then(|i| i.last_seen)
            .or(account.last_seen),
        name: account.name,
        enabled: account.enabled,
        description: account.description,
        created_at: account.created_at,
        tenant_key: account.tenant_key,
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct TenantsArgs {
    /// Only enabled (`true`) or disabled (`false`) tenants.
    enabled: Option<bool>,
    /// Names containing this text.
    name: Option<String>,
    /// `online`, `offline` or `disabled`.
    #[param(value_type = Option<String>)]
    status: Option<TenantStatus>,
    /// Names after this one: the previous page's `next`.
    after: Option<String>,
    /// Rows in the page (default 100, at most 1000).
    limit: Option<usize>,
}

#[utoipa::path(
    get,
    path = "/v1/tenants",
    tag = "tenants",
    summary = "Tenants by name, one page, with their live state",
    params(TenantsArgs),
    responses(
        (status = 200, description = "`{tenants: [TenantRow], next}`: `next` is the `after` of the next page", body = serde_json::Value),
        (status = 401, description = "no, an unknown or a revoked token", body = AdminError),
        (status = 400, description = "malformed JSON, an unknown field, a bad name", body = AdminError),
    )
)]
async fn tenants(
    State(state): State<AdminState>,
    Extension(by): Extension<Actor>,
    QueryArgs(args): QueryArgs<TenantsArgs>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let sp = state.sp.clone();
    blocking(move || {
        let admin = Admin::new(&sp.registry, by);
        let query = TenantQuery {
            enabled: args.enabled,
            name_contains: args.name,
            after: args.after,
            limit: args.limit.unwrap_or(100),
        };
        let page = match args.status {
            None => admin.tenants(&query, |_| true)?,
            Some(status) => {
                admin.tenants(&query, |t| tenant_row(&sp, t.clone()).status == status)?
            }
        };
        let rows: Vec<TenantRow> = page
            .tenants
            .into_iter()
            .map(|t| tenant_row(&sp, t))
            .collect();
        Ok(Json(json!({"tenants": rows, "next": page.next})))
    })
    .await
}

#[utoipa::path(
    get,
    path = "/v1/tenants/{name}",
    tag = "tenants",
    summary = "One tenant",
    params(("name" = String, Path, description = "the tenant's name")),
    responses(
        (status = 200, description = "the tenant", body = TenantRow),
        (status = 401, description = "no, an unknown or a revoked token", body = AdminError),
        (status = 404, description = "no such tenant", body = AdminError),
    )
)]
async fn tenant(
    State(state): State<AdminState>,
    Extension(by): Extension<Actor>,
    Path(name): Path<String>,
) -> Result<Json<TenantRow>, ApiError> {
    let sp = state.sp.clone();
    blocking(move || {
        let account = Admin::new(&sp.registry, by).tenant(&name)?;
        Ok(Json(tenant_row(&sp, account)))
    })
    .await
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewTenant {
    name: String,
    #[serde(default)]
    description: String,
    tenant_key: Option<String>,
}

#[utoipa::path(
    post,
    path = "/v1/tenants",
    tag = "tenants",
    summary = "Add a tenant; its secret is in this answer only",
    request_body = NewTenant,
    responses(
        (status = 201, description = "`{tenant, secret}`", body = serde_json::Value),
        (status = 401, description = "no, an unknown or a revoked token", body = AdminError),
        (status = 403, description = "a read-only token", body = AdminError),
        (status = 400, description = "malformed JSON, an unknown field, a bad name", body = AdminError),
        (status = 409, description = "a tenant of that name exists", body = AdminError),
    )
)]
async fn add_tenant(
    State(state): State<AdminState>,
    Extension(by): Extension<Actor>,
    JsonBody(body): JsonBody<NewTenant>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let sp = state.sp.clone();
    let secret = blocking(move || {
        Admin::new(&sp.registry, by)
            .add_tenant(&body.name, &body.description, body.tenant_key.as_deref())
            .map(|secret| (body.name, secret))
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"tenant": secret.0, "secret": secret.1})),
    ))
}

/// One change to a named account, answered with `answer`.
async fn change<T: Send + 'static>(
    state: AdminState,
    by: Actor,
    work: impl FnOnce(&Admin<'_>) -> crate::sp::admin::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    let sp = state.sp.clone();
    blocking(move || work(&Admin::new(&sp.registry, by))).await
}

#[utoipa::path(
    post,
    path = "/v1/tenants/{name}/disable",
    tag = "tenants",
    summary = "Disable a tenant: its connection and sessions end",
    params(("name" = String, Path, description = "the tenant's name")),
    responses(
        (status = 200, description = "disabled", body = serde_json::Value),
        (status = 401, description = "no, an unknown or a revoked token", body = AdminError),
        (status = 403, description = "a read-only token", body = AdminError),
        (status = 404, description = "no such tenant", body = AdminError),
    )
)]
async fn disable_tenant(
    State(state): State<AdminState>,
    Extension(by): Extension<Actor>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let answer = json!({"tenant": name, "enabled": false});
    change(state, by, move |a| a.set_tenant_enabled(&name, false)).await?;
    Ok(Json(answer))
}

#[utoipa::path(
    post,
    path = "/v1/tenants/{name}/enable",
    tag = "tenants",
    summary = "Enable a tenant again",
    params(("name" = String, Path, description = "the tenant's name")),
    responses(
        (status = 200, description = "enabled", body = serde_json::Value),
        (status = 401, description = "no, an unknown or a revoked token", body = AdminError),
        (status = 403, description = "a read-only token", body = AdminError),
        (status = 404, description = "no such tenant", body = AdminError),
    )
)]
async fn enable_tenant(
    State(state): State<AdminState>,
    Extension(by): Extension<Actor>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let answer = json!({"tenant": name, "enabled": true});
    change(state, by, move |a| a.set_tenant_enabled(&name, true)).await?;
    Ok(Json(answer))
}

#[utoipa::path(
    delete,
    path = "/v1/tenants/{name}",
    tag = "tenants",
    summary = "Remove a tenant account",
    params(("name" = String, Path, description = "the tenant's name")),
    responses(
        (status = 200, description = "removed", body = serde_json::Value),
        (status = 401, description = "no, an unknown or a revoked token", body = AdminError),
        (status = 403, description = "a read-only token", body = AdminError),
        (status = 404, description = "no such tenant", body = AdminError),
    )
)]
async fn remove_tenant(
    State(state): State<AdminState>,
    Extension(by): Extension<Actor>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let answer = json!({"tenant": name, "removed": true});
    change(state, by, move |a| a.remove_tenant(&name)).await?;
    Ok(Json(answer))
}

#[utoipa::path(
    post,
    path = "/v1/tenants/{name}/rotate-secret",
    tag = "tenants",
    summary = "Issue a new secret (in this answer only); the old one stops working",
    params(("name" = String, Path, description = "the tenant's name")),
    responses(
        (status = 200, description = "`{tenant, secret}`", body = serde_json::Value),
        (status = 401, description = "no, an unknown or a revoked token", body = AdminError),
        (status = 403, description = "a read-only token", body = AdminError),
        (status = 404, description = "no such tenant", body = AdminError),
    )
)]
async fn rotate_secret(
    State(state): State<AdminState>,
    Extension(by): Extension<Actor>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let tenant = name.clone();
    let secret = change(state, by, move |a| a.rotate_secret(&name)).await?;
    Ok(Json(json!({"tenant": tenant, "secret": secret})))
}

#[utoipa::path(
    post,
    path = "/v1/tenants/{name}/reset-key",
    tag = "tenants",
    summary = "Forget the recorded key of a tenant: the next one it presents is recorded",
    params(("name" = String, Path, description = "the tenant's name")),
    responses(
        (status = 200, description = "forgotten", body = serde_json::Value),
        (status = 401, description = "no, an unknown or a revoked token", body = AdminError),
        (status = 403, description = "a read-only token", body = AdminError),
        (status = 404, description = "no such tenant", body = AdminError),
    )
)]
async fn reset_key(
    State(state): State<AdminState>,
    Extension(by): Extension<Actor>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let answer = json!({"tenant": name, "tenant_key": null});
    change(state, by, move |a| a.reset_tenant_key(&name)).await?;
    Ok(Json(answer))
}

#[utoipa::path(
    get,
    path = "/v1/operators",
    tag = "operators",
    summary = "Operators and their tenant scopes",
    responses(
        (status = 200, description = "`{operators: [Operator]}`", body = serde_json::Value),
        (status = 401, description = "no, an unknown or a revoked token", body = AdminError),
    )
)]
async fn operators(
    State(state): State<AdminState>,
    Extension(by): Extension<Actor>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let operators = change(state, by, |a| a.operators()).await?;
    Ok(Json(json!({"operators": operators})))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewOperator {
    name: String,
    /// `*`, a comma-separated list of tenant names, or empty.
    #[serde(default = "every_tenant")]
    tenants: String,
}

fn every_tenant() -> String {
    "*".to_string()
}

#[utoipa::path(
    post,
    path = "/v1/operators",
    tag = "operators",
    summary = "Add an operator; the generated password is in this answer only",
    request_body = NewOperator,
    responses(
        (status = 201, description = "`{operator, password}`", body = serde_json::Value),
        (status = 401, description = "no, an unknown or a revoked token", body = AdminError),
        (status = 403, description = "a read-only token", body = AdminError),
        (status = 400, description = "malformed JSON, an unknown field, a bad name", body = AdminError),
        (status = 409, description = "an operator of that name exists", body = AdminError),
    )
)]
async fn add_operator(
    State(state): State<AdminState>,
    Extension(by): Extension<Actor>,
    JsonBody(body): JsonBody<NewOperator>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let name = body.name.clone();
    let password = change(state, by, move |a| {
        a.add_operator(&body.name, &body.tenants)
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"operator": name, "password": password})),
    ))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Passwd {
    /// The new password (at least 12 characters); left out, one is generated and returned.
    password: Option<String>,
}

#[utoipa::path(
    post,
    path = "/v1/operators/{name}/passwd",
    tag = "operators",
    summary = "Set or generate a password; revokes their tokens",
    params(("name" = String, Path, description = "the operator's name")),
    request_body = Passwd,
    responses(
        (status = 200, description = "`{operator, tokens_revoked, password?}` (password only when generated)", body = serde_json::Value),
        (status = 401, description = "no, an unknown or a revoked token", body = AdminError),
        (status = 403, description = "a read-only token", body = AdminError),
        (status = 400, description = "malformed JSON, an unknown field, a bad name", body = AdminError),
        (status = 404, description = "no such operator", body = AdminError),
    )
)]
async fn passwd(
    State(state): State<AdminState>,
    Extension(by): Extension<Actor>,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<Passwd>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let operator = name.clone();
    let (generated, revoked) = change(state, by, move |a| {
        a.set_operator_password(&name, body.password.as_deref())
    })
    .await?;
    let mut answer = json!({"operator": operator, "tokens_revoked": revoked});
    if let Some(password) = generated {
        answer["password"] = json!(password);
    }
    Ok(Json(answer))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Scope {
    /// `*`, a comma-separated list of tenant names, or empty for none.
    tenants: String,
}

#[utoipa::path(
    put,
    path = "/v1/operators/{name}/tenants",
    tag = "operators",
    summary = "Set which tenants an operator may open; revokes their tokens",
    params(("name" = String, Path, description = "the operator's name")),
    request_body = Scope,
    responses(
        (status = 200, description = "`{operator, tenants, tokens_revoked}`", body = serde_json::Value),
        (status = 401, description = "no, an unknown or a revoked token", body = AdminError),
        (status = 403, description = "a read-only token", body = AdminError),
        (status = 400, description = "malformed JSON, an unknown field, a bad name", body = AdminError),
        (status = 404, description = "no such operator", body = AdminError),
    )
)]
async fn set_tenants(
    State(state): State<AdminState>,
    Extension(by): Extension<Actor>,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<Scope>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let operator = name.clone();
    let tenants = body.tenants.trim().to_string();
    let revoked = change(state, by, move |a| {
        a.set_operator_tenants(&name, &body.tenants)
    })
    .await?;
    Ok(Json(
        json!({"operator": operator, "tenants": tenants, "tokens_revoked": revoked}),
    ))
}

#[utoipa::path(
    post,
    path = "/v1/operators/{name}/revoke",
    tag = "operators",
    summary = "Revoke every token of an operator",
    params(("name" = String, Path, description = "the operator's name")),
    responses(
        (status = 200, description = "`{operator, tokens_revoked}`", body = serde_json::Value),
        (status = 401, description = "no, an unknown or a revoked token", body = AdminError),
        (status = 403, description = "a read-only token", body = AdminError),
        (status = 404, description = "no such operator", body = AdminError),
    )
)]
async fn revoke(
    State(state): State<AdminState>,
    Extension(by): Extension<Actor>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let operator = name.clone();
    let revoked = change(state, by, move |a| a.revoke_operator(&name)).await?;
    Ok(Json(
        json!({"operator": operator, "tokens_revoked": revoked}),
    ))
}

#[utoipa::path(
    delete,
    path = "/v1/operators/{name}",
    tag = "operators",
    summary = "Remove an operator and their tokens",
    params(("name" = String, Path, description = "the operator's name")),
    responses(
        (status = 200, description = "`{operator, removed, tokens_revoked}`", body = serde_json::Value),
        (status = 401, description = "no, an unknown or a revoked token", body = AdminError),
        (status = 403, description = "a read-only token", body = AdminError),
        (status = 404, description = "no such operator", body = AdminError),
    )
)]
async fn remove_operator(
    State(state): State<AdminState>,
    Extension(by): Extension<Actor>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let operator = name.clone();
    let revoked = change(state, by, move |a| a.remove_operator(&name)).await?;
    Ok(Json(
        json!({"operator": operator, "removed": true, "tokens_revoked": revoked}),
    ))
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
        tenants,
        tenant,
        add_tenant,
        disable_tenant,
        enable_tenant,
        remove_tenant,
        rotate_secret,
        reset_key,
        operators,
        add_operator,
        passwd,
        set_tenants,
        revoke,
        remove_operator,
        sessions,
        session,
        end_session,
        audit,
        gateways
    ),
    components(schemas(
        TenantRow,
        NewTenant,
        NewOperator,
        Passwd,
        Scope,
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
