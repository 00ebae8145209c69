#!/usr/bin/env bash
# keyward-ci.sh: ask keyward for a decision from a CI job, with the job's
# verified identity, and keep the evidence.
#
#   keyward-ci.sh --action A [--target T] [--operation O]   # one decision
#   keyward-ci.sh --input request.json                      # an EvaluateRequest
#   keyward-ci.sh --run -- CMD [ARGS]                       # CMD under `keyward run`
#
# Exit status: eval's (0 allow, 2 block, 3 require_approval, 1 error), or
# CMD's with --run. Either way it writes to $KEYWARD_OUT_DIR:
# decision.json (with --action/--input), audit-verify.json
# (`keyward audit verify --json`) and audit-head.json (the signed head, to
# keep off the machine).
#
# Identity (see the README, "CI identity"):
#   KEYWARD_OIDC_AUTO=true     get the job's OIDC token from the provider:
#       github  ACTIONS_ID_TOKEN_REQUEST_URL + ACTIONS_ID_TOKEN_REQUEST_TOKEN
#               (the job needs `permissions: id-token: write`)
#       gitlab  the id_tokens variable named by KEYWARD_GITLAB_ID_TOKEN_VAR
#               (default KEYWARD_ID_TOKEN)
#       azure   SYSTEM_OIDCREQUESTURI + SYSTEM_ACCESSTOKEN (map
#               $(System.AccessToken) into the step's env) and
#               KEYWARD_AZURE_SERVICE_CONNECTION_ID
#     with audience KEYWARD_OIDC_AUDIENCE (default: keyward).
#   KEYWARD_RUNNER_HMAC_KEY    else, sign runner claims with this shared key
#     (key id KEYWARD_RUNNER_KEY_ID, default "default"). Each claim comes from
#     KEYWARD_RUNNER_<CLAIM> (e.g. KEYWARD_RUNNER_REPOSITORY) or else from the
#     provider's own variables.
# Other settings: KEYWARD_BIN (default: keyward on PATH), KEYWARD_HOME,
# KEYWARD_CONFIG, KEYWARD_OUT_DIR (default: keyward-evidence),
# KEYWARD_CI_PROVIDER (github, gitlab, azure or generic; default: detected).
# Tokens and keys never reach argv, the output or the evidence directory.
set -euo pipefail

kw=${KEYWARD_BIN:-keyward}
out=${KEYWARD_OUT_DIR:-keyward-evidence}
audience=${KEYWARD_OIDC_AUDIENCE:-keyward}
die() { echo "keyward-ci: $*" >&2; exit 1; }

provider=${KEYWARD_CI_PROVIDER:-}
if [[ -z $provider ]]; then
    if [[ ${GITHUB_ACTIONS:-} == true ]]; then provider=github
    elif [[ -n ${GITLAB_CI:-} ]]; then provider=gitlab
    elif [[ -n ${TF_BUILD:-} ]]; then provider=azure
    else provider=generic
    fi
fi

mode=eval
eval_args=()
run_cmd=()
while (($#)); do
    case $1 in
        --action | --target | --operation | --input)
            (($# >= 2)) || die "$1 needs a value"
            eval_args+=("$1" "$2")
            shift 2
            ;;
        --run)
            mode=run
            shift
            [[ ${1:-} == -- ]] && shift
            run_cmd=("$@")
            break
            ;;
        *) die "unknown argument $1 (expected --action/--target/--operation/--input or --run -- CMD)" ;;
    esac
done
[[ $mode == run && ${#run_cmd[@]} -eq 0 ]] && die "--run needs a command after --"
[[ $mode == eval && ${#eval_args[@]} -eq 0 ]] && die "give --action A (and --target T) or --input FILE"

umask 077
mkdir -p "$out"
secret_dir=$(mktemp -d)
trap 'rm -rf "$secret_dir"' EXIT

# A JSON field of stdin, or nothing.
json_field() { python3 -c 'import json,sys; print(json.load(sys.stdin).get(sys.argv[1]) or "")' "$1"; }

# Fetches the job's OIDC token into $secret_dir/token.
fetch_token() {
    local token="" header="$secret_dir/header"
    case $provider in
        github)
            [[ -n ${ACTIONS_ID_TOKEN_REQUEST_URL:-} && -n ${ACTIONS_ID_TOKEN_REQUEST_TOKEN:-} ]] ||
                die "could not get the OIDC token: ACTIONS_ID_TOKEN_REQUEST_URL/_TOKEN are not set (give the job permissions: id-token: write)"
            printf 'Authorization: bearer %s\n' "$ACTIONS_ID_TOKEN_REQUEST_TOKEN" >"$header"
            token=$(curl -sSf --max-time 30 -H @"$header" \
                "${ACTIONS_ID_TOKEN_REQUEST_URL}&audience=${audience}" | json_field value) ||
                die "could not get the OIDC token from GitHub's token endpoint"
            ;;
        gitlab)
            local var=${KEYWARD_GITLAB_ID_TOKEN_VAR:-KEYWARD_ID_TOKEN}
            token=${!var:-}
            [[ -n $token ]] || die "could not get the OIDC token: \$$var is empty (declare it under id_tokens: with aud: $audience)"
            ;;
        azure)
            [[ -n ${SYSTEM_OIDCREQUESTURI:-} && -n ${SYSTEM_ACCESSTOKEN:-} ]] ||
                die "could not get the OIDC token: SYSTEM_OIDCREQUESTURI and SYSTEM_ACCESSTOKEN are not set (map \$(System.AccessToken) into env)"
            [[ -n ${KEYWARD_AZURE_SERVICE_CONNECTION_ID:-} ]] ||
                die "could not get the OIDC token: set KEYWARD_AZURE_SERVICE_CONNECTION_ID"
            printf 'Authorization: Bearer %s\n' "$SYSTEM_ACCESSTOKEN" >"$header"
            token=$(curl -sSf --max-time 30 -X POST -H @"$header" -H 'Content-Type: application/json' \
                --data '' \
                "${SYSTEM_OIDCREQUESTURI}&serviceConnectionId=${KEYWARD_AZURE_SERVICE_CONNECTION_ID}" |
                json_field oidcToken) ||
                die "could not get the OIDC token from Azure's OIDC request endpoint"
            ;;
        *) die "could not get the OIDC token: KEYWARD_OIDC_AUTO needs provider github, gitlab or azure, not $provider" ;;
    esac
    [[ -n $token ]] || die "could not get the OIDC token: the provider answered without one"
    printf '%s' "$token" >"$secret_dir/token"
}

# Writes HMAC-signed runner claims to $secret_dir/auth.json. The signature
# covers the canonical bytes of the claims: JSON with members sorted by
# name, no whitespace, strings escaped only as JSON requires (RFC 8785 for
# string-valued claims with ASCII names).
sign_claims() {
    KEYWARD_CI_PROVIDER=$provider python3 - "$secret_dir/auth.json" <<'PY'
import hashlib, hmac, json, os, string, sys
env = os.environ.get
p = env("KEYWARD_CI_PROVIDER")
def ref(name):
    return name if not name or name.startswith("refs/") else "refs/heads/" + name
defaults = {
    "github": {"provider": "github-actions", "repository": env("GITHUB_REPOSITORY"),
               "workflow": env("GITHUB_WORKFLOW"), "run_id": env("GITHUB_RUN_ID"),
               "run_attempt": env("GITHUB_RUN_ATTEMPT"), "ref": env("GITHUB_REF"),
               "sha": env("GITHUB_SHA"), "actor": env("GITHUB_ACTOR"), "job": env("GITHUB_JOB"),
               "runner_name": env("RUNNER_NAME")},
    "gitlab": {"provider": "gitlab-ci", "repository": env("CI_PROJECT_PATH"),
               "workflow": env("CI_CONFIG_PATH"), "run_id": env("CI_PIPELINE_ID"),
               "ref": ref(env("CI_COMMIT_REF_NAME") or ""), "sha": env("CI_COMMIT_SHA"),
               "actor": env("GITLAB_USER_LOGIN"), "job": env("CI_JOB_ID"),
               "runner_name": env("CI_RUNNER_DESCRIPTION")},
    "azure": {"provider": "azure-pipelines", "repository": env("BUILD_REPOSITORY_NAME"),
              "workflow": env("BUILD_DEFINITIONNAME"), "run_id": env("BUILD_BUILDID"),
              "run_attempt": env("SYSTEM_JOBATTEMPT"), "ref": env("BUILD_SOURCEBRANCH"),
              "sha": env("BUILD_SOURCEVERSION"), "actor": env("BUILD_REQUESTEDFOR"),
              "job": env("SYSTEM_JOBNAME"), "runner_name": env("AGENT_NAME")},
}.get(p, {"provider": p})
names = ["provider", "repository", "workflow", "run_id", "run_attempt", "ref", "sha",
         "actor", "job", "runner_name"]
claims = {}
for name in names:
    value = env("KEYWARD_RUNNER_" + name.upper()) or defaults.get(name)
    if value:
        claims[name] = value
text = env("KEYWARD_RUNNER_HMAC_KEY").strip()
is_hex = len(text) % 2 == 0 and all(c in string.hexdigits for c in text)
key = bytes.fromhex(text) if is_hex else text.encode("utf-8")
if len(key) < 32:
    sys.exit("keyward-ci: KEYWARD_RUNNER_HMAC_KEY needs at least 32 bytes")
canonical = json.dumps(claims, sort_keys=True, separators=(",", ":"),
                       ensure_ascii=False).encode("utf-8")
auth = {"claims": claims, "algorithm": "HMAC-SHA256",
        "key_id": env("KEYWARD_RUNNER_KEY_ID") or "default",
        "signature": hmac.new(key, canonical, hashlib.sha256).hexdigest()}
with open(sys.argv[1], "w") as f:
    json.dump(auth, f)
PY
}

auth_args=()
if [[ ${KEYWARD_OIDC_AUTO:-} == true ]]; then
    fetch_token
    auth_args=(--oidc-token-file "$secret_dir/token")
elif [[ -n ${KEYWARD_RUNNER_HMAC_KEY:-} ]]; then
    sign_claims
    auth_args=(--runner-auth-file "$secret_dir/auth.json")
fi

if ! "$kw" status >/dev/null 2>&1; then
    "$kw" daemon start --detach >/dev/null || die "the keyward daemon did not start (see its daemon.log)"
fi

status=0
if [[ $mode == eval ]]; then
    "$kw" eval "${eval_args[@]}" "${auth_args[@]}" --json >"$out/decision.json" || status=$?
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("keyward: %s (rule %s): %s" % (d["decision"], d["rule_id"], d["reason"]))' \
        "$out/decision.json" 2>/dev/null || echo "keyward: eval failed (exit $status)" >&2
else
    "$kw" run "${auth_args[@]}" -- "${run_cmd[@]}" || status=$?
fi

"$kw" audit verify --json >"$out/audit-verify.json" || die "the evidence log does not verify: see $out/audit-verify.json"
"$kw" audit head --json >"$out/audit-head.json" || die "cannot read the evidence log's signed head"
# The log itself, so the artifact can be verified again elsewhere.
if [[ -n ${KEYWARD_HOME:-} && -d $KEYWARD_HOME/audit ]]; then
    cp -R "$KEYWARD_HOME/audit" "$out/"
fi
exit "$status"
