//! Policy files: any text compiled as a policy file is compiled, and any
//! request is decided by what compiles, without a panic or a hang; the
//! deciding rule is one of the policy's. The input is the policy text,
//! then a NUL, then an evaluate request in JSON (or just an action type
//! and target, one per line).
#![no_main]

use keyward_api::EvaluateRequest;
use keyward_policy::Policy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (policy, request) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &b""[..]),
    };
    let Ok(policy) = std::str::from_utf8(policy) else {
        return;
    };
    let Ok(policy) = Policy::from_toml(policy, "fuzz.toml") else {
        return;
    };
    let req = serde_json::from_slice::<EvaluateRequest>(request).unwrap_or_else(|_| {
        let text = String::from_utf8_lossy(request);
        let mut lines = text.splitn(2, '\n');
        EvaluateRequest {
            action_type: lines.next().unwrap_or_default().to_owned(),
            target: lines.next().map(str::to_owned),
            ..EvaluateRequest::default()
        }
    });
    let verdict = policy.evaluate(&req);
    let _ = verdict.decision();
    let id = verdict.rule.id.as_str();
    let known = id == keyward_policy::UNPARSEABLE_RULE_ID
        || policy
            .rules()
            .chain([policy.default_rule()])
            .any(|r| r.id == id);
    assert!(known, "a verdict names a rule the policy does not hold");
});
