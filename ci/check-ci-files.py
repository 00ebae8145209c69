"""Checks the CI wrapper templates: each parses as YAML and has the shape its
CI expects. (actionlint lints workflow files only, not composite actions or
other CIs' files; .ci/run runs it on the example workflow.)"""
import sys

import yaml

root = sys.argv[1] if len(sys.argv) > 1 else "ci"
errors = []


def load(path):
    with open(f"{root}/{path}") as f:
        return yaml.safe_load(f)


def check(cond, what):
    if not cond:
        errors.append(what)


action = load("github-action/action.yml")
check(action.get("runs", {}).get("using") == "composite", "action.yml: runs.using must be composite")
for step in action["runs"]["steps"]:
    name = step.get("name", "?")
    check("uses" in step or step.get("shell") == "bash", f"action.yml: step {name!r} needs shell: bash")
    for ref in str(step.get("run", "")).split("${{ inputs.")[1:]:
        check(ref.split(" ")[0].rstrip("}") in action["inputs"], f"action.yml: unknown input in {name!r}")
    for value in (step.get("env") or {}).values():
        if "inputs." in str(value):
            key = str(value).split("inputs.")[1].split(" ")[0].rstrip("}")
            check(key in action["inputs"], f"action.yml: step {name!r} uses unknown input {key!r}")
for key, spec in action["inputs"].items():
    check("description" in spec, f"action.yml: input {key!r} has no description")

gitlab = load("gitlab/keyward.gitlab-ci.yml")
job = gitlab.get(".keyward", {})
check("KEYWARD_ID_TOKEN" in job.get("id_tokens", {}), "gitlab: .keyward needs id_tokens.KEYWARD_ID_TOKEN")
check(job.get("artifacts", {}).get("when") == "always", "gitlab: artifacts must be kept always")

azure = load("azure/keyward.azure-pipelines.yml")
params = {p["name"] for p in azure.get("parameters", [])}
for step in azure.get("steps", []):
    for value in (step.get("env") or {}).values():
        if "parameters." in str(value):
            key = str(value).split("parameters.")[1].split(" ")[0].rstrip("}")
            check(key in params, f"azure: unknown parameter {key!r}")
check(
    any(s.get("env", {}).get("SYSTEM_ACCESSTOKEN") == "$(System.AccessToken)" for s in azure["steps"]),
    "azure: the gate step must map System.AccessToken",
)

if errors:
    sys.exit("\n".join(errors))
print("ci files: 3 checked")
