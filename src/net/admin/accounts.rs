//! The account routes of the SP's admin API: tenants and operators, each a thin shell over
//! `sp::admin`, the code behind `rac sp tenant ...` and `rac sp operator ...`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::sp::{AdminState, blocking, change};
use super::{ApiError, JsonBody, QueryArgs};
use crate::sp::SpService;
use crate::sp::admin::{Admin, AdminError, TenantQuery};
use crate::sp::registry::{Actor, TenantAccount};
use crate::wire::protocol::TenantStatus;

/// A tenant as the API shows it: its account and, while it is connected, its live state.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct TenantRow {
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
pub(super) struct TenantsArgs {
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
pub(super) async fn tenants(
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
pub(super) async fn tenant(
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
pub(super) struct NewTenant {
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
pub(super) async fn add_tenant(
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
pub(super) async fn disable_tenant(
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
pub(super) async fn enable_tenant(
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
pub(super) async fn remove_tenant(
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
pub(super) async fn rotate_secret(
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
pub(super) async fn reset_key(
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
pub(super) async fn operators(
    State(state): State<AdminState>,
    Extension(by): Extension<Actor>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let operators = change(state, by, |a| a.operators()).await?;
    Ok(Json(json!({"operators": operators})))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewOperator {
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
pub(super) async fn add_operator(
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
pub(super) struct Passwd {
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
pub(super) async fn passwd(
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
pub(super) struct Scope {
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
pub(super) async fn set_tenants(
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
pub(super) async fn revoke(
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
pub(super) async fn remove_operator(
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
