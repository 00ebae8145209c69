//! `keyward audit ...`: keys, verification, head and tail of the evidence log.
//! Offline: these read the files, so they work with the daemon stopped.

use std::io::{BufRead as _, Seek as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use keyward_config::home::Home;
use keyward_evidence::{
    Anchor, HEAD_FILE, Head, Kind, Report, Verifier, VerifyOptions, list_segments, read_log_id,
    verify,
};

use crate::cli::{AuditCommand, Cli};
use crate::exit;

pub fn audit(cli: &Cli, cmd: &AuditCommand) -> Result<ExitCode> {
    let home = || Home::resolve(cli.home.as_deref());
    match cmd {
        AuditCommand::Keygen { out, hmac } => {
            let home = home()?;
            let keys_dir = home.root().join("keys");
            if out.is_none() {
                use std::os::unix::fs::DirBuilderExt as _;
                home.ensure_private()?;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&keys_dir)
                    .with_context(|| format!("cannot create {}", keys_dir.display()))?;
            }
            if *hmac {
                let path = out
                    .clone()
                    .unwrap_or_else(|| keys_dir.join("audit-hmac.key"));
                keyward_evidence::generate_hmac(&path)?;
                println!(
                    "wrote {} (0600; keep it secret: it signs and verifies)",
                    path.display()
                );
                println!(
                    "\n[audit]\nhmac_key_file = {:?}",
                    path.display().to_string()
                );
            } else {
                let stem = out
                    .clone()
                    .unwrap_or_else(|| keys_dir.join("audit-ed25519"));
                let (private, public) = keyward_evidence::generate_ed25519(&stem)?;
                println!(
                    "wrote {} (private, 0600) and {} (public)",
                    private.display(),
                    public.display()
                );
                println!(
                    "\n[audit]\ned25519_key_file = {:?}\n\nverify with: keyward audit verify --public-key {}",
                    private.display().to_string(),
                    public.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Verify {
            dir,
            hmac_key_file,
            public_key,
            key_id,
            expect_head,
            head,
            json,
        } => {
            let dir = match dir {
                Some(d) => d.clone(),
                None => home()?.audit_dir(),
            };
            if !dir.is_dir() {
                bail!(
                    "no evidence log at {} (the daemon creates it on first start)",
                    dir.display()
                );
            }
            let keys = verifiers(hmac_key_file, public_key, key_id)?;
            // Read before the segments: a running daemon only moves the
            // head past records already on disk.
            let (anchor, head_source) = match (expect_head, head) {
                (Some(anchor), _) => (Some(anchor.clone()), "--expect-head".to_owned()),
                (None, Some(file)) => (head_anchor(file, &dir, &keys)?, file.display().to_string()),
                (None, None) => (
                    own_head(&dir, &keys),
                    dir.join(HEAD_FILE).display().to_string(),
                ),
            };
            let options = VerifyOptions {
                keys,
                expect_head: anchor,
                head_source: Some(head_source),
            };
            let report =
                verify(&dir, &options).with_context(|| format!("cannot read {}", dir.display()))?;
            if json.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_report(&report, expect_head.is_some() || head.is_some());
            }
            Ok(if report.valid {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(exit::FAILURE)
            })
        }
        AuditCommand::Head { dir, json } => {
            let dir = match dir {
                Some(d) => d.clone(),
                None => home()?.audit_dir(),
            };
            let head = Head::read(&dir).map_err(anyhow::Error::msg)?.with_context(|| {
                format!(
                    "no head checkpoint at {} (the daemon writes it after each fsync of the log; start it once)",
                    dir.join(HEAD_FILE).display()
                )
            })?;
            if json.json {
                println!("{}", serde_json::to_string(&head)?);
            } else {
                print_head(&head);
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Tail {
            n,
            follow,
            kind,
            run,
            dir,
            json,
        } => {
            if let Some(k) = kind
                && Kind::parse(k).is_none()
            {
                bail!(
                    "unknown kind {k:?}: expected one of {}",
                    Kind::ALL.map(Kind::as_str).join(", ")
                );
            }
            let dir = match dir {
                Some(d) => d.clone(),
                None => home()?.audit_dir(),
            };
            let filter = Filter {
                kind: kind.clone(),
                run: run.clone(),
                json: *json,
            };
            tail(&dir, *n, *follow, &filter)
        }
    }
}

/// The keys `audit verify` checks signatures with: each `--key-id`
/// belongs to the key in the same position (HMAC keys first).
fn verifiers(hmac: &[PathBuf], public: &[PathBuf], key_ids: &[String]) -> Result<Vec<Verifier>> {
    let count = hmac.len() + public.len();
    // No key file named: the key in the environment, as the daemon reads
    // it (`--key-id` may then be given once, for it).
    if count == 0
        && key_ids.len() <= 1
        && let Some(from_env) = Verifier::hmac_from_env(key_ids.first().map(String::as_str))
    {
        return Ok(vec![from_env?]);
    }
    if !key_ids.is_empty() && key_ids.len() != count {
        usage_error(&format!(
            "--key-id was given {} time(s) for {count} key(s): give it once per key \
             (in the order of --hmac-key-file, then --public-key), or not at all",
            key_ids.len()
        ));
    }
    let id = |i: usize| key_ids.get(i).map(String::as_str);
    let mut keys = Vec::with_capacity(count);
    for (i, f) in hmac.iter().enumerate() {
        keys.push(Verifier::hmac_from_file(f, id(i))?);
    }
    for (i, f) in public.iter().enumerate() {
        keys.push(Verifier::ed25519_from_file(f, id(hmac.len() + i))?);
    }
    Ok(keys)
}

/// Exits with clap's usage error (status 2), like a bad flag.
fn usage_error(message: &str) -> ! {
    use clap::CommandFactory as _;
    Cli::command()
        .error(clap::error::ErrorKind::ArgumentConflict, message)
        .exit()
}

/// The record a head file saved elsewhere names, once its signature checks
/// out with `keys` and it belongs to the log in `dir`.
fn head_anchor(file: &Path, dir: &Path, keys: &[Verifier]) -> Result<Option<Anchor>> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the head file {}", file.display()))?;
    let head = Head::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    head.check(keys)
        .map_err(|e| anyhow::anyhow!("{}: refused: {e}", file.display()))?;
    if let Some(log_id) = read_log_id(dir)
        && log_id != head.log_id
    {
        bail!(
            "{}: refused: it is the head of log {:?}, but {} holds log {log_id:?}",
            file.display(),
            head.log_id,
            dir.display()
        );
    }
    Ok(head.anchor())
}

/// The record the log's own head checkpoint names, when it can be trusted
/// as far as it goes: signed by one of `keys` (or unsigned, with none)
/// and of this log. It catches a tail cut by someone who left the head
/// alone; someone who can also delete the head or put back an older one
/// is caught only by a head stored elsewhere.
fn own_head(dir: &Path, keys: &[Verifier]) -> Option<Anchor> {
    let why = match Head::read(dir) {
        Ok(None) => format!("there is no {HEAD_FILE}"),
        Ok(Some(head)) => match head.check(keys) {
            Ok(()) if read_log_id(dir).is_none_or(|id| id == head.log_id) => {
                return head.anchor();
            }
            Ok(()) => "it names another log".to_owned(),
            Err(e) => e,
        },
        Err(e) => e,
    };
    eprintln!(
        "keyward: note: the log's own head checkpoint is not used ({why}); \
         records deleted from the tail can go unnoticed"
    );
    None
}

fn print_head(head: &Head) {
    let signed = head.sig.as_ref().map_or("unsigned".to_owned(), |s| {
        format!("signed {} by key {:?}", s.alg, s.key_id)
    });
    match head.anchor() {
        Some(anchor) => println!("{anchor}"),
        None => println!("(no records yet)"),
    }
    println!(
        "  seq {} of log {}, written {}, {signed}\n  \
         check later with: keyward audit verify --expect-head {}:{} (or save `keyward audit head --json` and use --head FILE)",
        head.seq, head.log_id, head.ts, head.seq, head.hash
    );
}

/// `anchored_elsewhere`: the expected head came from the command line
/// (`--expect-head`, `--head`), not from the log's own directory.
fn print_report(report: &Report, anchored_elsewhere: bool) {
    for e in &report.errors {
        println!("{}:{}: {}: {}", e.segment, e.line, e.check, e.message);
    }
    let range = match (report.first_seq, report.last_seq) {
        (Some(a), Some(b)) => format!("seq {a}..{b}"),
        _ => "no records".to_owned(),
    };
    println!(
        "{}: {} — {} records ({} signed), {range}, {} segment(s){}{}{}",
        report.path.display(),
        if report.valid { "valid" } else { "INVALID" },
        report.records,
        report.signed_records,
        report.segments,
        report
            .expected_head
            .as_ref()
            .map_or(String::new(), |h| format!(
                ", expected head {h} (from {})",
                report.head_source.as_deref().unwrap_or("?")
            )),
        if report.error_count > 0 {
            format!(", {} error(s)", report.error_count)
        } else {
            String::new()
        },
        if report.torn_files.is_empty() {
            String::new()
        } else {
            format!(
                "; torn tails moved aside at a restart: {}",
                report.torn_files.join(", ")
            )
        }
    );
    if !anchored_elsewhere {
        println!(
            "  (records deleted from the end of the log, with its head checkpoint deleted or put back \
             to an older one, leave no trace here: check against a head stored elsewhere with \
             --expect-head or --head)"
        );
    }
}

struct Filter {
    kind: Option<String>,
    run: Option<String>,
    json: bool,
}

impl Filter {
    /// The printed form of `line`, or `None` when filtered out.
    fn render(&self, line: &str) -> Option<String> {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        if self.kind.as_deref().is_some_and(|k| v["kind"] != k) {
            return None;
        }
        if self.run.as_deref().is_some_and(|r| v["run_id"] != r) {
            return None;
        }
        if self.json {
            return Some(line.to_owned());
        }
        Some(format!(
            "{:>6} {} {:<8} {} {}",
            v["seq"],
            v["ts"].as_str().unwrap_or("?"),
            v["kind"].as_str().unwrap_or("?"),
            v["run_id"].as_str().unwrap_or("-"),
            v["data"]
        ))
    }
}

fn tail(dir: &Path, n: usize, follow: bool, filter: &Filter) -> Result<ExitCode> {
    let segments = if dir.is_dir() {
        list_segments(dir).with_context(|| format!("cannot read {}", dir.display()))?
    } else if follow {
        Vec::new()
    } else {
        bail!(
            "no evidence log at {} (the daemon creates it on first start)",
            dir.display()
        );
    };
    // Newest segments first until n records matched.
    let mut shown: Vec<String> = Vec::new();
    for (_, path) in segments.iter().rev() {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut here: Vec<String> = text.lines().filter_map(|l| filter.render(l)).collect();
        here.append(&mut shown);
        shown = here;
        if shown.len() >= n {
            break;
        }
    }
    let skip = shown.len().saturating_sub(n);
    for line in &shown[skip..] {
        println!("{line}");
    }
    if !follow {
        return Ok(ExitCode::SUCCESS);
    }
    follow_log(dir, segments.last().map(|(n, p)| (*n, p.clone())), filter)
}

/// Prints records as they are appended, moving to new segments as the log
/// rotates. Runs until interrupted.
fn follow_log(
    dir: &Path,
    mut current: Option<(u32, PathBuf)>,
    filter: &Filter,
) -> Result<ExitCode> {
    use std::io::Write as _;
    let mut offset = current
        .as_ref()
        .and_then(|(_, p)| std::fs::metadata(p).ok())
        .map_or(0, |m| m.len());
    let mut partial = String::new();
    loop {
        if let Some((_, path)) = &current
            && let Ok(mut file) = std::fs::File::open(path)
        {
            file.seek(std::io::SeekFrom::Start(offset))?;
            let mut reader = std::io::BufReader::new(file);
            let mut line = String::new();
            while reader.read_line(&mut line)? > 0 {
                offset += line.len() as u64;
                if line.ends_with('\n') {
                    partial.push_str(&line);
                    if let Some(out) = filter.render(partial.trim_end()) {
                        println!("{out}");
                    }
                    partial.clear();
                } else {
                    partial.push_str(&line);
                }
                line.clear();
            }
            std::io::stdout().flush()?;
        }
        let newest = list_segments(dir).unwrap_or_default().pop();
        if newest.as_ref().map(|(n, _)| *n) > current.as_ref().map(|(n, _)| *n) {
            // The writer moved on only after finishing this segment.
            current = newest;
            offset = 0;
            continue;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
