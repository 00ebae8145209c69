//! `/v1/tokens` and `/v1/roles`: issuing, rotating and revoking the team's
//! API tokens, and the roles they hold (administrators only). Every change
//! is on record in the evidence log, without a token value.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::response::{IntoResponse as _, Response};
use hyper::body::Bytes;
use keyward_api::{
    IssueTokenRequest, IssuedToken, IssuedTokens, RoleInfo, RoleList, RoleRequest, TokenInfo,
    TokenList,
};
use keyward_auth::{AuthError, AuthState as _, Issued, Role, RoleSpec, TokenRecord};
use keyward_evidence::Kind;
use serde_json::json;

use super::json_body;
use crate::state::AppState;
use crate::team_auth::refusal;

use keyward_auth::rfc3339;

fn token_info(record: &TokenRecord) -> TokenInfo {
    TokenInfo {
        user: record.user.clone(),
        role: record.role.clone(),
        created: rfc3339(record.created),
        expires: record.expires.map(rfc3339),
        last_used: record.last_used.map(rfc3339),
        description: record.description.clone(),
    }
}

fn issued(issued: &Issued) -> IssuedToken {
    IssuedToken {
        token: issued.value.expose().to_owned(),
        info: token_info(&issued.record),
    }
}

fn role_info(role: &Role, tokens: &[TokenRecord]) -> RoleInfo {
    RoleInfo {
        name: role.name.clone(),
        scopes: role.scopes.iter().map(ToString::to_string).collect(),
        rate_limit: role.rate_limit.map(|l| l.to_string()),
        description: role.description.clone(),
        builtin: role.builtin,
        users: tokens
            .iter()
            .filter(|t| t.role == role.name)
            .map(|t| t.user.clone())
            .collect(),
    }
}

/// Records a change of the team's identities (never a token value).
async fn on_record(state: &AppState, data: serde_json::Value) {
    state.audit(Kind::Admin, None, data).await;
}

type Answer<T> = Result<Json<T>, Response>;

fn bad_body(e: crate::api_error::ApiError) -> Response {
    e.into_response()
}

fn refused(e: &AuthError) -> Response {
    refusal(e)
}

pub(crate) async fn list_tokens(State(state): State<Arc<AppState>>) -> Json<TokenList> {
    let mut tokens: Vec<TokenInfo> = state.team.state().tokens().iter().map(token_info).collect();
    tokens.sort_by(|a, b| a.user.cmp(&b.user));
    Json(TokenList { tokens })
}

pub(crate) async fn issue_token(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Answer<IssuedToken> {
    let req: IssueTokenRequest = json_body(body).map_err(bad_body)?;
    let expires = req
        .expires_days
        .map(|days| Duration::from_secs(u64::from(days) * 86_400));
    let made = state
        .team
        .state()
        .issue(
            &req.user,
            &req.role,
            expires,
            req.description.as_deref().unwrap_or_default(),
            SystemTime::now(),
        )
        .map_err(|e| refused(&e))?;
    on_record(
        &state,
        json!({"event": "token_issued", "user": req.user, "role": req.role,
               "expires": made.record.expires.map(rfc3339)}),
    )
    .await;
    Ok(Json(issued(&made)))
}

pub(crate) async fn revoke_token(
    State(state): State<Arc<AppState>>,
    Path(user): Path<String>,
) -> Answer<TokenInfo> {
    let record = state.team.state().revoke(&user).map_err(|e| refused(&e))?;
    state.team.forget(&user);
    on_record(
        &state,
        json!({"event": "token_revoked", "user": user, "role": record.role}),
    )
    .await;
    Ok(Json(token_info(&record)))
}

pub(crate) async fn rotate_token(
    State(state): State<Arc<AppState>>,
    Path(user): Path<String>,
) -> Answer<IssuedToken> {
    let made = state
        .team
        .state()
        .rotate(&user, SystemTime::now())
        .map_err(|e| refused(&e))?;
    state.team.forget(&user);
    on_record(
        &state,
        json!({"event": "token_rotated", "user": user, "role": made.record.role}),
    )
    .await;
    Ok(Json(issued(&made)))
}

pub(crate) async fn rotate_all_tokens(State(state): State<Arc<AppState>>) -> Answer<IssuedTokens> {
    let made = state
        .team
        .state()
        .rotate_all(SystemTime::now())
        .map_err(|e| refused(&e))?;
    let users: Vec<&str> = made.iter().map(|m| m.record.user.as_str()).collect();
    for user in &users {
        state.team.forget(user);
    }
    on_record(&state, json!({"event": "tokens_rotated", "users": users})).await;
    Ok(Json(IssuedTokens {
        tokens: made.iter().map(issued).collect(),
    }))
}

pub(crate) async fn list_roles(State(state): State<Arc<AppState>>) -> Json<RoleList> {
    let team = state.team.state();
    let tokens = team.tokens();
    Json(RoleList {
        roles: team.roles().iter().map(|r| role_info(r, &tokens)).collect(),
    })
}

fn spec(req: RoleRequest) -> RoleSpec {
    RoleSpec {
        scopes: req.scopes,
        rate_limit: req.rate_limit,
        description: req.description,
    }
}

pub(crate) async fn create_role(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Answer<RoleInfo> {
    let req: RoleRequest = json_body(body).map_err(bad_body)?;
    let Some(name) = req.name.clone() else {
        return Err(refused(&AuthError::Invalid(
            "a new role needs a name (\"name\": \"deployer\")".to_owned(),
        )));
    };
    let role = state
        .team
        .state()
        .create_role(&name, &spec(req))
        .map_err(|e| refused(&e))?;
    on_record(
        &state,
        json!({"event": "role_created", "role": name,
        "scopes": role.scopes.iter().map(ToString::to_string).collect::<Vec<_>>()}),
    )
    .await;
    Ok(Json(role_info(&role, &[])))
}

pub(crate) async fn update_role(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Answer<RoleInfo> {
    let req: RoleRequest = json_body(body).map_err(bad_body)?;
    if req.name.as_ref().is_some_and(|n| *n != name) {
        return Err(refused(&AuthError::Invalid(
            "a role is not renamed: create one with the new name instead".to_owned(),
        )));
    }
    let (role, tokens) = {
        let mut team = state.team.state();
        let role = team
            .update_role(&name, &spec(req))
            .map_err(|e| refused(&e))?;
        (role, team.tokens())
    };
    let info = role_info(&role, &tokens);
    // A changed rate limit starts each holder's window afresh.
    for user in &info.users {
        state.team.forget(user);
    }
    on_record(
        &state,
        json!({"event": "role_updated", "role": name,
        "scopes": info.scopes, "rate_limit": info.rate_limit}),
    )
    .await;
    Ok(Json(info))
}

pub(crate) async fn delete_role(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Answer<BTreeMap<String, String>> {
    state
        .team
        .state()
        .delete_role(&name)
        .map_err(|e| refused(&e))?;
    on_record(&state, json!({"event": "role_deleted", "role": name})).await;
    Ok(Json(BTreeMap::from([("deleted".to_owned(), name)])))
}
