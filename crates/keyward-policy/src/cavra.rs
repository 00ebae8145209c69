//! Import of a CAVRA compiled policy (JSON) into an equivalent keyward TOML
//! policy.

use std::fmt::Write as _;

use serde::Deserialize;

use crate::Policy;

#[derive(Debug, Default, Deserialize)]
struct Compiled {
    #[serde(default)]
    metadata: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    filesystem: Filesystem,
    #[serde(default)]
    commands: Commands,
    #[serde(default)]
    mcp: Mcp,
}

#[derive(Debug, Default, Deserialize)]
struct Filesystem {
    #[serde(default)]
    block_read: Vec<String>,
    #[serde(default)]
    block_write: Vec<String>,
    #[serde(default)]
    require_approval_write: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Commands {
    #[serde(default)]
    block: Vec<String>,
    #[serde(default)]
    allow: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Mcp {
    #[serde(default)]
    allowed_servers: Vec<String>,
    #[serde(default)]
    blocked_servers: Vec<String>,
    #[serde(default)]
    block_unknown_servers: bool,
}

fn quoted(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn list(items: &[String]) -> String {
    let inner: Vec<String> = items.iter().map(|s| quoted(s)).collect();
    format!("[{}]", inner.join(", "))
}

/// What a generated rule matches on.
enum Matches<'a> {
    /// `target` globs; the rule is written only when there are some.
    Targets(&'a [String]),
    /// `when = { server = [...] }`; written only when there are some.
    Servers(&'a [String]),
    /// A `fallback = true` rule, written when the flag holds.
    Fallback(bool),
}

/// One rule of the generated policy.
struct Spec<'a> {
    id: &'static str,
    actions: &'static [&'static str],
    matches: Matches<'a>,
    decision: &'static str,
    severity: &'static str,
    reason: &'static str,
}

const READ: &[&str] = &["read_file"];
const READ_ANY: &[&str] = &["read_file", "list_directory"];
const WRITE: &[&str] = &["write_file", "delete_file"];
const COMMAND: &[&str] = &["execute_command"];
const MCP: &[&str] = &["mcp_tool_call"];

impl Spec<'_> {
    /// Appends the rule's TOML to `out`, unless it has nothing to match.
    fn write(&self, out: &mut String) {
        let strings = |s: &[&str]| list(&s.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>());
        let matching = match &self.matches {
            Matches::Targets(t) if !t.is_empty() => format!("target = {}\n", list(t)),
            Matches::Servers(s) if !s.is_empty() => format!("when = {{ server = {} }}\n", list(s)),
            Matches::Fallback(true) => "fallback = true\n".to_owned(),
            _ => return,
        };
        let _ = write!(
            out,
            "\n[[rules]]\nid = {}\naction = {}\n{matching}decision = {}\nseverity = {}\nreason = {}\n",
            quoted(self.id),
            strings(self.actions),
            quoted(self.decision),
            quoted(self.severity),
            quoted(self.reason)
        );
    }
}

/// Converts CAVRA compiled-policy JSON into keyward policy TOML. The result
/// is compiled before it is returned, so it always loads.
pub fn import_cavra(json: &str, origin: &str) -> Result<String, String> {
    let compiled: Compiled = serde_json::from_str(json)
        .map_err(|e| format!("{origin}: not a CAVRA compiled policy: {e}"))?;
    let meta = |key: &str| {
        compiled
            .metadata
            .get(key)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
    };
    let id = meta("policy_id")
        .or_else(|| meta("id"))
        .or_else(|| meta("name"))
        .unwrap_or("cavra-import");
    let default = meta("default_decision").unwrap_or("require_approval");
    let default: keyward_api::Decision = default
        .parse()
        .map_err(|e| format!("{origin}: metadata.default_decision: {e}"))?;
    let mut out = String::new();
    let _ = writeln!(out, "# Imported by `keyward policy import` from {origin}.");
    let _ = writeln!(
        out,
        "[policy]\nid = {}\ndefault = {}\ndefault_rule_id = \"runtime.default.{}\"",
        quoted(id),
        quoted(default.as_str()),
        default.as_str()
    );
    if let Some(v) = meta("version") {
        let _ = writeln!(
            out,
            "description = {}",
            quoted(&format!("CAVRA policy version {v}"))
        );
    }
    let (fs, cmd, mcp) = (&compiled.filesystem, &compiled.commands, &compiled.mcp);
    let any_fs = !(fs.block_read.is_empty()
        && fs.block_write.is_empty()
        && fs.require_approval_write.is_empty());
    let any_cmd = !(cmd.block.is_empty() && cmd.allow.is_empty());
    let specs = [
        Spec {
            id: "filesystem.read.block",
            actions: READ,
            matches: Matches::Targets(&fs.block_read),
            decision: "block",
            severity: "critical",
            reason: "reading this path is blocked",
        },
        Spec {
            id: "filesystem.write.block",
            actions: WRITE,
            matches: Matches::Targets(&fs.block_write),
            decision: "block",
            severity: "critical",
            reason: "writing this path is blocked",
        },
        Spec {
            id: "filesystem.write.require_approval",
            actions: WRITE,
            matches: Matches::Targets(&fs.require_approval_write),
            decision: "require_approval",
            severity: "high",
            reason: "writing this path needs approval",
        },
        Spec {
            id: "filesystem.read.allow",
            actions: READ_ANY,
            matches: Matches::Fallback(any_fs),
            decision: "allow",
            severity: "low",
            reason: "ordinary file",
        },
        Spec {
            id: "filesystem.write.allow",
            actions: WRITE,
            matches: Matches::Fallback(any_fs),
            decision: "allow",
            severity: "low",
            reason: "ordinary file",
        },
        Spec {
            id: "commands.block",
            actions: COMMAND,
            matches: Matches::Targets(&cmd.block),
            decision: "block",
            severity: "critical",
            reason: "this command is blocked",
        },
        Spec {
            id: "commands.allow",
            actions: COMMAND,
            matches: Matches::Targets(&cmd.allow),
            decision: "allow",
            severity: "low",
            reason: "this command is allowed",
        },
        Spec {
            id: "commands.default.require_approval",
            actions: COMMAND,
            matches: Matches::Fallback(any_cmd),
            decision: "require_approval",
            severity: "medium",
            reason: "command not on the allow list",
        },
        Spec {
            id: "mcp.server.trust.block",
            actions: MCP,
            matches: Matches::Servers(&mcp.blocked_servers),
            decision: "block",
            severity: "high",
            reason: "this MCP server is blocked",
        },
        Spec {
            id: "mcp.server.trust.allow",
            actions: MCP,
            matches: Matches::Servers(&mcp.allowed_servers),
            decision: "allow",
            severity: "low",
            reason: "trusted MCP server",
        },
        Spec {
            id: "mcp.server.trust.block_unknown",
            actions: MCP,
            matches: Matches::Fallback(mcp.block_unknown_servers),
            decision: "block",
            severity: "high",
            reason: "MCP server not on the trusted list",
        },
    ];
    for spec in &specs {
        spec.write(&mut out);
    }
    Policy::from_toml(&out, "imported policy").map_err(|e| format!("{origin}: {e}"))?;
    Ok(out)
}
