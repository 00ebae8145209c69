//! Policy wire types: `POST /v1/evaluate` takes an [`EvaluateRequest`] and
//! answers a [`DecisionResponse`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A question to the policy engine: may this actor do this? `action_type`
/// is required, and a `target` for the actions in [`TARGET_ACTIONS`]. Read
/// a request as sent with [`EvaluateRequest::from_json`], which refuses
/// fields not in [`EVALUATE_FIELDS`] (plain `serde` deserialisation
/// ignores them, and would decide on less than the caller meant).
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

/// The fields an [`EvaluateRequest`] may carry on the wire. Any other
/// top-level field is refused ([`RequestError`], code `unknown_field`):
/// a misspelt field the policy never sees would decide on less than the
/// caller meant. `release_governance` (CAVRA's release evidence) is
/// accepted and not evaluated.
pub const EVALUATE_FIELDS: &[&str] = &[
    "session_id",
    "agent_id",
    "actor",
    "action_type",
    "target",
    "requested_operation",
    "operation",
    "policy_pack",
    "server",
    "tool",
    "capability",
    "context",
    "runner_auth",
    "release_governance",
];

/// Action types whose requests must name a target: the file, directory,
/// command line, branch or URL the policy decides on. Without one nothing
/// can be decided, so the request is refused (code `missing_target`).
pub const TARGET_ACTIONS: &[(&str, &str)] = &[
    ("read_file", "the file's path"),
    ("write_file", "the file's path"),
    ("delete_file", "the file's path"),
    ("list_directory", "the directory's path"),
    ("execute_command", "the command line"),
    ("git_operation", "the branch or ref"),
    ("git", "the branch or ref"),
    ("http_request", "the URL, or host[:port]/path"),
];

/// A request that cannot be decided: what is wrong with it, as an error
/// code (`bad_request`, `unknown_field`, `missing_target`) and a message
/// that names the field and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RequestError {
    /// `bad_request`, `unknown_field` or `missing_target`.
    pub code: &'static str,
    /// The field at fault, when there is one.
    pub field: Option<String>,
    /// What is wrong and what to send instead.
    pub message: String,
}

impl RequestError {
    fn new(code: &'static str, field: Option<&str>, message: String) -> Self {
        Self {
            code,
            field: field.map(str::to_owned),
            message,
        }
    }
}

impl EvaluateRequest {
    /// Reads a request as sent (JSON), refusing fields it does not know and
    /// requests that cannot be decided (see [`EvaluateRequest::check`]).
    pub fn from_json(bytes: &[u8]) -> Result<Self, RequestError> {
        let value: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| RequestError::new("bad_request", None, format!("malformed JSON: {e}")))?;
        Self::from_value(value)
    }

    /// [`EvaluateRequest::from_json`] for a request already parsed as JSON.
    pub fn from_value(value: serde_json::Value) -> Result<Self, RequestError> {
        let serde_json::Value::Object(map) = &value else {
            return Err(RequestError::new(
                "bad_request",
                None,
                "expected a JSON object such as {\"action_type\":\"read_file\",\"target\":\"src/main.rs\"}"
                    .to_owned(),
            ));
        };
        let action = map
            .get("action_type")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        if let Some(unknown) = map.keys().find(|k| !EVALUATE_FIELDS.contains(&k.as_str())) {
            return Err(unknown_field(unknown, action));
        }
        let req: EvaluateRequest = serde_json::from_value(value)
            .map_err(|e| RequestError::new("bad_request", None, format!("{e}")))?;
        req.check()?;
        Ok(req)
    }

    /// Whether the request can be decided: an `action_type`, and a target
    /// for the actions in [`TARGET_ACTIONS`] (an empty or blank target is
    /// none).
    pub fn check(&self) -> Result<(), RequestError> {
        let action = self.action_type.trim();
        if action.is_empty() {
            return Err(RequestError::new(
                "bad_request",
                Some("action_type"),
                "action_type is required (e.g. read_file, execute_command, git, http_request)"
                    .to_owned(),
            ));
        }
        self.check_target(
            TARGET_ACTIONS
                .iter()
                .find(|(a, _)| *a == action)
                .map(|(_, w)| *w),
        )
    }

    /// Refuses a request without a target when its action needs one:
    /// `what` says what the target is (`the file's path`), `None` when the
    /// action needs none.
    pub fn check_target(&self, what: Option<&str>) -> Result<(), RequestError> {
        let Some(what) = what else { return Ok(()) };
        if self.target.as_deref().is_some_and(|t| !t.trim().is_empty()) {
            return Ok(());
        }
        let given = if self.target.is_some() {
            "it is empty"
        } else {
            "none was given"
        };
        Err(RequestError::new(
            "missing_target",
            Some("target"),
            format!(
                "action_type {:?} needs a target ({what}), and {given}: nothing can be decided without it",
                self.action_type.trim()
            ),
        ))
    }
}

/// What a caller may have meant by a request field keyward does not know
/// (one of [`EVALUATE_FIELDS`]): the names people and other tools use for
/// the target and the other fields, then the known field closest in
/// spelling.
pub fn field_suggestion(field: &str) -> Option<&'static str> {
    let lower = field.to_ascii_lowercase();
    let synonym = match lower.as_str() {
        "path" | "file" | "file_path" | "filepath" | "filename" | "file_name" | "notebook_path"
        | "dir" | "directory" | "url" | "uri" | "href" | "command" | "cmd" | "command_line"
        | "commandline" | "line" | "script" | "branch" | "ref" | "refspec" | "host"
        | "hostname" | "destination" | "dest" | "resource" | "argv" | "args" => Some("target"),
        "method" | "http_method" | "verb" | "op" | "git_operation" => Some("requested_operation"),
        "action" | "type" | "action_name" | "kind" | "actiontype" => Some("action_type"),
        "pack" | "policy" | "policy_id" => Some("policy_pack"),
        "mcp_server" | "server_name" => Some("server"),
        "tool_name" | "mcp_tool" => Some("tool"),
        "session" => Some("session_id"),
        "agent" => Some("agent_id"),
        _ => None,
    };
    synonym.or_else(|| did_you_mean(&lower, EVALUATE_FIELDS))
}

fn unknown_field(field: &str, action: &str) -> RequestError {
    let mut message = format!("unknown field {field:?} in the request");
    match field_suggestion(field) {
        Some("target") => {
            let what = TARGET_ACTIONS
                .iter()
                .find(|(a, _)| *a == action.trim())
                .map_or("the path, command line, branch or URL", |(_, w)| *w);
            let holds = if action.trim().is_empty() {
                format!("\"target\" holds {what}")
            } else {
                format!("for {}, \"target\" holds {what}", action.trim())
            };
            message += &format!(": did you mean \"target\"? ({holds})");
        }
        Some(known) => message += &format!(": did you mean {known:?}?"),
        None => {}
    }
    message += &format!("; known fields: {}", EVALUATE_FIELDS.join(", "));
    RequestError::new("unknown_field", Some(field), message)
}

/// Edit distance (insertions, deletions, substitutions, transpositions of
/// neighbours), for "did you mean".
fn distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = best;
        }
    }
    rows[a.len()][b.len()]
}

/// The known name closest to `name` in spelling, if one is close enough to
/// be a slip (at most two edits, one for names of up to five letters).
pub fn did_you_mean<'k>(name: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (distance(name, k), *k))
        .filter(|(d, k)| *d > 0 && *d <= if k.len() <= 5 { 1 } else { 2 })
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(json: &str) -> RequestError {
        EvaluateRequest::from_json(json.as_bytes()).unwrap_err()
    }

    #[test]
    fn unknown_fields_are_refused_with_what_was_meant() {
        for (json, field, meant) in [
            (
                r#"{"action_type":"read_file","path":"/x"}"#,
                "path",
                "\"target\"",
            ),
            (
                r#"{"action_type":"write_file","file":"/x"}"#,
                "file",
                "\"target\"",
            ),
            (
                r#"{"action_type":"git","branch":"main"}"#,
                "branch",
                "\"target\"",
            ),
            (
                r#"{"action_type":"http_request","url":"http://a/"}"#,
                "url",
                "\"target\"",
            ),
            (
                r#"{"action_type":"execute_command","targett":"ls"}"#,
                "targett",
                "\"target\"",
            ),
            (
                r#"{"action_type":"x","method":"GET"}"#,
                "method",
                "\"requested_operation\"",
            ),
            (
                r#"{"action":"read_file","target":"a"}"#,
                "action",
                "\"action_type\"",
            ),
            (
                r#"{"action_type":"x","sesion_id":"s"}"#,
                "sesion_id",
                "\"session_id\"",
            ),
        ] {
            let e = refused(json);
            assert_eq!(e.code, "unknown_field", "{json}");
            assert_eq!(e.field.as_deref(), Some(field), "{json}");
            assert!(
                e.message.contains(&format!("did you mean {meant}?")),
                "{json}: {}",
                e.message
            );
        }
        let e = refused(r#"{"action_type":"read_file","path":"/x"}"#);
        assert!(
            e.message
                .contains(r#"(for read_file, "target" holds the file's path)"#),
            "{}",
            e.message
        );
        // Nothing close: no guess, the known fields listed.
        let e = refused(r#"{"action_type":"x","zzz":1}"#);
        assert!(!e.message.contains("did you mean"), "{}", e.message);
        assert!(
            e.message.contains("known fields: session_id"),
            "{}",
            e.message
        );
    }

    #[test]
    fn actions_on_paths_commands_branches_and_urls_need_a_target() {
        for (action, _) in TARGET_ACTIONS {
            for json in [
                format!(r#"{{"action_type":"{action}"}}"#),
                format!(r#"{{"action_type":"{action}","target":" "}}"#),
            ] {
                let e = refused(&json);
                assert_eq!(
                    (e.code, e.field.as_deref()),
                    ("missing_target", Some("target")),
                    "{json}"
                );
            }
        }
        // What stayed valid stays valid.
        for json in [
            r#"{"action_type":"mcp_tool_call","server":"fs","tool":"read"}"#,
            r#"{"action_type":"deploy"}"#,
            r#"{"action_type":"git","operation":"push","target":"main","context":{"any":{"thing":1}}}"#,
            r#"{"action_type":"read_file","target":"a","release_governance":{"approval_state":"approved"}}"#,
        ] {
            EvaluateRequest::from_json(json.as_bytes()).unwrap();
        }
        assert_eq!(refused("[1]").code, "bad_request");
        assert_eq!(refused("{").code, "bad_request");
        assert_eq!(refused(r#"{"target":"a"}"#).code, "bad_request");
    }
}
