//! `--oidc-token-file` / `--runner-auth-file`: the runner auth `keyward
//! eval` and `keyward run` send, read from a file so no token is in argv.

use anyhow::{Context, Result, bail};
use keyward_api::RunnerAuth;
use serde_json::{Map, Value};

use crate::cli::RunnerAuthArgs;

/// The `runner_auth` object to send, if a file was named.
pub fn load(args: &RunnerAuthArgs) -> Result<Option<RunnerAuth>> {
    if let Some(path) = &args.oidc_token_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the OIDC token file {}", path.display()))?;
        let token = text.trim();
        if token.is_empty() {
            bail!(
                "the OIDC token file {} is empty; it should hold the CI provider's ID token (a JWT)",
                path.display()
            );
        }
        let mut auth = Map::new();
        auth.insert("algorithm".into(), keyward_identity::OIDC_ALGORITHM.into());
        auth.insert("token".into(), token.into());
        return Ok(Some(RunnerAuth(auth)));
    }
    if let Some(path) = &args.runner_auth_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the runner auth file {}", path.display()))?;
        return match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(auth)) => Ok(Some(RunnerAuth(auth))),
            _ => bail!(
                "{} is not a runner auth JSON object: expected {{\"claims\": {{...}}, \"algorithm\": \
                 \"HMAC-SHA256\", \"key_id\": \"...\", \"signature\": \"<hex>\"}} or \
                 {{\"algorithm\": \"OIDC-JWT\", \"token\": \"...\"}}",
                path.display()
            ),
        };
    }
    Ok(None)
}
