//! Run wire types. A run's token is returned once, at creation; the daemon
//! keeps only its SHA-256.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// `permissive` (any host not denied) or `strict` (only allowed hosts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    /// Any host not denied.
    #[default]
    Permissive,
    /// Only `allow` patterns and the grants' hosts.
    Strict,
}

impl Network {
    /// `permissive` or `strict`.
    pub fn as_str(self) -> &'static str {
        match self {
            Network::Permissive => "permissive",
            Network::Strict => "strict",
        }
    }
}

/// `POST /v1/runs`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CreateRunRequest {
    /// Grant names.
    #[serde(default)]
    pub grants: Vec<String>,
    /// Extra host patterns allowed in strict mode.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Network mode.
    #[serde(default)]
    pub network: Network,
    /// The process the run belongs to; the run ends when it exits.
    #[serde(default)]
    pub pid: Option<u32>,
    /// Free text.
    #[serde(default)]
    pub label: Option<String>,
    /// A policy file (absolute path, read by the daemon) deciding this
    /// run's requests instead of the configured policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// SHA-256 (hex) of the values of the caller's environment variables,
    /// by name: the daemon answers which ones hold a secret of the run
    /// (`drop_env`) without either side revealing a value.
    #[serde(default)]
    pub env_sha256: BTreeMap<String, String>,
    /// What confines the run's processes, as `keyward run` reports it
    /// (e.g. `landlock ABI 7: fs, tcp, signals, abstract-unix`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confinement: Option<String>,
    /// The program reaches the proxy only through an fd broker
    /// (`keyward run --broker fd`): its environment gets no proxy URL, no
    /// token and no CA variables, only `KEYWARD_BROKER_FD`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub broker: bool,
    /// Each grant with a base-URL variable gets a plain-HTTP endpoint on
    /// loopback, exported in that variable (`keyward run --base-url`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub base_url: bool,
    /// Proof of the CI runner's identity, as with `POST /v1/evaluate`:
    /// the run is bound to the verified claims (and grants with
    /// `require_runner` need them).
    #[serde(default, skip_serializing_if = "crate::RunnerAuth::is_empty")]
    pub runner_auth: crate::RunnerAuth,
    /// The run's private TMPDIR (`keyward run --sandbox`), which the daemon
    /// removes when the run ends, whatever happened to `keyward run`. Only
    /// a directory the daemon's sandbox planning makes is accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_tmp: Option<String>,
}

/// `POST /v1/runs/{id}/broker`: the daemon's end of the run's broker goes
/// with this request (`SCM_RIGHTS`); the token proves the run is the
/// caller's. `Debug` never shows the token.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct BrokerAttach {
    /// The run's token.
    pub token: String,
}

impl fmt::Debug for BrokerAttach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerAttach")
            .field("token", &"[REDACTED]")
            .finish()
    }
}

/// The answer to `POST /v1/runs/{id}/broker`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BrokerAttached {
    /// The run.
    pub run_id: String,
    /// The broker protocol version (1).
    pub protocol: u32,
}

/// The answer to `POST /v1/runs`. `Debug` never shows the token.
#[derive(Clone, Serialize, Deserialize)]
pub struct RunCreated {
    /// `run_` + 12 hex; public.
    pub run_id: String,
    /// 256 random bits, hex; returned only here.
    pub token: String,
    /// `http://run:<token>@127.0.0.1:<port>`.
    pub proxy_url: String,
    /// Variables for the child (proxy and CA trust).
    pub env: BTreeMap<String, String>,
    /// Placeholder variables: name -> placeholder value.
    pub placeholders: BTreeMap<String, String>,
    /// Variables to remove from the child's environment: those holding a
    /// secret of the run, and those its grants' `env:` references name.
    #[serde(default)]
    pub drop_env: Vec<String>,
}

impl fmt::Debug for RunCreated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunCreated")
            .field("run_id", &self.run_id)
            .field("token", &"[REDACTED]")
            .finish_non_exhaustive()
    }
}

/// A run as listed: never its token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunInfo {
    /// `run_` + 12 hex.
    pub run_id: String,
    /// Free text.
    pub label: Option<String>,
    /// Grant names.
    pub grants: Vec<String>,
    /// Allowed host patterns.
    pub allow: Vec<String>,
    /// Network mode.
    pub network: Network,
    /// The run's process.
    pub pid: Option<u32>,
    /// The run's own policy file, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// What confines the run's processes, as its `keyward run` reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confinement: Option<String>,
    /// Started with an fd broker (`keyward run --broker fd`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub broker: bool,
    /// Started with base-URL endpoints (`keyward run --base-url`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub base_url: bool,
    /// The CI runner identity verified when the run was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner: Option<BTreeMap<String, String>>,
    /// What did not go as the program asked (refused, failed upstream, a
    /// granted host reached with nothing injected), one entry per kind,
    /// target and rule, for `keyward run` to report.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<RunProblem>,
}

/// One kind of request of a run that did not go as asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunProblem {
    /// `refused` (keyward said no), `failed` (the upstream could not be
    /// reached or trusted) or `not_injected` (a granted host on a port its
    /// grant does not cover: the request went out without the secret).
    pub kind: String,
    /// `host:port`.
    pub target: String,
    /// The rule that decided it, if any (`network.strict`, a policy rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// How many requests.
    pub count: u32,
    /// What happened.
    pub detail: String,
    /// What would change it, when keyward knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// `GET /v1/runs/{id}/problems?seen=N`: the run's problems once more than
/// `N` requests have been noted (or after a wait, unchanged), for
/// `keyward run --verbose` to report them as they happen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunProblems {
    /// Requests noted so far (the sum of the counts, including those past
    /// the kept limit): the next call's `seen`.
    pub noted: u64,
    /// The problems so far, summed as in [`RunInfo::problems`].
    pub problems: Vec<RunProblem>,
}

/// `GET /v1/runs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunList {
    /// Oldest first.
    pub runs: Vec<RunInfo>,
}

/// `PATCH /v1/runs/{id}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PatchRunRequest {
    /// The run's process.
    pub pid: Option<u32>,
}
