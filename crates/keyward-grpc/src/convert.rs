//! Between the protobuf messages and the admin API's types: the gRPC API
//! carries the same fields, so a decision means the same on both.

use keyward_api::{Decision, DecisionResponse, EvaluateRequest, RunInfo, RunnerAuth, Severity};
use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};

use crate::proto;

/// A protobuf `Struct` as a JSON object.
pub fn struct_to_json(s: Option<Struct>) -> serde_json::Map<String, serde_json::Value> {
    s.map(|s| {
        s.fields
            .into_iter()
            .map(|(k, v)| (k, value_to_json(v)))
            .collect()
    })
    .unwrap_or_default()
}

fn value_to_json(v: Value) -> serde_json::Value {
    match v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => b.into(),
        Some(Kind::NumberValue(n)) => {
            // Whole numbers stay integers, as a JSON client would send them.
            if n.fract() == 0.0 && n.abs() < 9_007_199_254_740_992.0 {
                #[allow(clippy::cast_possible_truncation)]
                serde_json::Value::from(n as i64)
            } else {
                serde_json::Number::from_f64(n).map_or(serde_json::Value::Null, Into::into)
            }
        }
        Some(Kind::StringValue(s)) => s.into(),
        Some(Kind::ListValue(l)) => l.values.into_iter().map(value_to_json).collect(),
        Some(Kind::StructValue(s)) => serde_json::Value::Object(struct_to_json(Some(s))),
    }
}

/// A JSON object as a protobuf `Struct` (`None` when empty).
pub fn json_to_struct(map: &serde_json::Map<String, serde_json::Value>) -> Option<Struct> {
    (!map.is_empty()).then(|| Struct {
        fields: map
            .iter()
            .map(|(k, v)| (k.clone(), json_to_value(v)))
            .collect(),
    })
}

fn json_to_value(v: &serde_json::Value) -> Value {
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(Struct {
            fields: o
                .iter()
                .map(|(k, v)| (k.clone(), json_to_value(v)))
                .collect(),
        }),
    };
    Value { kind: Some(kind) }
}

impl From<proto::EvaluateRequest> for EvaluateRequest {
    fn from(r: proto::EvaluateRequest) -> Self {
        EvaluateRequest {
            session_id: r.session_id,
            agent_id: r.agent_id,
            actor: r.actor,
            action_type: r.action_type,
            target: r.target,
            requested_operation: r.requested_operation,
            policy_pack: r.policy_pack,
            server: r.server,
            tool: r.tool,
            capability: r.capability,
            context: struct_to_json(r.context),
            runner_auth: RunnerAuth(struct_to_json(r.runner_auth)),
            ..Default::default()
        }
    }
}

impl From<&EvaluateRequest> for proto::EvaluateRequest {
    fn from(r: &EvaluateRequest) -> Self {
        proto::EvaluateRequest {
            session_id: r.session_id.clone(),
            agent_id: r.agent_id.clone(),
            actor: r.actor.clone(),
            action_type: r.action_type.clone(),
            target: r.target.clone(),
            requested_operation: r.requested_operation.clone(),
            policy_pack: r.policy_pack.clone(),
            server: r.server.clone(),
            tool: r.tool.clone(),
            capability: r.capability.clone(),
            context: json_to_struct(&r.context),
            runner_auth: json_to_struct(&r.runner_auth.0),
        }
    }
}

fn word<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn from_word<T: serde::de::DeserializeOwned>(word: &str) -> Option<T> {
    serde_json::from_value(serde_json::Value::String(word.to_owned())).ok()
}

impl From<DecisionResponse> for proto::DecisionResponse {
    fn from(d: DecisionResponse) -> Self {
        proto::DecisionResponse {
            decision: word(&d.decision),
            severity: word(&d.severity),
            decision_id: d.decision_id,
            rule_id: d.rule_id,
            matched_command: d.matched_command,
            reason: d.reason,
            approver_group: d.approver_group,
            policy_id: d.policy_id,
            session_id: d.session_id,
            agent_id: d.agent_id,
            actor: d.actor,
            action_type: d.action_type,
            target: d.target,
            requested_operation: d.requested_operation,
            evidence_refs: d.evidence_refs,
            correlation_id: d.correlation_id,
            timestamp: d.timestamp,
        }
    }
}

/// A decision the server sent that this client cannot read (a newer
/// server's word).
#[derive(Debug, thiserror::Error)]
#[error("the server answered a decision this client does not know: {0:?}")]
pub struct UnknownWord(pub String);

impl TryFrom<proto::DecisionResponse> for DecisionResponse {
    type Error = UnknownWord;

    fn try_from(d: proto::DecisionResponse) -> Result<Self, Self::Error> {
        let decision: Decision =
            from_word(&d.decision).ok_or_else(|| UnknownWord(d.decision.clone()))?;
        let severity: Severity =
            from_word(&d.severity).ok_or_else(|| UnknownWord(d.severity.clone()))?;
        Ok(DecisionResponse {
            decision,
            severity,
            decision_id: d.decision_id,
            rule_id: d.rule_id,
            matched_command: d.matched_command,
            reason: d.reason,
            approver_group: d.approver_group,
            policy_id: d.policy_id,
            session_id: d.session_id,
            agent_id: d.agent_id,
            actor: d.actor,
            action_type: d.action_type,
            target: d.target,
            requested_operation: d.requested_operation,
            evidence_refs: d.evidence_refs,
            correlation_id: d.correlation_id,
            timestamp: d.timestamp,
        })
    }
}

impl From<&RunInfo> for proto::RunSummary {
    fn from(r: &RunInfo) -> Self {
        proto::RunSummary {
            run_id: r.run_id.clone(),
            label: r.label.clone(),
            grants: r.grants.clone(),
            allow: r.allow.clone(),
            network: word(&r.network),
            created_at: r.created_at.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_survives_the_round_trip_through_struct() {
        let json: serde_json::Value = serde_json::json!({
            "repo": "acme/app", "attempt": 3, "ratio": 0.5, "ok": true, "none": null,
            "list": ["a", 1, {"deep": [false]}], "nested": {"k": "v"}
        });
        let map = json.as_object().unwrap();
        let back = struct_to_json(json_to_struct(map));
        assert_eq!(serde_json::Value::Object(back), json);
        assert_eq!(json_to_struct(&serde_json::Map::new()), None);
    }

    #[test]
    fn a_request_keeps_every_field() {
        let req = EvaluateRequest {
            session_id: Some("s".into()),
            agent_id: Some("a".into()),
            actor: Some("ci".into()),
            action_type: "execute_command".into(),
            target: Some("rm -rf /".into()),
            requested_operation: Some("run".into()),
            policy_pack: Some("agent-baseline".into()),
            server: Some("shell".into()),
            tool: Some("bash".into()),
            capability: Some("exec".into()),
            context: serde_json::json!({"k": 1}).as_object().unwrap().clone(),
            runner_auth: RunnerAuth(
                serde_json::json!({"algorithm": "OIDC-JWT", "token": "t"})
                    .as_object()
                    .unwrap()
                    .clone(),
            ),
            ..Default::default()
        };
        let back = EvaluateRequest::from(proto::EvaluateRequest::from(&req));
        assert_eq!(
            serde_json::to_value(&back).unwrap(),
            serde_json::to_value(&req).unwrap()
        );
    }
}
