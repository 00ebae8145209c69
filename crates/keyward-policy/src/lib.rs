//! keyward's policy engine. One engine decides what an agent may do (read
//! a file, run a command, push, call an MCP tool) and where its traffic may
//! go. Policies are TOML, compiled once at load; evaluation does no parsing.
#![forbid(unsafe_code)]

mod argv;
mod cavra;
mod effects;
mod glob;
mod policy;
mod programs;
mod shell;

pub use cavra::{CavraImport, import_cavra, is_cavra_json};
pub use glob::{Glob, Mode, escape};
pub use policy::{
    BUILTIN_PREFIX, GIT_ACTION, KNOWN_ACTIONS, PATH_ACTIONS, Policy, PolicyError, PolicySource,
    RuleInfo, SHELL_ACTION, UNPARSEABLE_RULE_ID, Verdict, builtin_name, canonical_action,
};

/// The name of the built-in pack.
pub const BASELINE_ID: &str = "agent-baseline";

const BASELINE_TOML: &str = include_str!("agent-baseline.toml");

/// The built-in `agent-baseline` pack.
pub fn baseline() -> Policy {
    Policy::from_toml(BASELINE_TOML, "built-in pack agent-baseline")
        .expect("the built-in pack compiles (tested)")
}

/// The built-in pack's source, for `keyward policy show`.
pub fn baseline_toml() -> &'static str {
    BASELINE_TOML
}
