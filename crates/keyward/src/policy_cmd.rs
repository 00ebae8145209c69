//! `keyward eval` and `keyward policy ...`.

use std::io::Read as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use hyper::Method;
use keyward_api::{Decision, DecisionResponse, EvaluateRequest};
use keyward_policy::Policy;
use serde::Deserialize;

use crate::cli::{EvalArgs, PolicyCommand};
use crate::context::Context;
use crate::exit;

/// `keyward eval`'s exit status for a decision.
fn decision_status(decision: Decision) -> u8 {
    match decision {
        Decision::Allow => 0,
        Decision::Block => 2,
        Decision::RequireApproval => 3,
    }
}

fn read_input(path: &Path) -> Result<String> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read the request from stdin")?;
        Ok(text)
    } else {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
    }
}

pub async fn eval(ctx: &Context, args: &EvalArgs) -> Result<ExitCode> {
    let mut req = match &args.input {
        Some(path) => {
            let text = read_input(path)?;
            EvaluateRequest::from_json(text.as_bytes())
                .map_err(|e| anyhow::anyhow!("{}: not an EvaluateRequest: {e}", path.display()))?
        }
        None => {
            let req = EvaluateRequest {
                action_type: args.action.clone().unwrap_or_default(),
                target: args.target.clone(),
                requested_operation: args.operation.clone(),
                ..EvaluateRequest::default()
            };
            req.check()
                .map_err(|e| anyhow::anyhow!("{e} (give it with --target)"))?;
            req
        }
    };
    if let Some(auth) = crate::runner_auth::load(&args.runner_auth)? {
        req.runner_auth = auth;
    }
    let resp: DecisionResponse = match ctx.remote() {
        Some(remote) => remote.connect().await?.evaluate(&req).await?,
        None => {
            ctx.ensure_daemon()
                .await?
                .call(Method::POST, "/v1/evaluate", Some(&req))
                .await?
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&resp)?);
    } else {
        let approver = resp
            .approver_group
            .as_deref()
            .map(|g| format!(" (approver: {g})"))
            .unwrap_or_default();
        // Which command of a shell line decided, when it is not the whole line.
        let part = resp
            .matched_command
            .as_deref()
            .filter(|m| Some(*m) != resp.target.as_deref().map(str::trim))
            .map(|m| format!(" (by: {m})"))
            .unwrap_or_default();
        let line = format!(
            "{}: {} {}{}{part} — rule {} of {}: {}{approver} [{}]",
            resp.decision,
            resp.action_type,
            resp.target.as_deref().unwrap_or("-"),
            resp.requested_operation
                .as_deref()
                .map(|o| format!(" ({o})"))
                .unwrap_or_default(),
            resp.rule_id,
            resp.policy_id,
            resp.reason,
            resp.evidence_refs.join(", ")
        );
        // The answer may come from a remote server: none of its words may
        // drive the terminal.
        println!("{}", keyward_api::printable(&line));
    }
    Ok(ExitCode::from(decision_status(resp.decision)))
}

/// A policy file (keyward TOML or a CAVRA compiled policy, whose parts
/// without a keyward equivalent are named on stderr), or the built-in pack
/// by name.
fn load(file: &Path) -> Result<Policy> {
    if file == Path::new(keyward_policy::BASELINE_ID) && !file.exists() {
        return Ok(keyward_policy::baseline());
    }
    // A file, or `builtin:agent-baseline` as policy.files names the pack.
    let policy =
        Policy::from_file(file).map_err(|e| anyhow::Error::new(PolicyInvalid(e.to_string())))?;
    warn_all(policy.warnings());
    Ok(policy)
}

/// What a conversion left out, one `warning:` line each on stderr.
fn warn_all(warnings: &[String]) {
    for warning in warnings {
        eprintln!("keyward: warning: {warning}");
    }
}

/// A policy that does not compile: exit 64.
#[derive(Debug, thiserror::Error)]
#[error("invalid policy: {0}")]
pub struct PolicyInvalid(pub String);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    #[serde(default)]
    name: Option<String>,
    /// Read as the daemon reads a request (unknown fields and missing
    /// targets refused).
    request: serde_json::Value,
    decision: Decision,
    #[serde(default)]
    rule_id: Option<String>,
    /// For a shell line: the part expected to decide.
    #[serde(default)]
    matched_command: Option<String>,
    /// Runner claims taken as verified (the daemon would have checked
    /// them), for rules on `runner.*`.
    #[serde(default)]
    runner: Option<serde_json::Map<String, serde_json::Value>>,
}

pub fn policy(cmd: &PolicyCommand) -> Result<ExitCode> {
    match cmd {
        PolicyCommand::Check { file, json } => {
            let policy = load(file)?;
            if json.json {
                println!(
                    "{}",
                    serde_json::json!({"valid": true, "file": file, "policy_id": policy.id(), "rules": policy.len(), "warnings": policy.warnings()})
                );
            } else {
                let warnings = match policy.warnings().len() {
                    0 => String::new(),
                    1 => ", 1 warning (above)".to_owned(),
                    n => format!(", {n} warnings (above)"),
                };
                println!(
                    "{}: valid policy {:?}, {} rules, default {} ({}){warnings}",
                    file.display(),
                    policy.id(),
                    policy.len(),
                    policy.default_rule().decision,
                    policy.default_rule().id
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Test { file, cases, json } => test(file, cases, json.json),
        PolicyCommand::Import { file, output } => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let import = keyward_policy::import_cavra(&text, &file.display().to_string())
                .map_err(|e| anyhow::Error::new(PolicyInvalid(e)))?;
            warn_all(&import.warnings);
            let toml = import.toml;
            match output {
                Some(out) => {
                    write_new(out, toml.as_bytes())?;
                    eprintln!("keyward: wrote {}", out.display());
                }
                None => print!("{toml}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Show => {
            print!("{}", keyward_policy::baseline_toml());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| {
            format!(
                "cannot create {} (keyward never overwrites it)",
                path.display()
            )
        })?;
    file.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}

fn test(file: &Path, cases_path: &Path, json: bool) -> Result<ExitCode> {
    let policy = load(file)?;
    let text = std::fs::read_to_string(cases_path)
        .with_context(|| format!("cannot read {}", cases_path.display()))?;
    let cases: Vec<Case> = serde_json::from_str(&text).map_err(|e| {
        anyhow::Error::new(PolicyInvalid(format!(
            "{}: expected a JSON array of {{\"name\", \"request\", \"decision\", \"rule_id\", \"matched_command\"}}: {e}",
            cases_path.display()
        )))
    })?;
    if cases.is_empty() {
        bail!("{}: no cases", cases_path.display());
    }
    let mut rows = Vec::new();
    let mut failed = 0;
    for (i, case) in cases.iter().enumerate() {
        let name = case
            .name
            .clone()
            .unwrap_or_else(|| format!("case {}", i + 1));
        let mut request = EvaluateRequest::from_value(case.request.clone()).map_err(|e| {
            anyhow::Error::new(PolicyInvalid(format!(
                "{}: {name}: the request would be refused by the daemon: {e}",
                cases_path.display()
            )))
        })?;
        request.verified_runner = case.runner.clone();
        let verdict = policy.evaluate(&request);
        let ok = verdict.decision() == case.decision
            && case.rule_id.as_deref().is_none_or(|r| r == verdict.rule.id)
            && case
                .matched_command
                .as_deref()
                .is_none_or(|m| Some(m) == verdict.matched_command.as_deref());
        failed += usize::from(!ok);
        rows.push(serde_json::json!({
            "name": name,
            "pass": ok,
            "expected": {"decision": case.decision, "rule_id": case.rule_id, "matched_command": case.matched_command},
            "got": {"decision": verdict.decision(), "rule_id": verdict.rule.id, "matched_command": verdict.matched_command},
        }));
    }
    if json {
        println!(
            "{}",
            serde_json::json!({"policy_id": policy.id(), "cases": rows.len(), "failed": failed, "results": rows})
        );
    } else {
        println!("{:<6} {:<32} {:<40} GOT", "RESULT", "CASE", "EXPECTED");
        for row in &rows {
            let fmt = |v: &serde_json::Value| {
                let part = v["matched_command"]
                    .as_str()
                    .map(|m| format!(" by `{m}`"))
                    .unwrap_or_default();
                format!(
                    "{} {}{part}",
                    v["decision"].as_str().unwrap_or("?"),
                    v["rule_id"].as_str().unwrap_or("(any rule)")
                )
            };
            println!(
                "{:<6} {:<32} {:<40} {}",
                if row["pass"] == true { "pass" } else { "FAIL" },
                row["name"].as_str().unwrap_or_default(),
                fmt(&row["expected"]),
                fmt(&row["got"])
            );
        }
        println!(
            "{} cases, {} failed (policy {})",
            rows.len(),
            failed,
            policy.id()
        );
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(exit::FAILURE)
    })
}
