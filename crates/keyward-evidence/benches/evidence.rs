//! Evidence figures: appends per second with fsync, one writer at a time
//! (one fsync per record) against 64 concurrent writers (group commit);
//! verify throughput as a ratio to `sha256sum` over the same files; and
//! what redacting the secret values the daemon knows adds to a decision
//! record, against format-based redaction alone.
//!
//! Run: `cargo bench -p keyward-evidence --bench evidence` (or bench/evaluate.sh).

use std::sync::Arc;
use std::time::Instant;

use keyward_evidence::{
    EvidenceLog, Kind, LogOptions, Signer, Verifier, generate_hmac, list_segments, redact,
    redact_known, verify_dir,
};
use serde_json::json;

fn data(i: u64) -> serde_json::Value {
    json!({
        "request": {"action_type": "execute_command", "target": format!("cargo test --package p{i}"), "session_id": "local"},
        "response": {"decision": "allow", "rule_id": "commands.allow", "decision_id": format!("dec_{i:012x}")},
    })
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("hmac.key");
    generate_hmac(&key).unwrap();
    let open = |sub: &str| {
        EvidenceLog::open(LogOptions {
            dir: dir.path().join(sub),
            signer: Some(Signer::hmac_from_file(&key, None).unwrap()),
            segment_bytes: 64 * 1024 * 1024,
        })
        .unwrap()
        .0
    };
    println!("evidence log (HMAC-SHA256 signed, fsync before acknowledging):");
    runtime.block_on(async {
        let log = open("serial");
        let n = 300u64;
        let t = Instant::now();
        for i in 0..n {
            log.append(Kind::Decision, None, data(i)).await.unwrap();
        }
        let serial = n as f64 / t.elapsed().as_secs_f64();
        println!("  1 writer (one fsync per record):    {serial:>9.0} appends/s");

        let log = Arc::new(open("group"));
        let writers = 64u64;
        let per = 500u64;
        let t = Instant::now();
        let tasks: Vec<_> = (0..writers)
            .map(|w| {
                let log = log.clone();
                tokio::spawn(async move {
                    for i in 0..per {
                        log.append(Kind::Decision, None, data(w * per + i))
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let group = (writers * per) as f64 / t.elapsed().as_secs_f64();
        println!(
            "  64 writers (group commit):          {group:>9.0} appends/s  ({:.0}x)",
            group / serial
        );
    });

    // A larger log to verify.
    let verify_dir_path = dir.path().join("verify");
    {
        let log = open("verify");
        for i in 0..200_000 {
            log.record(Kind::Decision, None, data(i));
        }
    }
    let files: Vec<_> = list_segments(&verify_dir_path)
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    let bytes: u64 = files
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    let verifier = Verifier::hmac_from_file(&key, None).unwrap();
    let mut best_verify = f64::MAX;
    let mut best_sha = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let report = verify_dir(&verify_dir_path, Some(&verifier)).unwrap();
        best_verify = best_verify.min(t.elapsed().as_secs_f64());
        assert!(report.valid, "{:?}", report.errors.first());
        let t = Instant::now();
        let status = std::process::Command::new("sha256sum")
            .args(&files)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        best_sha = best_sha.min(t.elapsed().as_secs_f64());
        assert!(status.success());
    }
    let mb = bytes as f64 / 1e6;
    println!(
        "verify {mb:.0} MB (200,000 records): keyward {:.0} MB/s, sha256sum {:.0} MB/s, ratio {:.2}x",
        mb / best_verify,
        mb / best_sha,
        best_sha / best_verify
    );
    redaction();
}

/// ns per decision record: a copy of the record, then format-based
/// redaction, then also known values (0, 5, 20 and 100 of them), in
/// alternating rounds; the median round is printed.
fn redaction() {
    let record = json!({
        "request": {"action_type": "execute_command", "target": "curl -H 'X-Api-Key: abc' https://api.example.com/v1/items?limit=20",
                    "session_id": "local", "agent_id": "claude-code", "context": {"cwd": "/work/repo", "tool": "Bash"}},
        "response": {"decision": "require_approval", "rule_id": "commands.default.require_approval", "decision_id": "dec_0b15e0af756d",
                     "policy_id": "agent-baseline", "reason": "command not on the allow list", "severity": "medium",
                     "approver_group": "maintainers", "timestamp": "2026-12-02T03:36:42.585297302Z"},
    });
    let secrets: Vec<String> = (0..100)
        .map(|i| format!("vault-secret-value-{i:04}-{}", "x".repeat(i % 24)))
        .collect();
    let per_record = |known: Option<usize>| {
        let known: Vec<&str> = secrets[..known.unwrap_or(0)]
            .iter()
            .map(String::as_str)
            .collect();
        let n = 20_000u32;
        let t = Instant::now();
        for _ in 0..n {
            let mut v = std::hint::black_box(&record).clone();
            if !known.is_empty() {
                redact_known(&mut v, &known);
            }
            redact(&mut v, &|_| false);
            std::hint::black_box(v);
        }
        t.elapsed().as_nanos() as f64 / f64::from(n)
    };
    let cases = [None, Some(5), Some(20), Some(100)];
    let mut rounds: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    for _ in 0..7 {
        for (i, case) in cases.iter().enumerate() {
            rounds[i].push(per_record(*case));
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let base = median(&mut rounds[0]);
    println!("redaction of one decision record (copy included, median of 7 rounds):");
    println!("  format-based only:              {base:>8.0} ns");
    for (i, case) in cases.iter().enumerate().skip(1) {
        let ns = median(&mut rounds[i]);
        println!(
            "  + {:>3} known secret values:     {ns:>8.0} ns  ({:.2}x)",
            case.unwrap_or(0),
            ns / base
        );
    }
}
