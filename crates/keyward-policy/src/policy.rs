//! Policy files (TOML), compiled once and evaluated without parsing.
//!
//! Precedence: a matching `block` rule wins over `require_approval`, which
//! wins over `allow`; within a tier the first rule in file order wins. Rules
//! marked `fallback = true` are consulted only when no other rule matched
//! (that is how "anything else needs approval" coexists with specific
//! allows), and then the policy's `default`.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use keyward_api::{Decision, EvaluateRequest, Severity};
use serde::Deserialize;

use crate::argv::CommandMatch;
use crate::glob::{Glob, Mode};
use crate::shell::{self, Part, Why};

/// Action types whose targets are paths: `*` stays within a segment.
pub const PATH_ACTIONS: &[&str] = &[
    "read_file",
    "write_file",
    "delete_file",
    "list_directory",
    "http_request",
];

/// A policy that failed to load: which file, rule and field, and why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{origin}: {}{message}", location(.rule_id, .field))]
pub struct PolicyError {
    /// The file (or `built-in pack X`).
    pub origin: String,
    /// The rule's id, when the problem is in a rule.
    pub rule_id: Option<String>,
    /// The field, when known.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

fn location(rule_id: &Option<String>, field: &Option<String>) -> String {
    match (rule_id, field) {
        (Some(r), Some(f)) => format!("rule {r:?}, field {f}: "),
        (Some(r), None) => format!("rule {r:?}: "),
        (None, Some(f)) => format!("field {f}: "),
        (None, None) => String::new(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    policy: Header,
    #[serde(default)]
    rules: Vec<RuleFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    id: String,
    default: Decision,
    #[serde(default)]
    default_rule_id: Option<String>,
    #[serde(default)]
    default_reason: Option<String>,
    #[serde(default)]
    description: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    id: String,
    action: OneOrMany,
    #[serde(default)]
    target: Option<OneOrMany>,
    #[serde(default)]
    operation: Option<OneOrMany>,
    #[serde(default)]
    when: BTreeMap<String, OneOrMany>,
    decision: Decision,
    #[serde(default)]
    severity: Severity,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    approver_group: Option<String>,
    #[serde(default)]
    fallback: bool,
    #[serde(default)]
    shell: bool,
    #[serde(default)]
    command: Option<OneOrMany>,
    #[serde(default)]
    subcommand: Option<OneOrMany>,
    #[serde(default)]
    flags: Option<OneOrMany>,
    #[serde(default)]
    args: Option<OneOrMany>,
    #[serde(default)]
    env: Option<OneOrMany>,
    #[serde(default)]
    input_from: Option<OneOrMany>,
    #[serde(default)]
    runs_download: Option<OneOrMany>,
    #[serde(default)]
    unsafe_program: bool,
}

/// The action whose targets are always shell lines.
pub const SHELL_ACTION: &str = "execute_command";

/// The action type of git operations (`git` is an alias of it).
pub const GIT_ACTION: &str = "git_operation";

/// The name an action type is indexed and matched under: `git` is an
/// alias of `git_operation`, in rules and requests alike.
pub fn canonical_action(action: &str) -> &str {
    if action == "git" { GIT_ACTION } else { action }
}

/// The rule id of a shell line (or a part of one) that cannot be read.
pub const UNPARSEABLE_RULE_ID: &str = "commands.unparseable";

const SHELL_FIELDS_NEED_SHELL_ACTIONS: &str = "command, subcommand, flags, args, env, input_from, \
     runs_download and unsafe_program \
     read shell lines: use action = \"execute_command\", or say shell = true on a rule of this action \
     in the same file";

/// What a decision cites: a rule or the policy default.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleInfo {
    /// Rule id.
    pub id: String,
    /// Decision.
    pub decision: Decision,
    /// Severity.
    pub severity: Severity,
    /// Why.
    pub reason: String,
    /// Who may approve.
    pub approver_group: Option<String>,
}

/// The plain request fields a `when` clause may read.
const WHEN_FIELDS: &[&str] = &[
    "session_id",
    "agent_id",
    "actor",
    "action_type",
    "target",
    "operation",
    "requested_operation",
    "policy_pack",
    "server",
    "tool",
    "capability",
];

/// The action types keyward and the callers it ships send: its proxy
/// (`http_request`), its hooks and CLI, CAVRA clients. A rule naming another
/// action is only reached by a caller of the team's own; `policy check`
/// warns about it, with the name it probably meant.
pub const KNOWN_ACTIONS: &[&str] = &[
    "read_file",
    "write_file",
    "delete_file",
    "list_directory",
    SHELL_ACTION,
    GIT_ACTION,
    "http_request",
    "mcp_tool_call",
];

/// What the `runner_auth.<field>` a `when` clause may read are: how the
/// daemon verified the runner's claims.
const RUNNER_AUTH_FIELDS: &[&str] = &["algorithm", "key_id", "issuer"];

/// The known action a rule's unknown one probably meant: the names other
/// tools use, then the closest in spelling.
fn action_suggestion(action: &str) -> Option<&'static str> {
    let lower = action.to_ascii_lowercase();
    let synonym = match lower.as_str() {
        "exec" | "exec_command" | "execute" | "run_command" | "command" | "shell" | "bash"
        | "shell_command" | "run" | "execute_shell" | "exec_shell" => Some(SHELL_ACTION),
        "read" | "file_read" | "open_file" | "view_file" | "read_files" => Some("read_file"),
        "write" | "edit" | "edit_file" | "file_write" | "create_file" | "modify_file" => {
            Some("write_file")
        }
        "delete" | "remove" | "remove_file" | "rm" | "unlink" | "file_delete" => {
            Some("delete_file")
        }
        "list" | "ls" | "list_dir" | "list_files" | "glob" | "readdir" => Some("list_directory"),
        "http" | "fetch" | "web_fetch" | "webfetch" | "egress" | "network" | "http_get" | "url"
        | "request" => Some("http_request"),
        "mcp" | "tool_call" | "mcp_tool" | "mcp_call" | "tool" => Some("mcp_tool_call"),
        "git_push" | "push" | "vcs" => Some(GIT_ACTION),
        _ => None,
    };
    synonym.or_else(|| keyward_api::did_you_mean(&lower, KNOWN_ACTIONS))
}

/// A request field a `when` clause reads.
#[derive(Debug, Clone)]
enum Field {
    SessionId,
    AgentId,
    Actor,
    ActionType,
    Target,
    Operation,
    PolicyPack,
    Server,
    Tool,
    Capability,
    Context(Box<[String]>),
    Runner(Box<[String]>),
    /// How the runner's claims were verified (`algorithm`, `key_id`,
    /// `issuer`), never the claims themselves: a signer cannot choose it.
    RunnerAuth(Box<[String]>),
}

impl Field {
    fn parse(name: &str) -> Result<Self, String> {
        let path = |rest: &str| -> Box<[String]> { rest.split('.').map(str::to_owned).collect() };
        Ok(match name {
            "session_id" => Field::SessionId,
            "agent_id" => Field::AgentId,
            "actor" => Field::Actor,
            "action_type" => Field::ActionType,
            "target" => Field::Target,
            "operation" | "requested_operation" => Field::Operation,
            "policy_pack" => Field::PolicyPack,
            "server" => Field::Server,
            "tool" => Field::Tool,
            "capability" => Field::Capability,
            _ => {
                if let Some(rest) = name.strip_prefix("context.").filter(|r| !r.is_empty()) {
                    Field::Context(path(rest))
                } else if let Some(rest) = name.strip_prefix("runner.").filter(|r| !r.is_empty()) {
                    Field::Runner(path(rest))
                } else if let Some(rest) =
                    name.strip_prefix("runner_auth.").filter(|r| !r.is_empty())
                {
                    Field::RunnerAuth(path(rest))
                } else {
                    let hint = keyward_api::field_suggestion(name)
                        .filter(|f| WHEN_FIELDS.contains(f))
                        .map(|f| format!(" (did you mean {f:?}?)"))
                        .unwrap_or_default();
                    return Err(format!(
                        "unknown request field {name:?}{hint}: expected session_id, agent_id, actor, action_type, \
                         target, operation, policy_pack, server, tool, capability, context.<key>, runner.<key> \
                         or runner_auth.<algorithm|key_id|issuer>"
                    ));
                }
            }
        })
    }

    fn value<'r>(&self, req: &'r EvaluateRequest) -> Option<Cow<'r, str>> {
        let borrowed = |s: &'r Option<String>| s.as_deref().map(Cow::Borrowed);
        match self {
            Field::SessionId => borrowed(&req.session_id),
            Field::AgentId => borrowed(&req.agent_id),
            Field::Actor => borrowed(&req.actor),
            Field::ActionType => Some(Cow::Borrowed(canonical_action(&req.action_type))),
            Field::Target => borrowed(&req.target),
            Field::Operation => borrowed(&req.requested_operation),
            Field::PolicyPack => borrowed(&req.policy_pack),
            Field::Server => borrowed(&req.server),
            Field::Tool => borrowed(&req.tool),
            Field::Capability => borrowed(&req.capability),
            Field::Context(path) => lookup(&req.context, path),
            // Verified claims only: `runner_auth` as sent proves nothing.
            Field::Runner(path) => lookup(req.verified_runner.as_ref()?, path),
            Field::RunnerAuth(path) => lookup(req.verified_runner_auth.as_ref()?, path),
        }
    }
}

fn lookup<'r>(
    map: &'r serde_json::Map<String, serde_json::Value>,
    path: &[String],
) -> Option<Cow<'r, str>> {
    let (first, rest) = path.split_first()?;
    let mut value = map.get(first)?;
    for key in rest {
        value = value.get(key)?;
    }
    match value {
        serde_json::Value::String(s) => Some(Cow::Borrowed(s)),
        serde_json::Value::Bool(b) => Some(Cow::Owned(b.to_string())),
        serde_json::Value::Number(n) => Some(Cow::Owned(n.to_string())),
        _ => None,
    }
}

#[derive(Debug, Clone)]
struct Rule {
    info: RuleInfo,
    /// 0 block, 1 require_approval, 2 allow, 3 fallback.
    tier: usize,
    /// `None`: any action.
    actions: Option<Box<[String]>>,
    targets: Option<Box<[Glob]>>,
    operations: Option<Box<[String]>>,
    when: Box<[(Field, Box<[Glob]>)]>,
    /// Argument-aware fields, for shell lines.
    command: Option<CommandMatch>,
    /// Its actions' targets are shell lines.
    shell: bool,
}

impl Rule {
    fn matches(&self, req: &EvaluateRequest, target: Option<&str>, mode: Mode) -> bool {
        if self.command.is_some() {
            return false;
        }
        if let Some(targets) = &self.targets {
            let Some(target) = target else { return false };
            if !targets.iter().any(|g| g.matches(target, mode)) {
                return false;
            }
        }
        self.matches_request(req)
    }

    /// One command of a shell line, `text` being its text. An allow rule
    /// never matches a command named by a path: `./ls` may be anything.
    fn matches_command(&self, req: &EvaluateRequest, command: &shell::Command, text: &str) -> bool {
        if command.argv.is_empty() {
            // A line of bare assignments runs nothing: only the variables
            // it sets can matter.
            if !self.command.as_ref().is_some_and(CommandMatch::only_env) {
                return false;
            }
        } else if self.info.decision == Decision::Allow && command.named_by_path() {
            return false;
        }
        if let Some(targets) = &self.targets
            && !targets.iter().any(|g| g.matches(text, Mode::Text))
        {
            return false;
        }
        if let Some(matcher) = &self.command
            && !matcher.matches(command)
        {
            return false;
        }
        self.matches_request(req)
    }

    /// The operation and `when` fields.
    fn matches_request(&self, req: &EvaluateRequest) -> bool {
        if let Some(ops) = &self.operations {
            let Some(op) = req.requested_operation.as_deref() else {
                return false;
            };
            if !ops.iter().any(|o| o == "*" || o.eq_ignore_ascii_case(op)) {
                return false;
            }
        }
        self.when.iter().all(|(field, globs)| {
            field
                .value(req)
                .is_some_and(|v| globs.iter().any(|g| g.matches(&v, Mode::Text)))
        })
    }
}

/// A policy's text as keyward TOML (a CAVRA file already converted) and
/// where it came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PolicySource {
    /// The file (or built-in pack) it was read from.
    pub origin: String,
    /// The policy, as keyward TOML.
    pub toml: String,
}

impl PolicySource {
    /// Reads a policy file, converting a CAVRA compiled policy; with what
    /// the conversion left out.
    pub fn read(path: &Path) -> Result<(Self, Vec<String>), PolicyError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError {
            origin: origin.clone(),
            rule_id: None,
            field: None,
            message: format!("cannot read: {e}"),
        })?;
        if !crate::cavra::is_cavra_json(path, &text) {
            return Ok((Self { origin, toml: text }, Vec::new()));
        }
        let import = crate::import_cavra(&text, &origin).map_err(|message| PolicyError {
            origin: origin.clone(),
            rule_id: None,
            field: None,
            // The message already names the file.
            message: message
                .strip_prefix(&format!("{origin}: "))
                .unwrap_or(&message)
                .to_owned(),
        })?;
        Ok((
            Self {
                origin,
                toml: import.toml,
            },
            import.warnings,
        ))
    }

    /// Reads a `policy.files` entry: `builtin:<pack>` names a built-in
    /// pack (its text as this keyward ships it, so a policy that lists it
    /// keeps the pack's updates), anything else is a file
    /// ([`PolicySource::read`]).
    pub fn resolve(entry: &Path) -> Result<(Self, Vec<String>), PolicyError> {
        match builtin_name(entry) {
            Some(crate::BASELINE_ID) => Ok((Self::baseline(), Vec::new())),
            Some(name) => Err(PolicyError {
                origin: entry.display().to_string(),
                rule_id: None,
                field: None,
                message: format!(
                    "no built-in pack {name:?}; the built-in packs are: {}{}",
                    crate::BASELINE_ID,
                    keyward_api::did_you_mean(name, &[crate::BASELINE_ID])
                        .map(|p| format!(" (did you mean \"{BUILTIN_PREFIX}{p}\"?)"))
                        .unwrap_or_default()
                ),
            }),
            None => Self::read(entry),
        }
    }

    /// The built-in pack's source.
    pub fn baseline() -> Self {
        Self {
            origin: "built-in pack agent-baseline".to_owned(),
            toml: crate::baseline_toml().to_owned(),
        }
    }
}

/// How a `policy.files` entry names a built-in pack: `builtin:agent-baseline`.
pub const BUILTIN_PREFIX: &str = "builtin:";

/// The pack a `policy.files` entry names (`builtin:<pack>`), if it names
/// one rather than a file.
pub fn builtin_name(entry: &Path) -> Option<&str> {
    entry.to_str()?.strip_prefix(BUILTIN_PREFIX)
}

/// A compiled policy.
#[derive(Debug, Clone)]
pub struct Policy {
    id: String,
    description: Option<String>,
    default: RuleInfo,
    /// In file order.
    rules: Vec<Rule>,
    /// Per action type, the indexes of the rules that can match it, per
    /// tier (block, require_approval, allow, fallback), in file order.
    index: HashMap<String, Tiers>,
    /// The same for action types no rule names (only `*` rules).
    other: Tiers,
    /// Action types whose targets are shell lines.
    shell_actions: HashSet<String>,
    /// What a line that cannot be read gets, per [`Why`].
    unparseable: Box<[RuleInfo]>,
    /// What loading left out (parts of a CAVRA policy with no keyward
    /// equivalent), for the loader to show.
    warnings: Vec<String>,
}

type Tiers = [Box<[u32]>; 4];

/// The outcome of [`Policy::evaluate`].
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict<'p> {
    /// The rule that decided (or the default).
    pub rule: &'p RuleInfo,
    /// True when a non-fallback rule matched (the policy said something
    /// specific about this request).
    pub explicit: bool,
    /// For a shell line: the part that decided (a command as the shell
    /// runs it, `> file` for a redirection, or what could not be read).
    pub matched_command: Option<String>,
}

impl Verdict<'_> {
    /// The decision.
    pub fn decision(&self) -> Decision {
        self.rule.decision
    }
}

impl Policy {
    /// Compiles the TOML `text`; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, PolicyError> {
        let err = |rule_id: Option<&str>, field: Option<&str>, message: String| PolicyError {
            origin: origin.to_owned(),
            rule_id: rule_id.map(str::to_owned),
            field: field.map(str::to_owned),
            message,
        };
        let file: PolicyFile = toml::from_str(text).map_err(|e| {
            // Name the rule when the error sits inside [[rules]].
            let rule_id = e.span().and_then(|span| rule_id_at(text, span.start));
            err(
                rule_id.as_deref(),
                None,
                e.message().to_owned() + &at_line(text, e.span()),
            )
        })?;
        if file.policy.id.trim().is_empty() {
            return Err(err(None, Some("policy.id"), "must not be empty".into()));
        }
        let default_id = file
            .policy
            .default_rule_id
            .unwrap_or_else(|| format!("{}.default", file.policy.id));
        let default = RuleInfo {
            id: default_id,
            decision: file.policy.default,
            severity: Severity::Low,
            reason: file
                .policy
                .default_reason
                .unwrap_or_else(|| "no rule matched: the policy default applies".to_owned()),
            approver_group: None,
        };
        let mut policy = Policy {
            id: file.policy.id,
            description: file.policy.description,
            default,
            rules: Vec::new(),
            index: HashMap::new(),
            other: Default::default(),
            shell_actions: HashSet::new(),
            unparseable: unparseable_rules(),
            warnings: Vec::new(),
        };
        let mut seen = HashSet::new();
        for raw in file.rules {
            let id = raw.id.clone();
            if id.trim().is_empty() {
                return Err(err(None, Some("id"), "a rule needs a non-empty id".into()));
            }
            if !seen.insert(id.clone()) {
                return Err(err(Some(&id), Some("id"), "duplicate rule id".into()));
            }
            let rule =
                compile_rule(raw).map_err(|(field, msg)| err(Some(&id), Some(field), msg))?;
            policy.rules.push(rule);
        }
        policy.build_index();
        policy.check_shell_fields(origin)?;
        policy.warnings = policy.lint(origin);
        Ok(policy)
    }

    /// What compiles but can never fire for the callers keyward knows: a
    /// rule naming an action no caller sends (with the one it probably
    /// meant), a `when` on a field no request of its actions carries.
    fn lint(&self, origin: &str) -> Vec<String> {
        let mut warnings = Vec::new();
        for rule in &self.rules {
            let id = &rule.info.id;
            let actions = rule.actions.as_deref().unwrap_or_default();
            for action in actions {
                if KNOWN_ACTIONS.contains(&action.as_str()) {
                    continue;
                }
                let hint = action_suggestion(action)
                    .map(|a| format!("did you mean {a:?}? "))
                    .unwrap_or_default();
                warnings.push(format!(
                    "{origin}: rule {id:?}: action {action:?} is not an action_type keyward or its \
                     callers send ({}); {hint}the rule fires only for a caller of your own that sends \
                     {action:?}",
                    KNOWN_ACTIONS.join(", ")
                ));
            }
            for (field, _) in rule.when.iter() {
                match field {
                    Field::RunnerAuth(path)
                        if path.len() != 1 || !RUNNER_AUTH_FIELDS.contains(&path[0].as_str()) =>
                    {
                        let name = path.join(".");
                        let hint = keyward_api::did_you_mean(&name, RUNNER_AUTH_FIELDS)
                            .map(|f| format!("did you mean \"runner_auth.{f}\"? "))
                            .unwrap_or_default();
                        warnings.push(format!(
                            "{origin}: rule {id:?}: when field \"runner_auth.{name}\" is on no \
                             request: the daemon sets only runner_auth.algorithm, runner_auth.key_id \
                             and runner_auth.issuer; {hint}(the claims themselves are runner.<claim>)"
                        ));
                    }
                    Field::Server | Field::Tool
                        if !actions.is_empty()
                            && actions.iter().all(|a| {
                                KNOWN_ACTIONS.contains(&a.as_str()) && a != "mcp_tool_call"
                            }) =>
                    {
                        let name = if matches!(field, Field::Server) {
                            "server"
                        } else {
                            "tool"
                        };
                        warnings.push(format!(
                            "{origin}: rule {id:?}: when field {name:?} is sent only with \
                             mcp_tool_call requests, and this rule is for {}: it never matches \
                             what keyward's callers send",
                            actions.join(", ")
                        ));
                    }
                    _ => {}
                }
            }
        }
        warnings
    }

    /// Argument-aware fields only make sense on actions read as shell lines.
    fn check_shell_fields(&self, origin: &str) -> Result<(), PolicyError> {
        let misplaced = self.rules.iter().find(|r| {
            r.command.is_some()
                && r.actions
                    .iter()
                    .flatten()
                    .any(|a| !self.shell_actions.contains(a))
        });
        match misplaced {
            None => Ok(()),
            Some(rule) => Err(PolicyError {
                origin: origin.to_owned(),
                rule_id: Some(rule.info.id.clone()),
                field: Some("action".into()),
                message: SHELL_FIELDS_NEED_SHELL_ACTIONS.into(),
            }),
        }
    }

    /// Loads and compiles a policy file: keyward TOML, or a CAVRA compiled
    /// policy (JSON, see [`crate::is_cavra_json`]) converted as `keyward
    /// policy import` converts it, its warnings kept in [`Policy::warnings`].
    pub fn from_file(path: &Path) -> Result<Self, PolicyError> {
        let (source, mut warnings) = PolicySource::resolve(path)?;
        let mut policy = Self::from_toml(&source.toml, &source.origin)?;
        warnings.append(&mut policy.warnings);
        policy.warnings = warnings;
        Ok(policy)
    }

    /// What loading left out or found suspicious: one line for each part
    /// of a CAVRA policy that has no keyward equivalent, and for each rule
    /// that can never fire for the callers keyward knows (an action no
    /// caller sends, a `when` field no request of its actions carries).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Loads several files as one policy: rules in file order (earlier
    /// files first within each tier); the first file's default applies; the
    /// id joins the files' ids with `+`. An entry `builtin:agent-baseline`
    /// is the built-in pack ([`PolicySource::resolve`]).
    pub fn from_files(paths: &[impl AsRef<Path>]) -> Result<Self, PolicyError> {
        Ok(Self::from_files_with_sources(paths)?.0)
    }

    /// [`Policy::from_files`], with the text it was compiled from: what a
    /// run keeps so that its policy is the same after the files change.
    pub fn from_files_with_sources(
        paths: &[impl AsRef<Path>],
    ) -> Result<(Self, Vec<PolicySource>), PolicyError> {
        let mut sources = Vec::new();
        let mut warnings = Vec::new();
        for path in paths {
            let (source, mut more) = PolicySource::resolve(path.as_ref())?;
            sources.push(source);
            warnings.append(&mut more);
        }
        let mut policy = Self::from_sources(&sources)?;
        warnings.append(&mut policy.warnings);
        policy.warnings = warnings;
        Ok((policy, sources))
    }

    /// Compiles policy texts as one policy, as [`Policy::from_files`] does
    /// the files they were read from.
    pub fn from_sources(sources: &[PolicySource]) -> Result<Self, PolicyError> {
        let mut merged: Option<Policy> = None;
        for source in sources {
            let next = Self::from_toml(&source.toml, &source.origin)?;
            merged = Some(match merged {
                None => next,
                Some(mut acc) => {
                    let ids: HashSet<&str> = acc.rules().map(|r| r.id.as_str()).collect();
                    if let Some(dup) = next.rules().find(|r| ids.contains(r.id.as_str())) {
                        return Err(PolicyError {
                            origin: source.origin.clone(),
                            rule_id: Some(dup.id.clone()),
                            field: Some("id".into()),
                            message: "rule id already defined by an earlier policy file".into(),
                        });
                    }
                    acc.id = format!("{}+{}", acc.id, next.id);
                    acc.rules.extend(next.rules);
                    acc.warnings.extend(next.warnings);
                    acc.build_index();
                    acc
                }
            });
        }
        merged.ok_or_else(|| PolicyError {
            origin: "policy.files".into(),
            rule_id: None,
            field: None,
            message: "no policy file given".into(),
        })
    }

    fn build_index(&mut self) {
        let tiers_for = |action: Option<&str>| -> Tiers {
            std::array::from_fn(|tier| {
                self.rules
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.tier == tier)
                    .filter(|(_, r)| match (&r.actions, action) {
                        (None, _) => true,
                        (Some(list), Some(a)) => list.iter().any(|x| x == a),
                        (Some(_), None) => false,
                    })
                    .map(|(i, _)| i as u32)
                    .collect()
            })
        };
        let names: HashSet<&str> = self
            .rules
            .iter()
            .filter_map(|r| r.actions.as_deref())
            .flatten()
            .map(String::as_str)
            .collect();
        self.index = names
            .into_iter()
            .map(|a| (a.to_owned(), tiers_for(Some(a))))
            .collect();
        self.other = tiers_for(None);
        self.shell_actions = std::iter::once(SHELL_ACTION.to_owned())
            .chain(
                self.rules
                    .iter()
                    .filter(|r| r.shell)
                    .filter_map(|r| r.actions.as_deref())
                    .flatten()
                    .cloned(),
            )
            .collect();
    }

    /// Whether `action`'s targets are read as shell lines
    /// (`execute_command`, and the actions a rule marks `shell = true`).
    pub fn reads_shell_lines(&self, action: &str) -> bool {
        self.shell_actions.contains(canonical_action(action.trim()))
    }

    /// The policy id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The description, if any.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// The default that applies when no rule matches.
    pub fn default_rule(&self) -> &RuleInfo {
        &self.default
    }

    /// Every rule, in precedence order.
    pub fn rules(&self) -> impl Iterator<Item = &RuleInfo> {
        (0..4).flat_map(move |tier| {
            self.rules
                .iter()
                .filter(move |r| r.tier == tier)
                .map(|r| &r.info)
        })
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether the policy has no rules (only its default).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decides `req`. A shell line is decided on what it runs: each of its
    /// parts on its own, and the line gets the most restrictive answer.
    pub fn evaluate(&self, req: &EvaluateRequest) -> Verdict<'_> {
        let action = canonical_action(&req.action_type);
        if self.shell_actions.contains(action) {
            return self.evaluate_line(action, req);
        }
        self.evaluate_as(action, req.target.as_deref(), req)
    }

    fn tiers(&self, action: &str) -> &Tiers {
        self.index.get(action).unwrap_or(&self.other)
    }

    /// Decides `target` as an `action` (the other fields from `req`).
    fn evaluate_as(
        &self,
        action: &str,
        target: Option<&str>,
        req: &EvaluateRequest,
    ) -> Verdict<'_> {
        let mode = if PATH_ACTIONS.contains(&action) {
            Mode::Path
        } else {
            Mode::Text
        };
        let target = target.map(|t| match action {
            "http_request" => url_target(t).map_or_else(|| normalize_target(t, mode), Cow::Owned),
            _ => normalize_target(t, mode),
        });
        let target = target.as_deref();
        for (tier, candidates) in self.tiers(action).iter().enumerate() {
            let hit = candidates
                .iter()
                .map(|&i| &self.rules[i as usize])
                .find(|r| r.matches(req, target, mode));
            if let Some(rule) = hit {
                return Verdict {
                    rule: &rule.info,
                    explicit: tier < 3,
                    matched_command: None,
                };
            }
        }
        Verdict {
            rule: &self.default,
            explicit: false,
            matched_command: None,
        }
    }

    /// The first block, then require_approval, rule of `action` whose
    /// targets a path the shell glob `pattern` expands to can match.
    fn glob_overlap(
        &self,
        action: &str,
        pattern: &str,
        req: &EvaluateRequest,
    ) -> Option<&RuleInfo> {
        let pattern = normalize_target(pattern, Mode::Path);
        let tiers = self.tiers(action);
        tiers[..2].iter().find_map(|candidates| {
            candidates
                .iter()
                .map(|&i| &self.rules[i as usize])
                .find(|r| {
                    r.command.is_none()
                        && r.targets
                            .as_ref()
                            .is_some_and(|t| t.iter().any(|g| g.overlaps_shell_glob(&pattern)))
                        && r.matches_request(req)
                })
                .map(|r| &r.info)
        })
    }

    fn evaluate_line<'p>(&'p self, action: &str, req: &EvaluateRequest) -> Verdict<'p> {
        let line = req.target.as_deref().unwrap_or_default();
        let tiers = self.tiers(action);
        let rules = |tier: usize| tiers[tier].iter().map(|&i| &self.rules[i as usize]);
        let mut decided: Option<Verdict<'_>> = None;
        // The strictest part decides; among equals the first one a rule
        // names rather than a fallback or the default. The deciding part's
        // text is only written out once it decides.
        let mut consider = |rule: &'p RuleInfo, explicit: bool, matched: &dyn Fn() -> String| {
            let rank = (strictness(rule.decision), explicit);
            if decided
                .as_ref()
                .is_none_or(|d| rank > (strictness(d.decision()), d.explicit))
            {
                decided = Some(Verdict {
                    rule,
                    explicit,
                    matched_command: Some(matched()),
                });
            }
        };
        for part in shell::parse(line) {
            match part {
                Part::Command(command) => {
                    let text = command.text();
                    let hit = (0..4).find_map(|tier| {
                        rules(tier)
                            .find(|r| r.matches_command(req, &command, &text))
                            .map(|r| (tier, r))
                    });
                    match hit {
                        Some((tier, rule)) => consider(&rule.info, tier < 3, &|| command.shown()),
                        // Bare assignments no rule speaks of run nothing.
                        None if command.argv.is_empty() => {}
                        None => consider(&self.default, false, &|| command.shown()),
                    }
                    // The files it reads and writes by its operands, decided
                    // as the file requests they amount to.
                    for file in crate::effects::files(&command) {
                        let Some(path) = file.path else {
                            let why = Why::DynamicFile;
                            consider(&self.unparseable[why.index()], true, &|| command.shown());
                            continue;
                        };
                        let action = file.access.action();
                        let sign = file.access.sign();
                        // A brace pattern is each of its words
                        // (`/root/.{aws,x}/credentials`).
                        let forms = if file.pattern && path.contains('{') {
                            crate::argv::braces(&path, 0)
                        } else {
                            vec![path.clone()]
                        };
                        for form in &forms {
                            let verdict = self.evaluate_as(action, Some(form), req);
                            consider(verdict.rule, verdict.explicit, &|| {
                                format!("{} ({sign} {form})", command.shown())
                            });
                            // A glob is decided as the protected paths it
                            // can name (see `Glob::overlaps_shell_glob`).
                            if file.pattern
                                && let Some(rule) = self.glob_overlap(action, form, req)
                            {
                                consider(rule, true, &|| {
                                    format!(
                                        "{} ({sign} {form}, a glob that can name one)",
                                        command.shown()
                                    )
                                });
                            }
                        }
                        // A recursive reader of a directory reads the
                        // credential files a home holds inside it.
                        for form in forms.iter().filter(|_| file.recursive) {
                            for inner in crate::effects::credentials_inside(form) {
                                let verdict = self.evaluate_as("read_file", Some(&inner), req);
                                if verdict.decision() != Decision::Allow {
                                    consider(verdict.rule, verdict.explicit, &|| {
                                        format!("{} (< {inner}, inside {form})", command.shown())
                                    });
                                }
                            }
                        }
                    }
                }
                Part::File { write, path } => {
                    let (action, sign) = if write {
                        ("write_file", ">")
                    } else {
                        ("read_file", "<")
                    };
                    let verdict = self.evaluate_as(action, Some(&path), req);
                    consider(verdict.rule, verdict.explicit, &|| format!("{sign} {path}"));
                }
                Part::Unparseable { why, text } => {
                    consider(&self.unparseable[why.index()], true, &|| text.clone());
                }
            }
        }
        // Target globs may span operators (`*| sh*`): matched against the
        // whole line they can make it stricter, never allow it.
        let whole = normalize_target(line, Mode::Text);
        let spanning = (0..2).find_map(|tier| {
            rules(tier).find(|r| r.targets.is_some() && r.matches(req, Some(&whole), Mode::Text))
        });
        if let Some(rule) = spanning {
            consider(&rule.info, true, &|| whole.clone().into_owned());
        }
        // A line that runs nothing (empty, comments, bare assignments) is
        // never allowed: a fallback without fields or the default decides.
        decided.unwrap_or_else(|| {
            let fallback = rules(3)
                .find(|r| r.targets.is_none() && r.command.is_none() && r.matches_request(req));
            Verdict {
                rule: fallback.map_or(&self.default, |r| &r.info),
                explicit: false,
                matched_command: None,
            }
        })
    }
}

/// Block over require_approval over allow.
fn strictness(decision: Decision) -> u8 {
    match decision {
        Decision::Allow => 0,
        Decision::RequireApproval => 1,
        Decision::Block => 2,
    }
}

/// The rule a line that cannot be read gets, one per reason.
fn unparseable_rules() -> Box<[RuleInfo]> {
    Why::ALL
        .iter()
        .map(|why| RuleInfo {
            id: UNPARSEABLE_RULE_ID.to_owned(),
            decision: Decision::RequireApproval,
            severity: Severity::High,
            reason: format!(
                "the command line holds {why}, so keyward cannot see every command it runs; a person decides"
            ),
            approver_group: None,
        })
        .collect()
}

/// A target written as a URL (`http://user@Host:80/p?q`) as the
/// `host[:port]/path` form `http_request` rules match: the scheme, user
/// information, query and fragment dropped, the host lower-cased, the
/// scheme's default port left out, and `/` for an empty path.
fn url_target(target: &str) -> Option<String> {
    let (scheme, rest) = target.trim().split_once("://")?;
    if scheme.is_empty()
        || !scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
    {
        return None;
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let path = rest[end..].split(['?', '#']).next().unwrap_or_default();
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" | "ws" => ":80",
        "https" | "wss" => ":443",
        _ => "",
    };
    let host_port = host_port.to_ascii_lowercase();
    let host_port = match host_port.strip_suffix(default_port) {
        Some(host) if !default_port.is_empty() && !host.ends_with(':') => host.to_owned(),
        _ => host_port,
    };
    let path = if path.is_empty() { "/" } else { path };
    Some(normalize_target(&format!("{host_port}{path}"), Mode::Path).into_owned())
}

/// Commands: surrounding whitespace trimmed and runs of whitespace made one
/// space, so `terraform   destroy` cannot slip past `terraform destroy*`.
/// Paths: a leading `./` and repeated `/` removed.
fn normalize_target(target: &str, mode: Mode) -> Cow<'_, str> {
    match mode {
        Mode::Text => {
            let trimmed = target.trim();
            let messy = trimmed
                .as_bytes()
                .windows(2)
                .any(|w| w[0].is_ascii_whitespace() && w[1].is_ascii_whitespace())
                || trimmed
                    .bytes()
                    .any(|b| b.is_ascii_whitespace() && b != b' ');
            if messy {
                Cow::Owned(
                    trimmed
                        .split_ascii_whitespace()
                        .collect::<Vec<_>>()
                        .join(" "),
                )
            } else {
                Cow::Borrowed(trimmed)
            }
        }
        Mode::Path => {
            let mut t = target;
            while let Some(rest) = t.strip_prefix("./") {
                t = rest;
            }
            if t.contains("//") || t.contains("/./") {
                let absolute = t.starts_with('/');
                let joined = t
                    .split('/')
                    .filter(|s| !s.is_empty() && *s != ".")
                    .collect::<Vec<_>>()
                    .join("/");
                let trailing = if t.ends_with('/') { "/" } else { "" };
                Cow::Owned(format!(
                    "{}{joined}{trailing}",
                    if absolute { "/" } else { "" }
                ))
            } else {
                Cow::Borrowed(t)
            }
        }
    }
}

fn compile_rule(raw: RuleFile) -> Result<Rule, (&'static str, String)> {
    let command = compile_command_fields(&raw)?;
    let actions = raw.action.into_vec();
    if actions.is_empty() {
        return Err(("action", "name at least one action type, or \"*\"".into()));
    }
    if actions.iter().any(|a| a.trim().is_empty()) {
        return Err(("action", "action names must not be empty".into()));
    }
    let any_action = actions.iter().any(|a| a == "*");
    let actions: Vec<String> = actions
        .into_iter()
        .map(|a| canonical_action(&a).to_owned())
        .collect();
    if raw.shell && any_action {
        return Err((
            "shell",
            "name the action types whose targets are shell lines, not \"*\"".into(),
        ));
    }
    if command.is_some() && any_action {
        return Err(("action", SHELL_FIELDS_NEED_SHELL_ACTIONS.into()));
    }
    let actions = (!any_action).then(|| actions.into_boxed_slice());
    let globs =
        |field: &'static str, list: Vec<String>| -> Result<Box<[Glob]>, (&'static str, String)> {
            if list.is_empty() {
                return Err((
                    field,
                    "an empty list matches nothing; remove the field to match anything".into(),
                ));
            }
            list.iter()
                .map(|p| Glob::new(p).map_err(|e| (field, format!("{p:?}: {e}"))))
                .collect()
        };
    let targets = raw
        .target
        .map(|t| globs("target", t.into_vec()))
        .transpose()?;
    let operations = raw
        .operation
        .map(|o| {
            let ops = o.into_vec();
            if ops.is_empty() || ops.iter().any(|o| o.trim().is_empty()) {
                Err(("operation", "operations must be non-empty names".to_owned()))
            } else {
                Ok(ops.into_boxed_slice())
            }
        })
        .transpose()?;
    let mut when = Vec::new();
    for (name, patterns) in raw.when {
        let field = Field::parse(&name).map_err(|e| ("when", e))?;
        when.push((field, globs("when", patterns.into_vec())?));
    }
    if raw.approver_group.is_some() && raw.decision != Decision::RequireApproval {
        return Err((
            "approver_group",
            "only a require_approval rule has approvers".into(),
        ));
    }
    let reason = raw
        .reason
        .unwrap_or_else(|| format!("matched rule {}", raw.id));
    let tier = match (raw.fallback, raw.decision) {
        (true, _) => 3,
        (false, Decision::Block) => 0,
        (false, Decision::RequireApproval) => 1,
        (false, Decision::Allow) => 2,
    };
    Ok(Rule {
        tier,
        info: RuleInfo {
            id: raw.id,
            decision: raw.decision,
            severity: raw.severity,
            reason,
            approver_group: raw.approver_group,
        },
        actions,
        targets,
        operations,
        when: when.into_boxed_slice(),
        command,
        shell: raw.shell,
    })
}

/// The argument-aware fields, if any is given.
fn compile_command_fields(raw: &RuleFile) -> Result<Option<CommandMatch>, (&'static str, String)> {
    fn list(
        field: &'static str,
        value: &Option<OneOrMany>,
    ) -> Result<Option<Vec<String>>, (&'static str, String)> {
        let Some(value) = value else { return Ok(None) };
        let items = match value {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        };
        if items.is_empty() {
            return Err((
                field,
                "an empty list matches nothing; remove the field to match anything".into(),
            ));
        }
        if items.iter().any(|i| i.trim().is_empty()) {
            return Err((field, "entries must not be empty".into()));
        }
        Ok(Some(items))
    }
    fn globs(field: &'static str, items: &[String]) -> Result<Box<[Glob]>, (&'static str, String)> {
        items
            .iter()
            .map(|p| Glob::new(p).map_err(|e| (field, format!("{p:?}: {e}"))))
            .collect()
    }
    let names = list("command", &raw.command)?;
    let subcommands = list("subcommand", &raw.subcommand)?;
    let flags = list("flags", &raw.flags)?;
    let args = list("args", &raw.args)?;
    let env = list("env", &raw.env)?;
    let inputs = list("input_from", &raw.input_from)?;
    let runs_download = list("runs_download", &raw.runs_download)?;
    if let Some(bad) = flags
        .iter()
        .flatten()
        .find(|f| !f.starts_with('-') || f.len() < 2)
    {
        return Err((
            "flags",
            format!("{bad:?} is not an option: write it with its dashes (\"-f\", \"--force\")"),
        ));
    }
    if names.is_none() && subcommands.is_some() {
        return Err((
            "subcommand",
            "a subcommand belongs to a command: add command = \"...\"".into(),
        ));
    }
    let names = names.as_deref().map(|n| globs("command", n)).transpose()?;
    let matcher = CommandMatch {
        first_bytes: CommandMatch::first_bytes_of(names.as_deref()),
        names,
        subcommands: subcommands
            .map(|subs| {
                subs.iter()
                    .map(|s| {
                        globs(
                            "subcommand",
                            &s.split_whitespace().map(str::to_owned).collect::<Vec<_>>(),
                        )
                    })
                    .collect::<Result<Box<[_]>, _>>()
            })
            .transpose()?,
        flags: flags.map(Vec::into_boxed_slice),
        args: args.as_deref().map(|a| globs("args", a)).transpose()?,
        env: env.as_deref().map(|e| globs("env", e)).transpose()?,
        inputs: inputs
            .as_deref()
            .map(|i| globs("input_from", i))
            .transpose()?,
        runs_download: runs_download
            .as_deref()
            .map(|i| globs("runs_download", i))
            .transpose()?,
        unsafe_program: raw.unsafe_program,
    };
    let any = matcher.names.is_some()
        || matcher.subcommands.is_some()
        || matcher.flags.is_some()
        || matcher.args.is_some()
        || matcher.env.is_some()
        || matcher.inputs.is_some()
        || matcher.runs_download.is_some()
        || matcher.unsafe_program;
    Ok(any.then_some(matcher))
}

fn at_line(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    span.map(|s| {
        let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
        format!(" (line {line})")
    })
    .unwrap_or_default()
}

/// The `id` of the `[[rules]]` table that contains byte `offset`, if any.
fn rule_id_at(text: &str, offset: usize) -> Option<String> {
    let before = &text[..offset.min(text.len())];
    let start = before.rfind("[[rules]]")?;
    if before[start..].contains("\n[policy]") {
        return None;
    }
    let table = &text[start..];
    let end = table[9..].find("\n[").map_or(table.len(), |e| e + 9);
    table[..end].lines().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        (key.trim() == "id").then(|| value.trim().trim_matches('"').to_owned())
    })
}
