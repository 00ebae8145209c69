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

struct Out(String);

impl Out {
    #[allow(clippy::too_many_arguments)]
    fn rule(
        &mut self,
        id: &str,
        action: &str,
        target: Option<&[String]>,
        when_server: Option<&[String]>,
        decision: &str,
        severity: &str,
        reason: &str,
        extra: &str,
    ) {
        let _ = writeln!(
            self.0,
            "\n[[rules]]\nid = {}\naction = {}",
            quoted(id),
            action
        );
        if let Some(t) = target {
            let _ = writeln!(self.0, "target = {}", list(t));
        }
        if let Some(s) = when_server {
            let _ = writeln!(self.0, "when = {{ server = {} }}", list(s));
        }
        let _ = writeln!(
            self.0,
            "decision = {}\nseverity = {}\nreason = {}{extra}",
            quoted(decision),
            quoted(severity),
            quoted(reason)
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
    let mut out = Out(String::new());
    let _ = writeln!(
        out.0,
        "# Imported by `keyward policy import` from {origin}."
    );
    let _ = writeln!(
        out.0,
        "[policy]\nid = {}\ndefault = {}\ndefault_rule_id = \"runtime.default.{}\"",
        quoted(id),
        quoted(default.as_str()),
        default.as_str()
    );
    if let Some(v) = meta("version") {
        let _ = writeln!(
            out.0,
            "description = {}",
            quoted(&format!("CAVRA policy version {v}"))
        );
    }
    let fs = &compiled.filesystem;
    if !fs.block_read.is_empty() {
        out.rule(
            "filesystem.read.block",
            "\"read_file\"",
            Some(&fs.block_read),
            None,
            "block",
            "critical",
            "reading this path is blocked",
            "",
        );
    }
    if !fs.block_write.is_empty() {
        out.rule(
            "filesystem.write.block",
            "[\"write_file\", \"delete_file\"]",
            Some(&fs.block_write),
            None,
            "block",
            "critical",
            "writing this path is blocked",
            "",
        );
    }
    if !fs.require_approval_write.is_empty() {
        out.rule(
            "filesystem.write.require_approval",
            "[\"write_file\", \"delete_file\"]",
            Some(&fs.require_approval_write),
            None,
            "require_approval",
            "high",
            "writing this path needs approval",
            "",
        );
    }
    let any_fs = !(fs.block_read.is_empty()
        && fs.block_write.is_empty()
        && fs.require_approval_write.is_empty());
    if any_fs {
        out.rule(
            "filesystem.read.allow",
            "[\"read_file\", \"list_directory\"]",
            None,
            None,
            "allow",
            "low",
            "ordinary file",
            "\nfallback = true",
        );
        out.rule(
            "filesystem.write.allow",
            "[\"write_file\", \"delete_file\"]",
            None,
            None,
            "allow",
            "low",
            "ordinary file",
            "\nfallback = true",
        );
    }
    let cmd = &compiled.commands;
    if !cmd.block.is_empty() {
        out.rule(
            "commands.block",
            "\"execute_command\"",
            Some(&cmd.block),
            None,
            "block",
            "critical",
            "this command is blocked",
            "",
        );
    }
    if !cmd.allow.is_empty() {
        out.rule(
            "commands.allow",
            "\"execute_command\"",
            Some(&cmd.allow),
            None,
            "allow",
            "low",
            "this command is allowed",
            "",
        );
    }
    if !(cmd.block.is_empty() && cmd.allow.is_empty()) {
        out.rule(
            "commands.default.require_approval",
            "\"execute_command\"",
            None,
            None,
            "require_approval",
            "medium",
            "command not on the allow list",
            "\nfallback = true",
        );
    }
    let mcp = &compiled.mcp;
    if !mcp.blocked_servers.is_empty() {
        out.rule(
            "mcp.server.trust.block",
            "\"mcp_tool_call\"",
            None,
            Some(&mcp.blocked_servers),
            "block",
            "high",
            "this MCP server is blocked",
            "",
        );
    }
    if !mcp.allowed_servers.is_empty() {
        out.rule(
            "mcp.server.trust.allow",
            "\"mcp_tool_call\"",
            None,
            Some(&mcp.allowed_servers),
            "allow",
            "low",
            "trusted MCP server",
            "",
        );
    }
    if mcp.block_unknown_servers {
        out.rule(
            "mcp.server.trust.block_unknown",
            "\"mcp_tool_call\"",
            None,
            None,
            "block",
            "high",
            "MCP server not on the trusted list",
            "\nfallback = true",
        );
    }
    Policy::from_toml(&out.0, "imported policy").map_err(|e| format!("{origin}: {e}"))?;
    Ok(out.0)
}
