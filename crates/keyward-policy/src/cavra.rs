//! Import of a CAVRA compiled policy (JSON) into an equivalent keyward TOML
//! policy.
//!
//! A CAVRA compiled policy is its YAML policy pack after overlays, as JSON:
//! `metadata`, `filesystem` (`block_read`, `block_write`,
//! `require_approval_write`), `commands` (`block`, `allow`,
//! `require_approval`), `git`, `mcp` (`allowed_servers`, `blocked_servers`,
//! `block_unknown_servers`) and sections keyward has no rules for
//! (`approvals`, `evidence`, `compliance`, `release_governance`, ...).
//! Whatever is not converted is named in a warning; nothing is dropped
//! silently.
//!
//! CAVRA's runtime decides some things whatever the file says, and the
//! import writes them out so the result decides the same way: files no
//! pattern names are allowed, commands no pattern names need approval, a
//! push to `main`/`master` is blocked and other git operations allowed, and
//! MCP servers not on the allowed list are blocked unless
//! `block_unknown_servers` is `false`.
//!
//! Patterns: CAVRA anchors a pattern to the whole target, and its `*`
//! matches any characters, `/` included; `?`, `\` and everything else are
//! literal. Path patterns become keyward path globs whose every `*` crosses
//! directories (`*.pem` is `**.pem`); command and server patterns become
//! text globs; `?` and `\` are escaped.

use std::fmt::Write as _;

use serde_json::{Map, Value};

use crate::Policy;
use crate::glob::escape;

/// The result of an import: the policy's TOML, and one warning for each
/// part of the source that has no keyward equivalent.
#[derive(Debug, Clone)]
pub struct CavraImport {
    /// The keyward policy (it compiles).
    pub toml: String,
    /// What was not converted, each naming the section and key.
    pub warnings: Vec<String>,
}

/// Whether a policy file is a CAVRA compiled policy rather than TOML: its
/// name ends in `.json`, or its first character is `{` (which no TOML
/// document starts with).
pub fn is_cavra_json(path: &std::path::Path, text: &str) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
        || text.trim_start().starts_with('{')
}

fn quoted(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn list(items: &[String]) -> String {
    let inner: Vec<String> = items.iter().map(|s| quoted(s)).collect();
    format!("[{}]", inner.join(", "))
}

/// What a generated rule matches on.
enum Matches {
    /// `target` globs; the rule is written only when there are some.
    Targets(Vec<String>),
    /// `when = { server = [...] }`; written only when there are some.
    Servers(Vec<String>),
    /// `operation = ["push"]` and these targets (a protected-branch rule).
    Push(&'static [&'static str]),
    /// A `fallback = true` rule, written when the flag holds.
    Fallback(bool),
}

/// One rule of the generated policy.
struct Spec {
    id: &'static str,
    actions: &'static [&'static str],
    matches: Matches,
    decision: &'static str,
    severity: &'static str,
    reason: &'static str,
}

const READ: &[&str] = &["read_file"];
const READ_ANY: &[&str] = &["read_file", "list_directory"];
const WRITE: &[&str] = &["write_file", "delete_file"];
const COMMAND: &[&str] = &["execute_command"];
const GIT: &[&str] = &["git_operation"];
const MCP: &[&str] = &["mcp_tool_call"];

/// The push targets that reach `main` or `master`, in every form a push
/// target takes (the same list as the built-in pack's rule).
const PROTECTED_PUSH_TARGETS: &[&str] = &[
    "main", "master", "+main", "+master", "*/main", "*/master", "*:main", "*:master", "* main",
    "* master",
];

impl Spec {
    /// Appends the rule's TOML to `out`, unless it has nothing to match.
    fn write(&self, out: &mut String) {
        let strings = |s: &[&str]| list(&s.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>());
        let matching = match &self.matches {
            Matches::Targets(t) if !t.is_empty() => format!("target = {}\n", list(t)),
            Matches::Servers(s) if !s.is_empty() => format!("when = {{ server = {} }}\n", list(s)),
            Matches::Push(targets) => {
                format!("operation = [\"push\"]\ntarget = {}\n", strings(targets))
            }
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

/// A CAVRA path pattern as a keyward path glob: every `*` crosses `/`.
fn path_glob(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 4);
    let mut rest = pattern;
    while let Some(star) = rest.find('*') {
        out.push_str(&escape(&rest[..star]));
        out.push_str("**");
        rest = rest[star..].trim_start_matches('*');
    }
    out.push_str(&escape(rest));
    out
}

/// A CAVRA command pattern as a keyward text glob (`*` already matches
/// anything there).
fn text_glob(pattern: &str) -> String {
    pattern.split('*').map(escape).collect::<Vec<_>>().join("*")
}

/// The source, section by section, collecting warnings as keys are read.
struct Source<'a> {
    origin: &'a str,
    root: &'a Map<String, Value>,
    warnings: Vec<String>,
}

impl<'a> Source<'a> {
    fn section(&self, name: &str) -> Result<Option<&'a Map<String, Value>>, String> {
        match self.root.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(map)) => Ok(Some(map)),
            Some(other) => Err(format!(
                "{}: `{name}` must be an object, not {}",
                self.origin,
                kind(other)
            )),
        }
    }

    /// `section.key` as a list of non-empty strings (trimmed, as CAVRA
    /// reads them).
    fn strings(&self, section: &str, key: &str) -> Result<Vec<String>, String> {
        let Some(map) = self.section(section)? else {
            return Ok(Vec::new());
        };
        match map.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    let Value::String(s) = item else {
                        return Err(format!(
                            "{}: `{section}.{key}` must be a list of strings; it holds {}",
                            self.origin,
                            kind(item)
                        ));
                    };
                    if !s.trim().is_empty() {
                        out.push(s.trim().to_owned());
                    }
                }
                Ok(out)
            }
            Some(other) => Err(format!(
                "{}: `{section}.{key}` must be a list of strings, not {}",
                self.origin,
                kind(other)
            )),
        }
    }

    fn flag(&self, section: &str, key: &str) -> Result<Option<bool>, String> {
        match self.section(section)?.and_then(|m| m.get(key)) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(format!(
                "{}: `{section}.{key}` must be true or false, not {}",
                self.origin,
                kind(other)
            )),
        }
    }

    /// Warns about every key of `section` that is not in `converted`.
    fn warn_rest(&mut self, section: &str, converted: &[&str], why: &str) -> Result<(), String> {
        let Some(map) = self.section(section)? else {
            return Ok(());
        };
        for key in map.keys().filter(|k| !converted.contains(&k.as_str())) {
            self.warnings.push(format!(
                "{}: `{section}.{key}` is not converted: {why}",
                self.origin
            ));
        }
        Ok(())
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The sections the import reads; every other one is named in a warning.
const CONVERTED_SECTIONS: &[&str] = &["metadata", "filesystem", "commands", "git", "mcp"];

/// Converts CAVRA compiled-policy JSON into keyward policy TOML, with a
/// warning for each part that has no keyward equivalent. The result is
/// compiled before it is returned, so it always loads.
pub fn import_cavra(json: &str, origin: &str) -> Result<CavraImport, String> {
    let root: Value = serde_json::from_str(json)
        .map_err(|e| format!("{origin}: not a CAVRA compiled policy (JSON): {e}"))?;
    let Value::Object(root) = &root else {
        return Err(format!(
            "{origin}: not a CAVRA compiled policy: expected a JSON object with `metadata`, \
             `filesystem`, `commands`, `git`, `mcp`, ...; got {}",
            kind(&root)
        ));
    };
    let mut src = Source {
        origin,
        root,
        warnings: Vec::new(),
    };
    let meta = |key: &str| {
        root.get("metadata")
            .and_then(|m| m.get(key))
            .and_then(Value::as_str)
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

    let paths = |v: Vec<String>| v.iter().map(|p| path_glob(p)).collect::<Vec<_>>();
    let texts = |v: Vec<String>| v.iter().map(|p| text_glob(p)).collect::<Vec<_>>();
    let exact = |v: Vec<String>| v.iter().map(|p| escape(p)).collect::<Vec<_>>();
    let block_read = paths(src.strings("filesystem", "block_read")?);
    let block_write = paths(src.strings("filesystem", "block_write")?);
    let approve_write = paths(src.strings("filesystem", "require_approval_write")?);
    let cmd_block = texts(src.strings("commands", "block")?);
    let cmd_approve = texts(src.strings("commands", "require_approval")?);
    let cmd_allow = texts(src.strings("commands", "allow")?);
    let mcp_allowed = exact(src.strings("mcp", "allowed_servers")?);
    let mcp_blocked = exact(src.strings("mcp", "blocked_servers")?);
    // CAVRA blocks unknown servers unless told not to.
    let block_unknown = src.flag("mcp", "block_unknown_servers")?.unwrap_or(true);
    if src.flag("git", "block_direct_push_to_protected_branch")? == Some(false) {
        src.warnings.push(format!(
            "{origin}: `git.block_direct_push_to_protected_branch = false` is not converted: \
             CAVRA's runtime blocks a push to main or master whatever it says, and so does the \
             imported policy (remove the rule git.protected_branch.block_direct_push to allow it)"
        ));
    }

    src.warn_rest(
        "filesystem",
        &["block_read", "block_write", "require_approval_write"],
        "keyward reads only block_read, block_write and require_approval_write here",
    )?;
    src.warn_rest(
        "commands",
        // The `*_regex` maps are CAVRA's own compilation of block/allow.
        &[
            "block",
            "allow",
            "require_approval",
            "block_regex",
            "allow_regex",
        ],
        "keyward reads only block, require_approval and allow here",
    )?;
    src.warn_rest(
        "git",
        &["block_direct_push_to_protected_branch"],
        "keyward decides a git operation on its own (branch protection, pull requests, \
         reviewers and attestations are the git host's to enforce)",
    )?;
    src.warn_rest(
        "mcp",
        &[
            "allowed_servers",
            "blocked_servers",
            "block_unknown_servers",
        ],
        "keyward decides MCP calls by server name only",
    )?;
    let others: Vec<String> = root
        .keys()
        .filter(|k| !CONVERTED_SECTIONS.contains(&k.as_str()))
        .cloned()
        .collect();
    for section in others {
        src.warnings.push(format!(
            "{origin}: section `{section}` is not converted: keyward has no equivalent, so none \
             of its settings apply"
        ));
    }

    let mut out = String::new();
    let _ = writeln!(out, "# Imported by `keyward policy import` from {origin}.");
    for warning in &src.warnings {
        let _ = writeln!(out, "# warning: {warning}");
    }
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
    let specs = [
        Spec {
            id: "filesystem.read.block",
            actions: READ,
            matches: Matches::Targets(block_read),
            decision: "block",
            severity: "critical",
            reason: "reading this path is blocked",
        },
        Spec {
            id: "filesystem.write.block",
            actions: WRITE,
            matches: Matches::Targets(block_write),
            decision: "block",
            severity: "critical",
            reason: "writing this path is blocked",
        },
        Spec {
            id: "filesystem.write.require_approval",
            actions: WRITE,
            matches: Matches::Targets(approve_write),
            decision: "require_approval",
            severity: "high",
            reason: "writing this path needs approval",
        },
        Spec {
            id: "filesystem.read.allow",
            actions: READ_ANY,
            matches: Matches::Fallback(true),
            decision: "allow",
            severity: "low",
            reason: "ordinary file",
        },
        Spec {
            id: "filesystem.write.allow",
            actions: WRITE,
            matches: Matches::Fallback(true),
            decision: "allow",
            severity: "low",
            reason: "ordinary file",
        },
        Spec {
            id: "commands.block",
            actions: COMMAND,
            matches: Matches::Targets(cmd_block),
            decision: "block",
            severity: "critical",
            reason: "this command is blocked",
        },
        Spec {
            id: "commands.require_approval",
            actions: COMMAND,
            matches: Matches::Targets(cmd_approve),
            decision: "require_approval",
            severity: "medium",
            reason: "this command needs approval",
        },
        Spec {
            id: "commands.allow",
            actions: COMMAND,
            matches: Matches::Targets(cmd_allow),
            decision: "allow",
            severity: "low",
            reason: "this command is allowed",
        },
        Spec {
            id: "commands.default.require_approval",
            actions: COMMAND,
            matches: Matches::Fallback(true),
            decision: "require_approval",
            severity: "medium",
            reason: "command not on the allow list",
        },
        Spec {
            id: "git.protected_branch.block_direct_push",
            actions: GIT,
            matches: Matches::Push(PROTECTED_PUSH_TARGETS),
            decision: "block",
            severity: "high",
            reason: "direct push to a protected branch; open a pull request",
        },
        Spec {
            id: "git.allow",
            actions: GIT,
            matches: Matches::Fallback(true),
            decision: "allow",
            severity: "low",
            reason: "ordinary git operation",
        },
        Spec {
            id: "mcp.server.trust.block",
            actions: MCP,
            matches: Matches::Servers(mcp_blocked),
            decision: "block",
            severity: "high",
            reason: "this MCP server is blocked",
        },
        Spec {
            id: "mcp.server.trust.allow",
            actions: MCP,
            matches: Matches::Servers(mcp_allowed),
            decision: "allow",
            severity: "low",
            reason: "trusted MCP server",
        },
        Spec {
            id: "mcp.server.trust.block_unknown",
            actions: MCP,
            matches: Matches::Fallback(block_unknown),
            decision: "block",
            severity: "high",
            reason: "MCP server not on the trusted list",
        },
        Spec {
            id: "mcp.server.trust.allow_unknown",
            actions: MCP,
            matches: Matches::Fallback(!block_unknown),
            decision: "allow",
            severity: "low",
            reason: "the CAVRA policy allows MCP servers it does not list",
        },
    ];
    for spec in &specs {
        spec.write(&mut out);
    }
    Policy::from_toml(&out, "imported policy").map_err(|e| format!("{origin}: {e}"))?;
    Ok(CavraImport {
        toml: out,
        warnings: src.warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_keep_cavra_meaning() {
        assert_eq!(path_glob("*.pem"), "**.pem");
        assert_eq!(path_glob("**/secrets.*"), "**/secrets.**");
        assert_eq!(path_glob(".github/workflows/**"), ".github/workflows/**");
        assert_eq!(path_glob("what?.txt"), r"what\?.txt");
        assert_eq!(path_glob(r"C:\keys\*"), r"C:\\keys\\**");
        assert_eq!(text_glob("git push origin main"), "git push origin main");
        assert_eq!(text_glob("terraform apply*"), "terraform apply*");
        assert_eq!(text_glob("rm -rf ?"), r"rm -rf \?");
    }
}
