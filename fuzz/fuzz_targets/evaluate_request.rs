//! `POST /v1/evaluate`: the body decoded as the daemon decodes it, then
//! decided by the built-in pack. A request survives a round trip through
//! its JSON, and the rule that decides is one of the pack's.
#![no_main]

use keyward_api::EvaluateRequest;
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

static BASELINE: LazyLock<keyward_policy::Policy> = LazyLock::new(keyward_policy::baseline);

fuzz_target!(|data: &[u8]| {
    let Ok(req) = serde_json::from_slice::<EvaluateRequest>(data) else {
        return;
    };
    let verdict = BASELINE.evaluate(&req);
    let _ = verdict.decision();
    let id = verdict.rule.id.as_str();
    let known = id == keyward_policy::UNPARSEABLE_RULE_ID
        || BASELINE
            .rules()
            .chain([BASELINE.default_rule()])
            .any(|r| r.id == id);
    assert!(known, "a verdict names a rule the pack does not hold");

    // Free-form JSON (numbers) may not survive a round trip exactly; the
    // typed fields must.
    let strip = |mut r: EvaluateRequest| {
        r.context.clear();
        r.runner_auth.clear();
        r
    };
    let again: EvaluateRequest =
        serde_json::from_slice(&serde_json::to_vec(&req).expect("a request serializes"))
            .expect("a request re-reads what it wrote");
    assert_eq!(strip(again), strip(req));
});
