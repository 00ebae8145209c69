//! Wire types of the keyward admin API (`/v1/...`, HTTP/1.1 JSON over a Unix
//! socket) and the client every CLI command uses.
//!
//! The API is additive only: fields are never removed, renamed or given a new
//! meaning, and clients ignore fields they do not know.
#![forbid(unsafe_code)]

mod auth_types;
pub mod broker;
mod client;
mod grant_types;
mod policy_types;
mod run_types;
mod socket_path;
mod text;
mod types;
mod vault_types;

pub use auth_types::{
    IssueTokenRequest, IssuedToken, IssuedTokens, RoleInfo, RoleList, RoleRequest, TokenInfo,
    TokenList,
};
pub use client::{Client, ClientError, RawResponse};
pub use grant_types::{GrantInfo, GrantList, InjectInfo, ReloadResponse};
pub use policy_types::{
    Decision, DecisionResponse, EVALUATE_FIELDS, EvaluateRequest, RequestError, RunnerAuth,
    Severity, TARGET_ACTIONS, did_you_mean, field_suggestion,
};
pub use run_types::{
    BrokerAttach, BrokerAttached, CreateRunRequest, Network, PatchRunRequest, RunCreated, RunInfo,
    RunList, RunProblem, RunProblems,
};
pub use socket_path::{SOCKET_PATH_MAX, SocketPathTooLong, check_socket_path};
pub use text::printable;
pub use types::{
    ErrorBody, ErrorDetail, GrpcListening, Health, ReloadFailure, ShutdownRequest, ShutdownResponse,
};
pub use vault_types::{
    InitVaultRequest, KeyMode, MAX_SECRET_BYTES, RollbackRequest, SecretInfo, SecretList,
    SetSecretRequest, SnapshotInfo, SnapshotList, UnsealRequest, VaultState, VaultStatus,
};

/// The version of this build (the workspace version).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit this build came from, or `unknown`.
pub const COMMIT: &str = env!("KEYWARD_COMMIT");
/// `<version> (commit <commit>)`, for `--version`.
pub const VERSION_LINE: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("KEYWARD_COMMIT"),
    ")"
);

/// An error and its sources on one line, each cause once (typed errors
/// often repeat their source in their own message).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}
