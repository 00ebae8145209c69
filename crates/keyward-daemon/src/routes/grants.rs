//! `GET /v1/grants` and `POST /v1/reload`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use keyward_api::{GrantInfo, GrantList, InjectInfo, ReloadResponse};
use keyward_vault::ResolveStatus;

use keyward_proxy::Injection;

use crate::api_error::ApiError;
use crate::state::AppState;

fn inject_info(inject: &Injection) -> InjectInfo {
    let mut info = InjectInfo {
        kind: String::new(),
        header: None,
        format: None,
        username: None,
        param: None,
    };
    match inject {
        Injection::Header { name, format } => {
            info.kind = "header".to_owned();
            info.header = Some(name.clone());
            info.format = Some(format.clone());
        }
        Injection::Basic { username } => {
            info.kind = "basic".to_owned();
            info.username = Some(username.clone());
        }
        Injection::Query { param } => {
            info.kind = "query".to_owned();
            info.param = Some(param.clone());
        }
    }
    info
}

/// Every grant with whether its secret resolves right now; never a value.
pub(crate) async fn list(State(state): State<Arc<AppState>>) -> Json<GrantList> {
    let config = state.config();
    let resolver = state.resolver();
    let mut out = Vec::with_capacity(config.grants.len());
    for grant in config.grants.values() {
        let (status, message) = match resolver.resolve(&grant.secret).await {
            Ok(_) => (ResolveStatus::Ok.as_str().to_owned(), None),
            Err(e) => (e.status().as_str().to_owned(), Some(e.to_string())),
        };
        out.push(GrantInfo {
            name: grant.name.clone(),
            source: grant.source.as_str().to_owned(),
            secret: grant.secret.to_string(),
            hosts: grant.hosts.iter().map(ToString::to_string).collect(),
            inject: inject_info(&grant.inject),
            placeholder_env: grant.placeholder_env.clone(),
            plaintext: grant.plaintext,
            substitute_body: grant.substitute_body,
            status,
            message,
        });
    }
    Json(GrantList { grants: out })
}

/// Reloads the config like SIGHUP, but tells the caller whether it worked.
pub(crate) async fn reload(
    State(state): State<Arc<AppState>>,
) -> Result<Json<ReloadResponse>, ApiError> {
    match state.reload() {
        Ok((new, restart_needed)) => {
            tracing::info!(config = %new.source.path.display(), "config reloaded over the admin API");
            Ok(Json(ReloadResponse {
                status: "reloaded".to_owned(),
                config: new.source.path.display().to_string(),
                from_file: new.from_file,
                restart_needed,
            }))
        }
        Err(e) => {
            tracing::error!("config reload failed, keeping the previous config: {e}");
            Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "config_invalid",
                format!("{e}; the previous config stays in effect"),
            ))
        }
    }
}
