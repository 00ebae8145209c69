#!/usr/bin/env python3
"""Claude Code PreToolUse hook: asks keyward whether a tool call may run.

Install it in ~/.claude/settings.json or .claude/settings.json:

    {"hooks": {"PreToolUse": [{"matcher": "*", "hooks": [
        {"type": "command", "command": "python3 /path/to/claude-pretooluse.py"}]}]}}

It reads the hook input (JSON) on stdin, turns the tool call into a keyward
EvaluateRequest and runs `keyward eval --input - --json`, which starts the
daemon if needed and records the decision in the evidence log. keyward's
exit status becomes Claude Code's answer: 0 allow, 2 deny, 3 ask. Tools with
no mapping below are left to Claude Code's own permission rules. When
keyward cannot answer, the call is not allowed: the person is asked.

Environment: KEYWARD_BIN (default: `keyward` on PATH), and KEYWARD_HOME or
KEYWARD_CONFIG as for keyward itself.
"""

import json
import os
import subprocess
import sys
from urllib.parse import urlsplit

ANSWERS = {0: "allow", 2: "deny", 3: "ask"}


def request_for(hook):
    """The EvaluateRequest for a tool call, or None for tools keyward has no
    say over."""
    tool = hook.get("tool_name") or ""
    args = hook.get("tool_input") or {}
    req = None
    if tool == "Bash":
        req = {"action_type": "execute_command", "target": args.get("command", "")}
    elif tool == "Read":
        req = {"action_type": "read_file", "target": args.get("file_path", "")}
    elif tool == "Grep":
        req = {"action_type": "read_file", "target": args.get("path") or hook.get("cwd", "")}
    elif tool in ("Glob", "LS"):
        req = {"action_type": "list_directory", "target": args.get("path") or hook.get("cwd", "")}
    elif tool in ("Write", "Edit", "MultiEdit"):
        req = {"action_type": "write_file", "target": args.get("file_path", "")}
    elif tool == "NotebookEdit":
        req = {"action_type": "write_file", "target": args.get("notebook_path", "")}
    elif tool == "WebFetch":
        url = urlsplit(args.get("url", ""))
        req = {
            "action_type": "http_request",
            "target": (url.netloc or "") + (url.path or "/"),
            "requested_operation": "GET",
        }
    elif tool.startswith("mcp__"):
        _, server, name = (tool.split("__", 2) + ["", ""])[:3]
        req = {"action_type": "mcp_tool_call", "server": server, "tool": name, "target": name}
    if req is None:
        return None
    req["agent_id"] = "claude-code"
    if hook.get("session_id"):
        req["session_id"] = hook["session_id"]
    req["context"] = {
        key: hook[key] for key in ("cwd", "tool_name", "tool_use_id") if hook.get(key)
    }
    return req


def answer(decision, reason):
    json.dump(
        {
            "hookSpecificOutput": {
                "hookEventName": "PreToolUse",
                "permissionDecision": decision,
                "permissionDecisionReason": reason,
            }
        },
        sys.stdout,
    )
    sys.stdout.write("\n")


def main():
    try:
        hook = json.load(sys.stdin)
    except ValueError as e:
        answer("ask", f"keyward hook: the hook input is not JSON ({e})")
        return
    req = request_for(hook)
    if req is None:
        return
    keyward = os.environ.get("KEYWARD_BIN", "keyward")
    try:
        done = subprocess.run(
            [keyward, "eval", "--input", "-", "--json"],
            input=json.dumps(req),
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        answer("ask", f"keyward could not decide ({e}); nothing is allowed without it")
        return
    decision = ANSWERS.get(done.returncode)
    if decision is None:
        error = done.stderr.strip() or f"exit status {done.returncode}"
        answer("ask", f"keyward could not decide ({error}); nothing is allowed without it")
        return
    try:
        resp = json.loads(done.stdout)
    except ValueError as e:
        answer("ask", f"keyward answered something other than a decision ({e}); a person decides")
        return
    part = resp.get("matched_command")
    by = f" (by: {part})" if part and part != (req.get("target") or "").strip() else ""
    approver = f"; approver: {resp['approver_group']}" if resp.get("approver_group") else ""
    answer(
        decision,
        f"keyward {resp['decision']}{by}: rule {resp['rule_id']} of {resp['policy_id']}: "
        f"{resp['reason']}{approver}",
    )


if __name__ == "__main__":
    main()
