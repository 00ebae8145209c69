use std::path::{Path, PathBuf};
use std::sync::Arc;

use keyward_evidence::{
    EvidenceLog, HEAD_FILE, Head, Kind, LogOptions, Signer, Verifier, VerifyOptions,
    generate_ed25519, generate_hmac, list_segments, verify_dir,
};
use serde_json::json;

fn open(dir: &Path, signer: Option<Signer>, segment_bytes: u64) -> EvidenceLog {
    EvidenceLog::open(LogOptions {
        dir: dir.to_owned(),
        signer,
        segment_bytes,
    })
    .unwrap()
    .0
}

async fn fill(log: &EvidenceLog, n: u64) -> Vec<String> {
    let mut refs = Vec::new();
    for i in 0..n {
        refs.push(
            log.append(
                Kind::Decision,
                Some(format!("run_{i:012x}")),
                json!({"i": i, "note": "é \u{1} \"q\""}),
            )
            .await
            .unwrap(),
        );
    }
    refs
}

fn keys(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let hmac = dir.join("hmac.key");
    generate_hmac(&hmac).unwrap();
    let (private, public) = generate_ed25519(&dir.join("ed")).unwrap();
    (hmac, private, public)
}

fn checks(report: &keyward_evidence::Report) -> Vec<&'static str> {
    report.errors.iter().map(|e| e.check).collect()
}

#[tokio::test]
async fn chain_verifies_across_rotation_with_hmac_and_ed25519() {
    let tmp = tempfile::tempdir().unwrap();
    let (hmac, private, public) = keys(tmp.path());
    let audit = tmp.path().join("hmac-log");
    {
        let log = open(
            &audit,
            Some(Signer::hmac_from_file(&hmac, Some("team-key")).unwrap()),
            2_000,
        );
        let refs = fill(&log, 40).await;
        assert_eq!(refs[0], format!("keyward-evidence://{}/1", log.log_id()));
        assert_eq!(refs[39], format!("keyward-evidence://{}/40", log.log_id()));
    }
    let segments = list_segments(&audit).unwrap();
    assert!(segments.len() > 3, "expected rotation, got {segments:?}");
    let verifier = Verifier::hmac_from_file(&hmac, Some("team-key")).unwrap();
    let report = verify_dir(&audit, Some(&verifier)).unwrap();
    assert!(report.valid, "{:?}", report.errors);
    assert_eq!(
        (
            report.records,
            report.signed_records,
            report.first_seq,
            report.last_seq
        ),
        (40, 40, Some(1), Some(40))
    );
    assert_eq!(report.segments, segments.len());
    // Reopening continues the chain in the newest segment.
    {
        let log = open(
            &audit,
            Some(Signer::hmac_from_file(&hmac, Some("team-key")).unwrap()),
            2_000,
        );
        let r = log
            .append(Kind::Admin, None, json!({"event": "restart"}))
            .await
            .unwrap();
        assert!(r.ends_with("/41"), "{r}");
    }
    assert!(verify_dir(&audit, Some(&verifier)).unwrap().valid);

    let audit = tmp.path().join("ed-log");
    {
        let log = open(
            &audit,
            Some(Signer::ed25519_from_file(&private, None).unwrap()),
            64 << 20,
        );
        fill(&log, 10).await;
    }
    // The verifier holds only the public key.
    let verifier = Verifier::ed25519_from_file(&public, None).unwrap();
    let report = verify_dir(&audit, Some(&verifier)).unwrap();
    assert!(report.valid, "{:?}", report.errors);
    assert_eq!(report.signed_records, 10);
}

#[tokio::test]
async fn every_kind_of_tampering_is_detected_with_the_right_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (hmac, _, _) = keys(tmp.path());
    let audit = tmp.path().join("audit");
    {
        let log = open(
            &audit,
            Some(Signer::hmac_from_file(&hmac, None).unwrap()),
            64 << 20,
        );
        fill(&log, 6).await;
    }
    let verifier = Verifier::hmac_from_file(&hmac, None).unwrap();
    let segment = list_segments(&audit).unwrap()[0].1.clone();
    let original = std::fs::read(&segment).unwrap();
    let lines: Vec<&[u8]> = original
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let rewrite = |lines: &[&[u8]]| {
        let mut out = lines.join(&b'\n');
        out.push(b'\n');
        std::fs::write(&segment, out).unwrap();
        let report = verify_dir(&audit, Some(&verifier)).unwrap();
        std::fs::write(&segment, &original).unwrap();
        report
    };

    // Flip every byte of the third record in turn: each flip is caught.
    let third_start: usize = lines[..2].iter().map(|l| l.len() + 1).sum();
    for i in third_start..third_start + lines[2].len() {
        let mut bytes = original.clone();
        bytes[i] ^= 0x01;
        std::fs::write(&segment, &bytes).unwrap();
        let report = verify_dir(&audit, Some(&verifier)).unwrap();
        assert!(
            !report.valid,
            "flipping byte {i} ({:?}) went unnoticed",
            original[i] as char
        );
        assert!(
            report.errors.iter().all(|e| e.line == 3 || e.line == 4),
            "{:?}",
            report.errors
        );
    }
    std::fs::write(&segment, &original).unwrap();
    assert!(verify_dir(&audit, Some(&verifier)).unwrap().valid);

    let deleted = rewrite(&[lines[0], lines[1], lines[3], lines[4], lines[5]]);
    assert_eq!(checks(&deleted), ["sequence", "prev_hash"]);
    assert_eq!(deleted.errors[0].line, 3);
    assert!(
        deleted.errors[0].message.contains("seq 4, expected 3"),
        "{:?}",
        deleted.errors
    );

    let reordered = rewrite(&[lines[0], lines[2], lines[1], lines[3], lines[4], lines[5]]);
    assert!(
        checks(&reordered).starts_with(&["sequence", "prev_hash"]),
        "{:?}",
        reordered.errors
    );

    let duplicated = rewrite(&[
        lines[0], lines[1], lines[1], lines[2], lines[3], lines[4], lines[5],
    ]);
    assert_eq!(
        checks(&duplicated),
        ["sequence", "prev_hash", "sequence", "prev_hash"][..2]
    );
    assert_eq!(duplicated.errors[0].line, 3);

    let not_json = rewrite(&[lines[0], b"{oops", lines[2], lines[3], lines[4], lines[5]]);
    assert_eq!(checks(&not_json)[0], "json");

    let mut other_schema = String::from_utf8(lines[0].to_vec()).unwrap();
    other_schema = other_schema.replace("keyward.evidence.v1", "keyward.evidence.v9");
    let schema = rewrite(&[
        other_schema.as_bytes(),
        lines[1],
        lines[2],
        lines[3],
        lines[4],
        lines[5],
    ]);
    assert!(checks(&schema).contains(&"schema"), "{:?}", schema.errors);
    assert!(
        schema
            .errors
            .iter()
            .all(|e| e.segment == "evidence-000001.jsonl" && e.line == 1)
    );
}

#[tokio::test]
async fn keys_must_match() {
    let tmp = tempfile::tempdir().unwrap();
    let (hmac, private, public) = keys(tmp.path());
    let audit = tmp.path().join("audit");
    {
        let log = open(
            &audit,
            Some(Signer::hmac_from_file(&hmac, Some("k1")).unwrap()),
            64 << 20,
        );
        fill(&log, 3).await;
    }
    let other = tmp.path().join("other.key");
    generate_hmac(&other).unwrap();
    let wrong = verify_dir(
        &audit,
        Some(&Verifier::hmac_from_file(&other, Some("k1")).unwrap()),
    )
    .unwrap();
    assert_eq!(checks(&wrong), ["signature"; 3]);
    let wrong_id = verify_dir(
        &audit,
        Some(&Verifier::hmac_from_file(&hmac, Some("k2")).unwrap()),
    )
    .unwrap();
    assert_eq!(checks(&wrong_id), ["key_id"; 3]);
    let wrong_alg = verify_dir(
        &audit,
        Some(&Verifier::ed25519_from_file(&public, None).unwrap()),
    )
    .unwrap();
    assert_eq!(checks(&wrong_alg), ["signature_algorithm"; 3]);
    let no_key = verify_dir(&audit, None).unwrap();
    assert_eq!(checks(&no_key), ["signature_without_key"; 3]);

    // An unsigned log verified with a key: every record is missing its signature.
    let unsigned = tmp.path().join("unsigned");
    {
        let log = open(&unsigned, None, 64 << 20);
        fill(&log, 2).await;
    }
    assert!(verify_dir(&unsigned, None).unwrap().valid);
    let missing = verify_dir(
        &unsigned,
        Some(&Verifier::hmac_from_file(&hmac, None).unwrap()),
    )
    .unwrap();
    assert_eq!(checks(&missing), ["signature_missing"; 2]);

    // Bad key files name the file.
    let short = tmp.path().join("short.key");
    std::fs::write(&short, "abcd").unwrap();
    let err = Signer::hmac_from_file(&short, None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("short.key") && err.contains("at least 32 bytes"),
        "{err}"
    );
    let err = Verifier::ed25519_from_file(&private, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("PUBLIC KEY"), "{err}");
    let err = generate_ed25519(&tmp.path().join("ed"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("already exists"), "{err}");
}

#[tokio::test]
async fn a_torn_tail_is_moved_aside_recorded_and_the_chain_continues() {
    let tmp = tempfile::tempdir().unwrap();
    let audit = tmp.path().join("audit");
    {
        let log = open(&audit, None, 64 << 20);
        fill(&log, 5).await;
    }
    let segment = list_segments(&audit).unwrap()[0].1.clone();
    let torn = b"{\"data\":{\"i\":99},\"hash\":\"ab";
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes.extend_from_slice(torn);
    std::fs::write(&segment, &bytes).unwrap();
    let before = verify_dir(&audit, None).unwrap();
    assert!(
        !before.valid && before.errors[0].message.contains("torn"),
        "{:?}",
        before.errors
    );

    let (log, repair) = EvidenceLog::open(LogOptions {
        dir: audit.clone(),
        signer: None,
        segment_bytes: 64 << 20,
    })
    .unwrap();
    let repair = repair.expect("a repair");
    assert_eq!(repair.bytes, torn.len() as u64);
    assert_eq!(std::fs::read(&repair.moved_to).unwrap(), torn);
    let next = log
        .append(Kind::Decision, None, json!({"after": true}))
        .await
        .unwrap();
    // seq 6 is the repair record itself; the next decision is 7.
    assert!(next.ends_with("/7"), "{next}");
    drop(log);
    let report = verify_dir(&audit, None).unwrap();
    assert!(report.valid, "{:?}", report.errors);
    assert_eq!(report.records, 7);
    assert_eq!(report.torn_files, ["evidence-000001.jsonl.torn"]);
    let text = std::fs::read_to_string(&segment).unwrap();
    let repair_line = text.lines().nth(5).unwrap();
    assert!(
        repair_line.contains("torn_tail_repaired") && repair_line.contains("\"kind\":\"admin\""),
        "{repair_line}"
    );
}

#[tokio::test]
async fn a_damaged_complete_record_stops_the_writer_from_opening() {
    let tmp = tempfile::tempdir().unwrap();
    let audit = tmp.path().join("audit");
    {
        let log = open(&audit, None, 64 << 20);
        fill(&log, 2).await;
    }
    let segment = list_segments(&audit).unwrap()[0].1.clone();
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes.extend_from_slice(b"garbage line\n");
    std::fs::write(&segment, &bytes).unwrap();
    let err = EvidenceLog::open(LogOptions {
        dir: audit.clone(),
        signer: None,
        segment_bytes: 64 << 20,
    })
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("line 3")
            && text.contains("damaged")
            && text.contains("keyward audit verify"),
        "{text}"
    );
    assert_eq!(
        std::fs::read(&segment).unwrap(),
        bytes,
        "nothing was changed"
    );
}

#[tokio::test]
async fn concurrent_appends_share_fsyncs_and_all_land() {
    let tmp = tempfile::tempdir().unwrap();
    let audit = tmp.path().join("audit");
    let log = Arc::new(open(&audit, None, 64 << 20));
    let tasks: Vec<_> = (0..32)
        .map(|w| {
            let log = log.clone();
            tokio::spawn(async move {
                let mut refs = Vec::new();
                for i in 0..50 {
                    refs.push(
                        log.append(Kind::Egress, None, json!({"w": w, "i": i}))
                            .await
                            .unwrap(),
                    );
                }
                refs
            })
        })
        .collect();
    let mut seqs = Vec::new();
    for t in tasks {
        for r in t.await.unwrap() {
            seqs.push(r.rsplit('/').next().unwrap().parse::<u64>().unwrap());
        }
    }
    seqs.sort();
    assert_eq!(seqs, (1..=1600).collect::<Vec<_>>());
    drop(log);
    let report = verify_dir(&audit, None).unwrap();
    assert!(
        report.valid && report.records == 1600,
        "{:?}",
        report.errors.first()
    );
}

/// A reserved record that never comes (its request failed) must not hold
/// fsyncs back for good, and one that comes lands like any other.
#[tokio::test]
async fn reserved_slots_never_stall_the_log() {
    let tmp = tempfile::tempdir().unwrap();
    let audit = tmp.path().join("audit");
    let log = open(&audit, None, 64 << 20);
    // Held across the appends below: the gather wait is bounded.
    let forgotten = log.reserve();
    let abandoned = log.reserve();
    drop(abandoned);
    let first = log
        .append(Kind::Decision, None, json!({"n": 1}))
        .await
        .unwrap();
    let slot = log.reserve();
    let second = log
        .append_reserved(slot, Kind::Decision, None, json!({"n": 2}))
        .await
        .unwrap();
    assert!(
        first.ends_with("/1") && second.ends_with("/2"),
        "{first} {second}"
    );
    drop(forgotten);
    drop(log);
    let report = verify_dir(&audit, None).unwrap();
    assert!(report.valid && report.records == 2, "{:?}", report.errors);
}

/// Records nobody waits on (the proxy's) share writes and fsyncs, yet each
/// callback hears its own reference only once the record is on disk, and
/// an urgent append meanwhile is not held up behind them.
#[tokio::test]
async fn background_appends_call_back_with_their_reference_after_fsync() {
    let tmp = tempfile::tempdir().unwrap();
    let audit = tmp.path().join("audit");
    let log = Arc::new(open(&audit, None, 64 << 20));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..500u64 {
        let tx = tx.clone();
        let dir = audit.clone();
        log.append_then(Kind::Egress, None, json!({"i": i}), move |reference| {
            let reference = reference.unwrap();
            // On disk when told: the record is in the segment already.
            let seq: u64 = reference.rsplit('/').next().unwrap().parse().unwrap();
            let text = std::fs::read_to_string(dir.join("evidence-000001.jsonl")).unwrap();
            assert!(text.contains(&format!("\"seq\":{seq},")), "{reference}");
            tx.send((i, seq)).unwrap();
        });
    }
    drop(tx);
    let urgent = log
        .append(Kind::Decision, None, json!({"urgent": true}))
        .await
        .unwrap();
    let mut heard = Vec::new();
    while let Some(pair) = rx.recv().await {
        heard.push(pair);
    }
    heard.sort();
    assert_eq!(heard.len(), 500);
    // Sequence numbers follow submission order.
    assert!(heard.windows(2).all(|w| w[0].1 < w[1].1), "{heard:?}");
    assert!(urgent.ends_with("/501"), "{urgent}");
    drop(log);
    let report = verify_dir(&audit, None).unwrap();
    assert!(report.valid && report.records == 501, "{:?}", report.errors);
}

/// The lines of every segment, oldest first.
fn all_lines(audit: &Path) -> Vec<String> {
    list_segments(audit)
        .unwrap()
        .iter()
        .flat_map(|(_, p)| {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn verify_against(audit: &Path, keys: &[Verifier], head: &Head) -> keyward_evidence::Report {
    let options = VerifyOptions {
        keys: keys.to_vec(),
        expect_head: head.anchor(),
        head_source: None,
    };
    keyward_evidence::verify(audit, &options).unwrap()
}

#[tokio::test]
async fn the_signed_head_names_the_last_synced_record_and_refuses_other_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let (hmac, _, public) = keys(tmp.path());
    let audit = tmp.path().join("audit");
    {
        let log = open(
            &audit,
            Some(Signer::hmac_from_file(&hmac, None).unwrap()),
            64 << 20,
        );
        fill(&log, 7).await;
        // Kept while the log is open, not only when it closes.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while Head::read(&audit).unwrap().is_none_or(|h| h.seq < 7) {
            assert!(
                std::time::Instant::now() < deadline,
                "the head never reached seq 7"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
    let head = Head::read(&audit)
        .unwrap()
        .expect("a head after the first fsync");
    let last: serde_json::Value = serde_json::from_str(all_lines(&audit).last().unwrap()).unwrap();
    assert_eq!(head.seq, 7);
    assert_eq!(head.hash, last["hash"].as_str().unwrap());
    assert_eq!(head.log_id, keyward_evidence::read_log_id(&audit).unwrap());
    let key = Verifier::hmac_from_file(&hmac, None).unwrap();
    head.check(std::slice::from_ref(&key)).unwrap();
    // Written atomically: no temporary file stays behind.
    let names: Vec<_> = std::fs::read_dir(&audit)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(!names.iter().any(|n| n.contains("tmp")), "{names:?}");

    // A head moved back by someone without the key, or checked with another key.
    let mut forged = head.clone();
    forged.seq = 3;
    let err = forged.check(std::slice::from_ref(&key)).unwrap_err();
    assert!(err.contains("forged or altered"), "{err}");
    let other = tmp.path().join("other.key");
    generate_hmac(&other).unwrap();
    let err = head
        .check(&[Verifier::hmac_from_file(&other, None).unwrap()])
        .unwrap_err();
    assert!(err.contains("key(s) given"), "{err}");
    let err = head
        .check(&[Verifier::ed25519_from_file(&public, None).unwrap()])
        .unwrap_err();
    assert!(err.contains("HMAC-SHA256"), "{err}");
    let err = head.check(&[]).unwrap_err();
    assert!(err.contains("--public-key"), "{err}");
    let err = Head::parse("{\"seq\":1}").unwrap_err();
    assert!(err.contains("not a keyward head"), "{err}");
}

#[tokio::test]
async fn deleting_records_or_the_last_segment_passes_the_chain_but_not_the_head() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, private, public) = keys(tmp.path());
    let audit = tmp.path().join("audit");
    {
        let log = open(
            &audit,
            Some(Signer::ed25519_from_file(&private, None).unwrap()),
            2048,
        );
        fill(&log, 40).await;
    }
    let key = [Verifier::ed25519_from_file(&public, None).unwrap()];
    let head = Head::read(&audit).unwrap().unwrap();
    assert!(verify_against(&audit, &key, &head).valid);
    let segments = list_segments(&audit).unwrap();
    assert!(segments.len() > 3, "{segments:?}");

    // Whole records cut from the tail: the chain that is left is intact.
    let newest = &segments.last().unwrap().1;
    let text = std::fs::read_to_string(newest).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 2, "{lines:?}");
    let kept = lines[..lines.len() - 2].join("\n") + "\n";
    std::fs::write(newest, kept).unwrap();
    let plain = keyward_evidence::verify(
        &audit,
        &VerifyOptions {
            keys: key.to_vec(),
            expect_head: None,
            head_source: None,
        },
    )
    .unwrap();
    assert!(
        plain.valid,
        "the chain alone cannot see this: {:?}",
        plain.errors
    );
    let anchored = verify_against(&audit, &key, &head);
    assert!(!anchored.valid);
    assert_eq!(checks(&anchored), ["expected_head"]);
    assert!(
        anchored.errors[0].message.contains("ends at seq 38")
            && anchored.errors[0].message.contains("seq 40"),
        "{:?}",
        anchored.errors
    );

    // The whole last segment deleted.
    std::fs::remove_file(newest).unwrap();
    let anchored = verify_against(&audit, &key, &head);
    assert_eq!(
        checks(&anchored),
        ["expected_head"],
        "{:?}",
        anchored.errors
    );

    // Every segment deleted.
    for (_, path) in list_segments(&audit).unwrap() {
        std::fs::remove_file(path).unwrap();
    }
    let anchored = verify_against(&audit, &key, &head);
    assert!(
        anchored.errors[0].message.contains("has no records"),
        "{:?}",
        anchored.errors
    );
}

#[tokio::test]
async fn a_tail_cut_while_closed_is_recorded_at_open_and_never_silently_continued() {
    let tmp = tempfile::tempdir().unwrap();
    let (hmac, _, _) = keys(tmp.path());
    let signer = || Some(Signer::hmac_from_file(&hmac, None).unwrap());
    let audit = tmp.path().join("audit");
    {
        let log = open(&audit, signer(), 64 << 20);
        fill(&log, 10).await;
        assert!(log.tail_problem().is_none());
    }
    let segment = list_segments(&audit).unwrap()[0].1.clone();
    let text = std::fs::read_to_string(&segment).unwrap();
    let kept: String = text.lines().take(6).map(|l| format!("{l}\n")).collect();
    std::fs::write(&segment, kept).unwrap();

    let log = open(&audit, signer(), 64 << 20);
    let problem = log.tail_problem().expect("the cut is found").clone();
    assert_eq!(problem.event, "truncation_detected");
    assert!(
        problem.message.contains("ends at seq 6") && problem.message.contains("4 record(s)"),
        "{}",
        problem.message
    );
    drop(log);
    // On record (seq 7), and the head moved past it.
    let lines = all_lines(&audit);
    let record: serde_json::Value = serde_json::from_str(&lines[6]).unwrap();
    assert_eq!(record["kind"], "admin");
    assert_eq!(record["data"]["event"], "truncation_detected");
    assert_eq!(record["data"]["head_seq"], 10);
    assert_eq!(record["data"]["log_seq"], 6);
    assert_eq!(Head::read(&audit).unwrap().unwrap().seq, 7);
    // Once recorded, the next open finds log and head agreeing.
    assert!(open(&audit, signer(), 64 << 20).tail_problem().is_none());

    // The tail cut and rewritten with as many records (unsigned, since the
    // key is not at hand): the same seq with another hash.
    let head = Head::read(&audit).unwrap().unwrap();
    let lines = all_lines(&audit);
    let mut replaced: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    replaced["hash"] = json!("0".repeat(64));
    let mut text: String = lines[..lines.len() - 1]
        .iter()
        .map(|l| format!("{l}\n"))
        .collect();
    text.push_str(&format!("{replaced}\n"));
    std::fs::write(&segment, text).unwrap();
    let log = open(&audit, signer(), 64 << 20);
    let problem = log.tail_problem().unwrap();
    assert_eq!(problem.event, "truncation_detected");
    assert!(problem.message.contains("rewritten"), "{}", problem.message);
    assert_eq!(problem.head, Some((head.seq, head.hash.clone())));
}

#[tokio::test]
async fn a_missing_or_forged_head_is_reported_at_open() {
    let tmp = tempfile::tempdir().unwrap();
    let (hmac, private, _) = keys(tmp.path());
    let signer = || Some(Signer::hmac_from_file(&hmac, None).unwrap());
    let audit = tmp.path().join("audit");
    {
        let log = open(&audit, signer(), 64 << 20);
        fill(&log, 5).await;
    }
    // Deleted together with the tail.
    std::fs::remove_file(audit.join(HEAD_FILE)).unwrap();
    let log = open(&audit, signer(), 64 << 20);
    assert_eq!(log.tail_problem().unwrap().event, "head_missing");
    drop(log);

    // Moved back to match a cut tail, without the key.
    let mut head = Head::read(&audit).unwrap().unwrap();
    head.seq -= 2;
    std::fs::write(audit.join(HEAD_FILE), serde_json::to_string(&head).unwrap()).unwrap();
    let log = open(&audit, signer(), 64 << 20);
    let problem = log.tail_problem().unwrap();
    assert_eq!(problem.event, "head_invalid");
    assert!(
        problem.message.contains("forged or altered"),
        "{}",
        problem.message
    );
    drop(log);

    // Re-signed with another key (after a key change, or by someone with
    // their own key): it cannot be trusted either.
    let other = Signer::ed25519_from_file(&private, None).unwrap();
    let head = Head::read(&audit).unwrap().unwrap();
    let resigned = Head::new(&head.log_id, head.seq, &head.hash, Some(&other));
    std::fs::write(
        audit.join(HEAD_FILE),
        serde_json::to_string(&resigned).unwrap(),
    )
    .unwrap();
    let log = open(&audit, signer(), 64 << 20);
    let problem = log.tail_problem().unwrap();
    assert_eq!(problem.event, "head_invalid");
    assert!(problem.message.contains("Ed25519"), "{}", problem.message);
    drop(log);

    // Not JSON at all.
    std::fs::write(audit.join(HEAD_FILE), "garbage").unwrap();
    let log = open(&audit, signer(), 64 << 20);
    assert_eq!(log.tail_problem().unwrap().event, "head_invalid");
    drop(log);
    // Each finding is on record, and the log still verifies.
    let events: Vec<String> = all_lines(&audit)
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["kind"] == "admin")
        .map(|r| r["data"]["event"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        events,
        [
            "head_missing",
            "head_invalid",
            "head_invalid",
            "head_invalid"
        ]
    );
    let key = Verifier::hmac_from_file(&hmac, None).unwrap();
    assert!(verify_dir(&audit, Some(&key)).unwrap().valid);
}

#[tokio::test]
async fn a_log_spanning_a_key_rotation_verifies_with_both_keys_only() {
    let tmp = tempfile::tempdir().unwrap();
    let (old_private, old_public) = generate_ed25519(&tmp.path().join("old")).unwrap();
    let (new_private, new_public) = generate_ed25519(&tmp.path().join("new")).unwrap();
    let audit = tmp.path().join("audit");
    for private in [&old_private, &new_private] {
        let log = open(
            &audit,
            Some(Signer::ed25519_from_file(private, None).unwrap()),
            64 << 20,
        );
        fill(&log, 4).await;
    }
    let old = Verifier::ed25519_from_file(&old_public, None).unwrap();
    let new = Verifier::ed25519_from_file(&new_public, None).unwrap();
    let with = |keys: &[Verifier]| {
        keyward_evidence::verify(
            &audit,
            &VerifyOptions {
                keys: keys.to_vec(),
                expect_head: None,
                head_source: None,
            },
        )
        .unwrap()
    };
    let both = with(&[old.clone(), new.clone()]);
    assert!(both.valid, "{:?}", both.errors);
    assert_eq!(both.signed_records, both.records);
    // Records 1-4 by the old key; 5 (the new key cannot vouch for the old
    // head) and 6-9 by the new one.
    let only_new = with(std::slice::from_ref(&new));
    assert_eq!(checks(&only_new), ["key_id"; 4]);
    assert!(
        only_new.errors[0].message.contains("key(s) given"),
        "{:?}",
        only_new.errors
    );
    let only_old = with(std::slice::from_ref(&old));
    assert_eq!(checks(&only_old), ["key_id"; 5]);
    assert_eq!(
        all_lines(&audit)
            .iter()
            .filter(|l| l.contains("head_invalid"))
            .count(),
        1
    );
}
