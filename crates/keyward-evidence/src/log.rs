//! The writer: one thread owns the current segment and writes records as
//! they arrive over a channel; a second thread fsyncs what has been written
//! and acknowledges each record only once an fsync covers it. Records that
//! arrive while an fsync runs share the next one (group commit).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::head::Head;
use crate::keys::Signer;
use crate::record::{Body, Kind, Payload};

/// Default segment size before rotation: 64 MiB.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// The most records one group commit takes.
const MAX_BATCH: usize = 4096;
/// How long an fsync may wait for records announced as on their way
/// ([`EvidenceLog::reserve`]) so they share it: about one fsync here.
const GATHER: Duration = Duration::from_micros(400);
/// How long records no answer waits on ([`EvidenceLog::append_background`],
/// [`EvidenceLog::record`]) may stay unsynced so that many share an fsync.
const BACKGROUND_SYNC: Duration = Duration::from_millis(10);
/// How long the writer lets such records gather between writes.
const BACKGROUND_WRITE: Duration = Duration::from_millis(1);
/// The least time between two head checkpoint writes while the log is
/// open: the head lags the synced records by at most this, plus a write.
const HEAD_INTERVAL: Duration = Duration::from_millis(100);
/// While writes fail, how often the writer looks for free space again, so
/// the proxy's refusals end soon after space comes back.
const PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// The space a probe reserves at the end of the segment: room for the next
/// records (any later write fills it).
const PROBE_BYTES: u64 = 64 * 1024;

/// An evidence log problem.
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    /// Reading or writing the log failed.
    #[error("evidence log {path}: {message}")]
    Io {
        /// File or directory.
        path: String,
        /// What failed.
        message: String,
    },
    /// A complete record in the newest segment does not parse: that is not a
    /// crash artefact, so keyward refuses to write after it.
    #[error(
        "evidence log {path}, line {line}: the last record is damaged ({message}); \
         run `keyward audit verify` and move the damaged segment aside"
    )]
    Corrupt {
        /// Segment.
        path: String,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The writer stopped (the daemon is shutting down).
    #[error("the evidence log is closed")]
    Closed,
}

/// `keyward-evidence://<log_id>/<seq>`.
fn reference(log_id: &str, seq: u64) -> String {
    format!("keyward-evidence://{log_id}/{seq}")
}

/// A record that did not reach the disk in `dir`, and why.
fn lost(dir: &Path, message: String) -> EvidenceError {
    EvidenceError::Io {
        path: dir.display().to_string(),
        message,
    }
}

fn io_err(path: &Path, what: &str, e: std::io::Error) -> EvidenceError {
    EvidenceError::Io {
        path: path.display().to_string(),
        message: format!("{what}: {e}"),
    }
}

/// Where the log lives and how it signs.
pub struct LogOptions {
    /// `<home>/audit`.
    pub dir: PathBuf,
    /// `None`: records are hash-chained but unsigned.
    pub signer: Option<Signer>,
    /// Rotate after this many bytes.
    pub segment_bytes: u64,
}

/// What `open` had to repair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repair {
    /// The segment whose last line was torn.
    pub segment: PathBuf,
    /// Where the torn bytes went.
    pub moved_to: PathBuf,
    /// How many bytes.
    pub bytes: u64,
}

/// How the log's end disagreed with its head checkpoint at open. The log
/// is opened anyway (refusing would stop every decision), but the problem
/// is recorded as an `admin` record (its `event`) and reported until the
/// daemon stops ([`EvidenceLog::tail_problem`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailProblem {
    /// `truncation_detected` (the log ends before the head, or its last
    /// record is not the head's), `head_missing` (records but no head) or
    /// `head_invalid` (a head that does not parse, names another log, or
    /// whose signature the log's key does not verify).
    pub event: &'static str,
    /// What was found and what it means, for people.
    pub message: String,
    /// The head's (seq, hash), when it could be read.
    pub head: Option<(u64, String)>,
    /// The log's last (seq, hash) as found.
    pub last: (u64, String),
}

impl TailProblem {
    fn record(&self) -> Value {
        json!({
            "event": self.event,
            "message": self.message,
            "head_seq": self.head.as_ref().map(|h| h.0),
            "head_hash": self.head.as_ref().map(|h| h.1.as_str()),
            "log_seq": self.last.0,
            "log_hash": self.last.1,
        })
    }
}

/// Compares the log's last record with `<dir>/head.json`.
fn check_head(
    dir: &Path,
    log_id: &str,
    signer: Option<&Signer>,
    last: &(u64, String),
) -> Option<TailProblem> {
    let problem = |event, message: String, head: Option<&Head>| TailProblem {
        event,
        message,
        head: head.map(|h| (h.seq, h.hash.clone())),
        last: last.clone(),
    };
    let head = match Head::read(dir) {
        Ok(Some(head)) => head,
        Ok(None) if last.0 == 0 => return None,
        Ok(None) => {
            return Some(problem(
                "head_missing",
                format!(
                    "the evidence log has {} record(s) but no head checkpoint ({}): records at its tail may \
                     have been deleted along with it (expected once, after upgrading from a keyward without checkpoints)",
                    last.0,
                    crate::HEAD_FILE
                ),
                None,
            ));
        }
        Err(e) => {
            return Some(problem(
                "head_invalid",
                format!(
                    "the evidence log's head checkpoint is unreadable ({e}): its tail cannot be checked"
                ),
                None,
            ));
        }
    };
    let untrusted = if head.log_id != log_id {
        Some(format!(
            "it belongs to log {:?}, not {log_id:?}",
            head.log_id
        ))
    } else {
        match (signer, &head.sig) {
            (None, None) => None,
            (None, Some(_)) => Some("it is signed, but the log no longer is".to_owned()),
            (Some(signer), _) => head.check(&[signer.verifier()]).err(),
        }
    };
    if let Some(why) = untrusted {
        return Some(problem(
            "head_invalid",
            format!(
                "the evidence log's head checkpoint cannot be trusted ({why}); it names seq {}, the log ends at seq {}: \
                 the tail cannot be checked (expected once after changing the signing key)",
                head.seq, last.0
            ),
            Some(&head),
        ));
    }
    if last.0 < head.seq {
        return Some(problem(
            "truncation_detected",
            format!(
                "the evidence log ends at seq {} but its head checkpoint (written {}) names seq {}: \
                 {} record(s) were deleted from its tail",
                last.0,
                head.ts,
                head.seq,
                head.seq - last.0
            ),
            Some(&head),
        ));
    }
    if last.0 == head.seq && last.1 != head.hash {
        return Some(problem(
            "truncation_detected",
            format!(
                "the evidence log's last record (seq {}) is not the one its head checkpoint names: \
                 its tail was cut and rewritten",
                last.0
            ),
            Some(&head),
        ));
    }
    None
}

/// The name of segment `n`.
pub fn segment_name(n: u32) -> String {
    format!("evidence-{n:06}.jsonl")
}

/// The segments in `dir`, oldest first, with their numbers.
pub fn list_segments(dir: &Path) -> std::io::Result<Vec<(u32, PathBuf)>> {
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(n) = name
            .strip_prefix("evidence-")
            .and_then(|r| r.strip_suffix(".jsonl"))
            .filter(|n| n.len() == 6 && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse().ok())
        {
            segments.push((n, entry.path()));
        }
    }
    segments.sort();
    Ok(segments)
}

/// The log id in `<dir>/log_id`, if the log exists.
pub fn read_log_id(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join("log_id"))
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// Who hears that a record is on disk (its sequence number) or lost.
enum Ack {
    /// An `append` caller waiting for its answer.
    Waiter(oneshot::Sender<Result<u64, String>>),
    /// A callback run on the sync thread ([`EvidenceLog::append_then`]).
    Then(Box<dyn FnOnce(Result<u64, String>) + Send>),
}

impl Ack {
    fn send(self, outcome: Result<u64, String>) {
        match self {
            Self::Waiter(tx) => {
                let _ = tx.send(outcome);
            }
            // A panicking callback must not take the sync thread down.
            Self::Then(then) => {
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| then(outcome))).is_err()
                {
                    tracing::error!("an evidence log callback panicked");
                }
            }
        }
    }
}

struct Job {
    kind: Kind,
    run_id: Option<String>,
    data: Payload,
    ack: Option<Ack>,
    /// Released once the record is written.
    slot: Option<Slot>,
    /// Someone's answer waits for this record's fsync.
    urgent: bool,
}

/// The open log. Dropping it flushes every queued record and stops the writer.
pub struct EvidenceLog {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    log_id: String,
    dir: PathBuf,
    durability: Arc<Durability>,
    tail_problem: Option<TailProblem>,
}

impl std::fmt::Debug for EvidenceLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EvidenceLog({})", self.dir.display())
    }
}

struct Writer {
    dir: PathBuf,
    signer: Option<Arc<Signer>>,
    segment_bytes: u64,
    segment: u32,
    file: File,
    len: u64,
    seq: u64,
    prev_hash: String,
    scratch: String,
    /// The last write failed; see `probe`.
    write_failed: bool,
    durability: Arc<Durability>,
}

impl EvidenceLog {
    /// Opens (or creates) the log in `options.dir`, repairing a torn last
    /// line, and starts the writer thread.
    pub fn open(options: LogOptions) -> Result<(Self, Option<Repair>), EvidenceError> {
        let dir = options.dir;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| io_err(&dir, "cannot create the directory", e))?;
        let log_id = match read_log_id(&dir) {
            Some(id) => id,
            None => {
                let id = hex::encode(rand::random::<[u8; 8]>());
                crate::write_durably(&dir.join("log_id"), format!("{id}\n").as_bytes(), 0o600)
                    .map_err(|e| io_err(&dir.join("log_id"), "cannot write", e))?;
                id
            }
        };
        let segments = list_segments(&dir).map_err(|e| io_err(&dir, "cannot list", e))?;
        let mut repair = None;
        let (segment, seq, prev_hash) = match segments.last() {
            None => (1, 0, String::new()),
            Some((n, path)) => {
                repair = repair_torn_tail(path)?;
                let mut last = last_record(path)?;
                // A fresh (empty) newest segment: the chain ends in the one before.
                if last.is_none() && segments.len() > 1 {
                    last = last_record(&segments[segments.len() - 2].1)?;
                }
                let (seq, hash) = last.unwrap_or((0, String::new()));
                (*n, seq, hash)
            }
        };
        let signer = options.signer.map(Arc::new);
        let tail_problem = check_head(&dir, &log_id, signer.as_deref(), &(seq, prev_hash.clone()));
        let path = dir.join(segment_name(segment));
        let file = open_append(&path)?;
        let len = file
            .metadata()
            .map_err(|e| io_err(&path, "cannot stat", e))?
            .len();
        if segments.is_empty() {
            sync_dir(&dir)?;
        }
        let shared = file
            .try_clone()
            .map_err(|e| io_err(&path, "cannot open", e))?;
        let durability = Arc::new(Durability {
            state: Mutex::new(SyncState {
                written: seq,
                written_hash: prev_hash.clone(),
                urgent: seq,
                waiting: VecDeque::new(),
                file: Arc::new(shared),
                failed: None,
                write_error: None,
                closing: false,
            }),
            wake: Condvar::new(),
            on_the_way: AtomicUsize::new(0),
            unwritable: AtomicBool::new(false),
            head: HeadKeeper {
                dir: dir.clone(),
                log_id: log_id.clone(),
                signer: signer.clone(),
                offer: Mutex::new(HeadOffer::default()),
                wake: Condvar::new(),
            },
        });
        let mut writer = Writer {
            durability: durability.clone(),
            dir: dir.clone(),
            signer,
            segment_bytes: options.segment_bytes.max(1),
            segment,
            file,
            len,
            seq,
            prev_hash,
            scratch: String::new(),
            write_failed: false,
        };
        let mut found = Vec::new();
        if let Some(r) = &repair {
            tracing::warn!(
                segment = %r.segment.display(),
                moved_to = %r.moved_to.display(),
                bytes = r.bytes,
                "evidence log: a torn last record (crash mid-write) was moved aside; the chain continues"
            );
            found.push(json!({
                "event": "torn_tail_repaired",
                "segment": r.segment.file_name().map(|n| n.to_string_lossy().into_owned()),
                "moved_to": r.moved_to.file_name().map(|n| n.to_string_lossy().into_owned()),
                "bytes": r.bytes,
            }));
        }
        if let Some(problem) = &tail_problem {
            tracing::warn!("{}", problem.message);
            found.push(problem.record());
        }
        if !found.is_empty() {
            writer.commit_now(found).map_err(|e| lost(&dir, e))?;
        }
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("keyward-evidence".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| io_err(&dir, "cannot start the writer thread", e))?;
        Ok((
            Self {
                tx: Some(tx),
                thread: Some(thread),
                log_id,
                dir,
                durability,
                tail_problem,
            },
            repair,
        ))
    }

    /// How the log's end disagreed with its head checkpoint when it was
    /// opened, if it did (already recorded in the log).
    pub fn tail_problem(&self) -> Option<&TailProblem> {
        self.tail_problem.as_ref()
    }

    /// Why records cannot be written now, if they cannot: the last write
    /// failed (a full disk; cleared by the next write that succeeds, or as
    /// soon as the writer finds room again) or an fsync failed (until a
    /// restart). Cheap enough to ask per request.
    pub fn unwritable(&self) -> Option<String> {
        if !self.durability.unwritable.load(Ordering::Acquire) {
            return None;
        }
        let state = self.durability.lock();
        state.failed.clone().or_else(|| state.write_error.clone())
    }

    /// The log id (random, created with the log).
    pub fn log_id(&self) -> &str {
        &self.log_id
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `keyward-evidence://<log_id>/<seq>`.
    pub fn reference(&self, seq: u64) -> String {
        reference(&self.log_id, seq)
    }

    /// Appends a record and waits until it is on disk (fsync). Returns its
    /// evidence reference.
    pub async fn append(
        &self,
        kind: Kind,
        run_id: Option<String>,
        data: Value,
    ) -> Result<String, EvidenceError> {
        self.append_in(None, kind, run_id, data).await
    }

    /// Appends a record no answer waits on (a proxied request's, logged
    /// after the response has gone) and returns at once; `then` runs on the
    /// log's sync thread once the record is on disk, with its reference, or
    /// with the error. Its write and fsync may be held back a little (up to
    /// 10 ms) so that many such records share them: a busy proxy does not
    /// spend a core on fsyncs.
    pub fn append_then(
        &self,
        kind: Kind,
        run_id: Option<String>,
        data: impl Into<Payload>,
        then: impl FnOnce(Result<String, EvidenceError>) + Send + 'static,
    ) {
        let (log_id, dir) = (self.log_id.clone(), self.dir.clone());
        let ack = Ack::Then(Box::new(move |outcome: Result<u64, String>| {
            then(
                outcome
                    .map(|seq| reference(&log_id, seq))
                    .map_err(|message| lost(&dir, message)),
            );
        }));
        let job = Job {
            kind,
            run_id,
            data: data.into(),
            ack: Some(ack),
            slot: None,
            urgent: false,
        };
        if let Err(job) = self.queue(job)
            && let Some(ack) = job.ack
        {
            ack.send(Err(EvidenceError::Closed.to_string()));
        }
    }

    /// Announces a record that will be appended shortly (a request being
    /// decided): until it is appended or the slot dropped, an fsync may
    /// wait for it a little so that concurrent callers share one fsync.
    pub fn reserve(&self) -> Slot {
        self.durability.on_the_way.fetch_add(1, Ordering::AcqRel);
        Slot {
            durability: self.durability.clone(),
        }
    }

    /// [`append`](Self::append) of a record announced with
    /// [`reserve`](Self::reserve).
    pub async fn append_reserved(
        &self,
        slot: Slot,
        kind: Kind,
        run_id: Option<String>,
        data: Value,
    ) -> Result<String, EvidenceError> {
        self.append_in(Some(slot), kind, run_id, data).await
    }

    async fn append_in(
        &self,
        slot: Option<Slot>,
        kind: Kind,
        run_id: Option<String>,
        data: Value,
    ) -> Result<String, EvidenceError> {
        let (ack, done) = oneshot::channel();
        self.send(Job {
            kind,
            run_id,
            data: data.into(),
            ack: Some(Ack::Waiter(ack)),
            slot,
            urgent: true,
        })?;
        match done.await {
            Ok(outcome) => outcome
                .map(|seq| self.reference(seq))
                .map_err(|message| lost(&self.dir, message)),
            Err(_) => Err(EvidenceError::Closed),
        }
    }

    /// Appends a record without waiting for it (written and synced like
    /// [`append_then`](Self::append_then)'s).
    pub fn record(&self, kind: Kind, run_id: Option<String>, data: Value) {
        let _ = self.send(Job {
            kind,
            run_id,
            data: data.into(),
            ack: None,
            slot: None,
            urgent: false,
        });
    }

    fn send(&self, job: Job) -> Result<(), EvidenceError> {
        self.queue(job).map_err(|_| EvidenceError::Closed)
    }

    /// Queues `job` for the writer, waking it at once only when someone's
    /// answer waits on the record (see `Writer::run`). A closed log gives
    /// the job back.
    fn queue(&self, job: Job) -> Result<(), Box<Job>> {
        let Some(tx) = self.tx.as_ref() else {
            return Err(Box::new(job));
        };
        let urgent = job.urgent;
        tx.send(job).map_err(|e| Box::new(e.0))?;
        if urgent && let Some(thread) = &self.thread {
            thread.thread().unpark();
        }
        Ok(())
    }
}

impl Drop for EvidenceLog {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What the writer and the syncer share. The writer writes records as
/// they come; the syncer fsyncs whatever has been written and acknowledges
/// every record the fsync covered. Records that arrive during an fsync ride
/// the next one, so a group grows to everything waiting (group commit).
struct Durability {
    state: Mutex<SyncState>,
    wake: Condvar,
    /// Reserved records not yet written ([`EvidenceLog::reserve`]).
    on_the_way: AtomicUsize,
    /// The last write or an fsync failed (the reason is in [`SyncState`]):
    /// read on every proxied request, so not behind the lock.
    unwritable: AtomicBool,
    /// Where the syncer records what each fsync covered.
    head: HeadKeeper,
}

/// Keeps the head checkpoint: after each fsync the syncer offers the last
/// record it covered, and a thread of its own writes the newest offer (at
/// most once per [`HEAD_INTERVAL`], and at once when the log closes),
/// signed with the log's key, so the syncer's next fsync never waits for
/// the head's. Offers made while a write is under way are folded into the
/// next one. The head never names a record that is not on disk; after a
/// crash it may lag the log, never lead it.
struct HeadKeeper {
    dir: PathBuf,
    log_id: String,
    signer: Option<Arc<Signer>>,
    offer: Mutex<HeadOffer>,
    wake: Condvar,
}

#[derive(Default)]
struct HeadOffer {
    /// The newest synced (seq, hash) not yet in the head.
    newest: Option<(u64, String)>,
    /// The log is closing: write what is offered, then stop.
    closing: bool,
}

impl HeadKeeper {
    fn write(&self, seq: u64, hash: &str) -> std::io::Result<()> {
        Head::new(&self.log_id, seq, hash, self.signer.as_deref()).write(&self.dir)
    }

    fn lock(&self) -> MutexGuard<'_, HeadOffer> {
        self.offer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn offer(&self, seq: u64, hash: String) {
        self.lock().newest = Some((seq, hash));
        self.wake.notify_one();
    }

    fn close(&self) {
        self.lock().closing = true;
        self.wake.notify_one();
    }

    fn run(&self) {
        // Logged once per run of failures, not once per fsync.
        let mut failing = false;
        let mut last_write: Option<std::time::Instant> = None;
        loop {
            let mut offer = self
                .wake
                .wait_while(self.lock(), |o| o.newest.is_none() && !o.closing)
                .unwrap_or_else(|p| p.into_inner());
            // At most one head write per HEAD_INTERVAL while records keep
            // coming: each costs two fsyncs and a rename, which a busy
            // proxy would otherwise pay about once per group of records.
            // Closing writes at once.
            if let Some(wait) = last_write.and_then(|at| HEAD_INTERVAL.checked_sub(at.elapsed())) {
                offer = self
                    .wake
                    .wait_timeout_while(offer, wait, |o| !o.closing)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            let next = offer.newest.take();
            drop(offer);
            last_write = Some(std::time::Instant::now());
            let Some((seq, hash)) = next else { return };
            match self.write(seq, &hash) {
                Ok(()) => failing = false,
                Err(e) if !failing => {
                    failing = true;
                    tracing::error!(
                        "evidence log: cannot write the head checkpoint: {e}; records are still written"
                    );
                }
                Err(_) => {}
            }
        }
    }
}

/// A record on its way to the log; see [`EvidenceLog::reserve`].
pub struct Slot {
    durability: Arc<Durability>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.durability.on_the_way.fetch_sub(1, Ordering::AcqRel) == 1 {
            // Under the lock, so a syncer about to wait cannot miss it.
            drop(self.durability.lock());
            self.durability.wake.notify_all();
        }
    }
}

struct SyncState {
    /// The highest sequence number written to a segment.
    written: u64,
    /// That record's hash.
    written_hash: String,
    /// The highest written sequence number whose fsync someone's answer
    /// waits for.
    urgent: u64,
    /// Acknowledgements waiting for an fsync, in sequence order.
    waiting: VecDeque<(u64, Ack)>,
    /// The segment the newest records are in.
    file: Arc<File>,
    /// Set when an fsync failed: what reached the disk is unknown, so the
    /// log refuses further records until the daemon restarts.
    failed: Option<String>,
    /// Why the last write failed (a full disk, say); cleared by the next
    /// write that succeeds.
    write_error: Option<String>,
    /// The writer is gone; sync what is left and stop.
    closing: bool,
}

impl Durability {
    fn lock(&self) -> MutexGuard<'_, SyncState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits, at most `limit`, while `wait` holds and the writer is open;
    /// the writer and released slots wake it to look again.
    fn hold<'a>(
        &self,
        state: MutexGuard<'a, SyncState>,
        limit: Duration,
        wait: impl Fn(&SyncState) -> bool,
    ) -> MutexGuard<'a, SyncState> {
        self.wake
            .wait_timeout_while(state, limit, |s| !s.closing && wait(s))
            .unwrap_or_else(|p| p.into_inner())
            .0
    }
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Job>) {
        let durability = self.durability.clone();
        let head_keeper = std::thread::Builder::new()
            .name("keyward-evidence-head".into())
            .spawn(move || durability.head.run());
        if let Err(e) = &head_keeper {
            tracing::error!(
                "evidence log: cannot start the head checkpoint thread: {e}; the head stays where it is"
            );
        }
        let durability = self.durability.clone();
        let synced = self.seq;
        let syncer = std::thread::Builder::new()
            .name("keyward-evidence-sync".into())
            .spawn(move || sync_loop(&durability, synced));
        if let Err(e) = &syncer {
            // Nobody would ever acknowledge: refuse records instead.
            self.durability.lock().failed = Some(format!("cannot start the sync thread: {e}"));
            self.durability.unwritable.store(true, Ordering::Release);
        }
        loop {
            let first = if self.write_failed {
                match rx.recv_timeout(PROBE_INTERVAL) {
                    Ok(job) => job,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        self.probe();
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match rx.recv() {
                    Ok(job) => job,
                    Err(_) => break,
                }
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            let urgent = batch.iter().any(|job| job.urgent);
            if let Err(e) = self.commit(batch) {
                tracing::error!("evidence log write failed: {e}");
            }
            if !urgent {
                // Only records nobody waits on: let more gather before the
                // next write (an urgent record unparks this thread).
                std::thread::park_timeout(BACKGROUND_WRITE);
            }
        }
        self.durability.lock().closing = true;
        self.durability.wake.notify_all();
        if let Ok(handle) = syncer {
            let _ = handle.join();
        }
        // Everything is synced: the head takes the last offer and stops.
        self.durability.head.close();
        if let Ok(handle) = head_keeper {
            let _ = handle.join();
        }
    }

    /// Writes `batch` (no fsync: the syncer does that) and hands its
    /// acknowledgements to the syncer. On a write failure the segment is cut
    /// back to its last complete record and the chain state restored, so a
    /// failed write leaves no partial record behind.
    fn commit(&mut self, batch: Vec<Job>) -> Result<(), String> {
        let failed = self.durability.lock().failed.clone();
        if let Some(e) = failed {
            for job in batch {
                if let Some(ack) = job.ack {
                    ack.send(Err(e.clone()));
                }
            }
            return Err(e);
        }
        let mut buf = String::new();
        let mut pending: Vec<(Option<Ack>, u64)> = Vec::new();
        let mut urgent = 0;
        // Released (below) only once their records are handed over.
        let mut slots: Vec<Slot> = Vec::new();
        let mut checkpoint = (self.seq, self.prev_hash.clone());
        let ts = humantime::format_rfc3339_nanos(SystemTime::now()).to_string();
        let mut jobs = batch.into_iter();
        while let Some(job) = jobs.next() {
            let body = Body {
                seq: self.seq + 1,
                ts: &ts,
                kind: job.kind.as_str(),
                run_id: job.run_id.as_deref(),
                data: job.data.as_data(),
                prev_hash: &self.prev_hash,
            };
            let (line, hash) = body.seal(self.signer.as_deref(), &mut self.scratch);
            let grown = self.len + buf.len() as u64;
            if grown > 0 && grown + line.len() as u64 + 1 > self.segment_bytes {
                if let Err(e) = self.write(&buf) {
                    return self.fail(e, checkpoint, pending);
                }
                self.hand_over(&mut pending, urgent);
                buf.clear();
                checkpoint = (self.seq, self.prev_hash.clone());
                if let Err(e) = self.rotate() {
                    // This record and the rest of the batch are not written.
                    pending.extend(std::iter::once(job).chain(jobs).map(|j| (j.ack, 0)));
                    return self.fail(e, checkpoint, pending);
                }
            }
            buf.push_str(&line);
            buf.push('\n');
            self.seq += 1;
            self.prev_hash = hash;
            pending.push((job.ack, self.seq));
            slots.extend(job.slot);
            if job.urgent {
                urgent = self.seq;
            }
        }
        if let Err(e) = self.write(&buf) {
            return self.fail(e, checkpoint, pending);
        }
        self.hand_over(&mut pending, urgent);
        drop(slots);
        Ok(())
    }

    /// Writes `admin` records found at open (before any other record),
    /// syncs them and moves the head checkpoint past them.
    fn commit_now(&mut self, records: Vec<Value>) -> Result<(), String> {
        let jobs = records
            .into_iter()
            .map(|data| Job {
                kind: Kind::Admin,
                run_id: None,
                data: data.into(),
                ack: None,
                slot: None,
                urgent: true,
            })
            .collect();
        self.commit(jobs)?;
        self.file.sync_data().map_err(|e| e.to_string())?;
        self.durability
            .head
            .write(self.seq, &self.prev_hash)
            .map_err(|e| format!("cannot write the head checkpoint: {e}"))
    }

    fn write(&mut self, buf: &str) -> Result<(), String> {
        if buf.is_empty() {
            return Ok(());
        }
        self.file.write_all(buf.as_bytes()).map_err(|e| {
            let path = self.dir.join(segment_name(self.segment));
            format!("cannot write {}: {e}", path.display())
        })?;
        self.len += buf.len() as u64;
        Ok(())
    }

    /// After a failed write: when the segment has room for more records
    /// again, writes are accepted again (before any record proves it).
    fn probe(&mut self) {
        if keyward_sys::reserve_space(&self.file, self.len, PROBE_BYTES).is_ok() {
            tracing::info!("evidence log: there is space again; records are accepted");
            self.writes_resumed();
        }
    }

    fn writes_resumed(&mut self) {
        self.write_failed = false;
        let mut state = self.durability.lock();
        state.write_error = None;
        self.durability
            .unwritable
            .store(state.failed.is_some(), Ordering::Release);
    }

    /// Gives written records to the syncer.
    fn hand_over(&mut self, pending: &mut Vec<(Option<Ack>, u64)>, urgent: u64) {
        let mut state = self.durability.lock();
        state.written = self.seq;
        state.written_hash.clone_from(&self.prev_hash);
        state.urgent = state.urgent.max(urgent);
        for (ack, seq) in pending.drain(..) {
            if let Some(ack) = ack {
                state.waiting.push_back((seq, ack));
            }
        }
        drop(state);
        self.durability.wake.notify_one();
        if self.write_failed {
            tracing::info!("evidence log: writes succeed again");
            self.writes_resumed();
        }
    }

    fn fail(
        &mut self,
        e: String,
        checkpoint: (u64, String),
        pending: Vec<(Option<Ack>, u64)>,
    ) -> Result<(), String> {
        // Cut off whatever part of the group reached the file.
        let _ = self.file.set_len(self.len);
        let _ = self.file.seek(SeekFrom::End(0));
        (self.seq, self.prev_hash) = checkpoint;
        self.write_failed = true;
        self.durability.lock().write_error = Some(e.clone());
        self.durability.unwritable.store(true, Ordering::Release);
        for (ack, _) in pending {
            if let Some(ack) = ack {
                ack.send(Err(e.clone()));
            }
        }
        Err(e)
    }

    /// A new segment. The old one is synced first, so the syncer's next
    /// fsync (of the new segment) covers every record handed over so far.
    fn rotate(&mut self) -> Result<(), String> {
        self.file.sync_data().map_err(|e| e.to_string())?;
        let next = self.segment + 1;
        let path = self.dir.join(segment_name(next));
        let file = open_append(&path).map_err(|e| e.to_string())?;
        sync_dir(&self.dir).map_err(|e| e.to_string())?;
        let shared = file.try_clone().map_err(|e| e.to_string())?;
        self.file = file;
        self.durability.lock().file = Arc::new(shared);
        self.segment = next;
        self.len = 0;
        Ok(())
    }
}

/// fsyncs what the writer has written and acknowledges it, until the
/// writer closes and everything is synced.
fn sync_loop(durability: &Durability, mut synced: u64) {
    loop {
        let mut state = durability
            .wake
            .wait_while(durability.lock(), |s| s.written <= synced && !s.closing)
            .unwrap_or_else(|p| p.into_inner());
        if state.written <= synced {
            return;
        }
        let on_the_way = || durability.on_the_way.load(Ordering::Acquire);
        // Nobody waits on what is written: let more join before syncing.
        state = durability.hold(state, BACKGROUND_SYNC, |s| {
            s.urgent <= synced && on_the_way() == 0
        });
        // Records announced as on their way get a moment to join this fsync.
        state = durability.hold(state, GATHER, |_| on_the_way() > 0);
        let (target, hash, file) = (
            state.written,
            state.written_hash.clone(),
            state.file.clone(),
        );
        drop(state);
        let result = file.sync_data();
        let acks: Vec<_> = {
            let mut state = durability.lock();
            if let Err(e) = &result {
                state.failed = Some(format!("fsync failed: {e}; restart the daemon"));
                durability.unwritable.store(true, Ordering::Release);
                state.waiting.drain(..).collect()
            } else {
                let n = state.waiting.partition_point(|(seq, _)| *seq <= target);
                state.waiting.drain(..n).collect()
            }
        };
        let outcome = |seq: u64| match &result {
            Ok(()) => Ok(seq),
            Err(e) => Err(format!("fsync failed: {e}")),
        };
        // Waiting callers first: callbacks (the proxy's log lines) may write
        // to a file, and a decision must not wait behind a thousand of them.
        let (waiters, callbacks): (Vec<_>, Vec<_>) = acks
            .into_iter()
            .partition(|(_, ack)| matches!(ack, Ack::Waiter(_)));
        for (seq, ack) in waiters.into_iter().chain(callbacks) {
            ack.send(outcome(seq));
        }
        if result.is_ok() {
            durability.head.offer(target, hash);
        }
        synced = target;
    }
}

fn open_append(path: &Path) -> Result<File, EvidenceError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| io_err(path, "cannot open", e))
}

fn sync_dir(dir: &Path) -> Result<(), EvidenceError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, "cannot sync the directory", e))
}

/// Moves bytes after the last newline (a record cut by a crash) to
/// `<segment>.torn` and truncates the segment to its last complete line.
fn repair_torn_tail(path: &Path) -> Result<Option<Repair>, EvidenceError> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| io_err(path, "cannot open", e))?;
    let len = file
        .metadata()
        .map_err(|e| io_err(path, "cannot stat", e))?
        .len();
    let good =
        match find_last_newline(&mut file, len).map_err(|e| io_err(path, "cannot read", e))? {
            Some(i) => i + 1,
            None => 0,
        };
    if good == len {
        return Ok(None);
    }
    let mut torn = Vec::new();
    file.seek(SeekFrom::Start(good))
        .and_then(|_| file.read_to_end(&mut torn))
        .map_err(|e| io_err(path, "cannot read", e))?;
    let mut moved_to = PathBuf::from(format!("{}.torn", path.display()));
    let mut n = 1;
    while moved_to.exists() {
        n += 1;
        moved_to = PathBuf::from(format!("{}.torn.{n}", path.display()));
    }
    crate::write_durably(&moved_to, &torn, 0o600)
        .map_err(|e| io_err(&moved_to, "cannot write", e))?;
    file.set_len(good)
        .and_then(|()| file.sync_all())
        .map_err(|e| io_err(path, "cannot truncate", e))?;
    Ok(Some(Repair {
        segment: path.to_owned(),
        moved_to,
        bytes: len - good,
    }))
}

/// The offset of the last `\n` before `end`, reading backwards in blocks.
fn find_last_newline(file: &mut File, end: u64) -> std::io::Result<Option<u64>> {
    let mut block = vec![0u8; 64 * 1024];
    let mut hi = end;
    while hi > 0 {
        let lo = hi.saturating_sub(block.len() as u64);
        let chunk = &mut block[..(hi - lo) as usize];
        file.seek(SeekFrom::Start(lo))?;
        file.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(Some(lo + i as u64));
        }
        hi = lo;
    }
    Ok(None)
}

/// The `(seq, hash)` of the last complete record of a segment.
fn last_record(path: &Path) -> Result<Option<(u64, String)>, EvidenceError> {
    let mut file = File::open(path).map_err(|e| io_err(path, "cannot open", e))?;
    let len = file
        .metadata()
        .map_err(|e| io_err(path, "cannot stat", e))?
        .len();
    if len == 0 {
        return Ok(None);
    }
    // The segment ends with '\n' (the torn tail is gone); find the one before.
    let start = find_last_newline(&mut file, len - 1)
        .map_err(|e| io_err(path, "cannot read", e))?
        .map_or(0, |i| i + 1);
    let mut line = vec![0u8; (len - 1 - start) as usize];
    file.seek(SeekFrom::Start(start))
        .and_then(|_| file.read_exact(&mut line))
        .map_err(|e| io_err(path, "cannot read", e))?;
    let corrupt = |message: String| {
        let lines = std::fs::read(path)
            .map(|b| b.iter().filter(|&&c| c == b'\n').count())
            .unwrap_or(0);
        EvidenceError::Corrupt {
            path: path.display().to_string(),
            line: lines,
            message,
        }
    };
    let value: Value =
        serde_json::from_slice(&line).map_err(|e| corrupt(format!("not JSON: {e}")))?;
    let seq = value["seq"]
        .as_u64()
        .ok_or_else(|| corrupt("no seq".into()))?;
    let hash = value["hash"]
        .as_str()
        .ok_or_else(|| corrupt("no hash".into()))?;
    Ok(Some((seq, hash.to_owned())))
}
