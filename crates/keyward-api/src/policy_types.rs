//! Policy wire types: `POST /v1/evaluate` takes an [`EvaluateRequest`] and
//! answers a [`DecisionResponse`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A question to the policy engine: may this actor do this? Only
/// `action_type` is required.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EvaluateRequest {
    /// Defaults to `local`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Defaults to `unknown-agent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// Defaults to `ai-agent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// `read_file`, `write_file`, `execute_command`, `git`, `mcp_tool_call`,
    /// `http_request`, or any other name (unknown types fall to the default).
    pub action_type: String,
    /// A path, a command line, a branch, `host[:port]/path`, a tool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The operation (HTTP method, git operation, ...); `operation` is accepted too.
    #[serde(default, alias = "operation", skip_serializing_if = "Option::is_none")]
    pub requested_operation: Option<String>,
    /// A loaded policy to evaluate against instead of the configured one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_pack: Option<String>,
    /// MCP server name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// MCP tool name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// Free-form capability name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capability: Option<String>,
    /// Free-form fields rules can match with `when = { "context.x" = ... }`.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub context: serde_json::Map<String, serde_json::Value>,
    /// Proof of the CI runner's identity, as sent: signed claims
    /// (`{claims, algorithm: "HMAC-SHA256", key_id, signature}`) or a CI
    /// provider's token (`{algorithm: "OIDC-JWT", token}`). Policy never
    /// reads it: the daemon verifies it into `verified_runner`.
    #[serde(default, skip_serializing_if = "RunnerAuth::is_empty")]
    pub runner_auth: RunnerAuth,
    /// The runner claims the daemon verified from `runner_auth`: what
    /// `when = { "runner.<claim>" = ... }` matches. Never read from or
    /// written to the wire, so a caller cannot claim an identity.
    #[serde(skip)]
    pub verified_runner: Option<serde_json::Map<String, serde_json::Value>>,
    /// How those claims were verified (`algorithm`, `key_id`, `issuer`):
    /// what `when = { "runner_auth.<field>" = ... }` matches. Set by the
    /// daemon only, like `verified_runner`.
    #[serde(skip)]
    pub verified_runner_auth: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Runner auth as a caller sent it (an HMAC envelope or an OIDC token): a
/// JSON object whose `Debug` hides the token and signature.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunnerAuth(pub serde_json::Map<String, serde_json::Value>);

impl RunnerAuth {
    /// Whether nothing was sent.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::ops::Deref for RunnerAuth {
    type Target = serde_json::Map<String, serde_json::Value>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for RunnerAuth {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl fmt::Debug for RunnerAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (key, value) in &self.0 {
            match key.as_str() {
                "token" | "signature" => map.entry(key, &"[REDACTED]"),
                _ => map.entry(key, value),
            };
        }
        map.finish()
    }
}

/// What a policy decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Go ahead.
    Allow,
    /// Refused.
    Block,
    /// A person must approve first.
    RequireApproval,
}

impl Decision {
    /// `allow`, `block` or `require_approval`.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Block => "block",
            Decision::RequireApproval => "require_approval",
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Decision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "allow" => Ok(Decision::Allow),
            "block" => Ok(Decision::Block),
            "require_approval" => Ok(Decision::RequireApproval),
            _ => Err(format!(
                "unknown decision {s:?}: expected allow, block or require_approval"
            )),
        }
    }
}

/// How bad a matched action is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Routine.
    #[default]
    Low,
    /// Worth a look.
    Medium,
    /// Dangerous.
    High,
    /// Irreversible or credential-exposing.
    Critical,
}

/// The answer to `POST /v1/evaluate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionResponse {
    /// `dec_` + 12 hex.
    pub decision_id: String,
    /// The decision.
    pub decision: Decision,
    /// The rule that decided (or the policy's default rule id).
    pub rule_id: String,
    /// For a shell line (`execute_command`): the part that decided, i.e.
    /// one command as the shell would run it (`terraform apply` in
    /// `terraform plan; terraform apply`), `> path` for a redirection, or
    /// the text that could not be read (rule `commands.unparseable`).
    /// Absent for other actions and from older daemons.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched_command: Option<String>,
    /// The rule's severity.
    pub severity: Severity,
    /// Why, for people.
    pub reason: String,
    /// Who may approve (with `require_approval`).
    #[serde(default)]
    pub approver_group: Option<String>,
    /// The policy that decided.
    pub policy_id: String,
    /// Echoed from the request (or its default).
    pub session_id: String,
    /// Echoed from the request (or its default).
    pub agent_id: String,
    /// Echoed from the request (or its default).
    pub actor: String,
    /// Echoed from the request.
    pub action_type: String,
    /// Echoed from the request.
    #[serde(default)]
    pub target: Option<String>,
    /// Echoed from the request.
    #[serde(default)]
    pub requested_operation: Option<String>,
    /// `keyward-evidence://<log_id>/<seq>` of the durable record.
    #[serde(default)]
    pub evidence_refs: Vec<String>,
    /// Ties this decision to the request's trail (the decision id unless the
    /// request's `context.correlation_id` names one).
    pub correlation_id: String,
    /// RFC 3339 UTC with nanoseconds.
    pub timestamp: String,
}
