//! Run records are authenticated: `runs.json` sits in the home, which a
//! same-user process can write, so what a run may use (its grants as they
//! were resolved, its policy, its network rules, its token hash) carries an
//! HMAC-SHA256 keyed from the vault. A record edited, forged or copied from
//! another run fails the check and the run is ended; a record that cannot be
//! checked yet (the vault is sealed) gives its run nothing until it can.

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use keyward_api::Network;
use serde::Serialize;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::{FrozenAuthority, RunRecord};

/// The key run records are authenticated with.
pub type RunKey = Zeroizing<[u8; 32]>;

/// What the key covers: every field that gives a run authority or ties a
/// token or a process to it (the pid with its start time, so a replayed
/// or edited record cannot tie a run to another process). The label and
/// confinement text are not covered: they widen nothing.
#[derive(Serialize)]
struct Covered<'a> {
    v: u32,
    id: &'a str,
    token_sha256: &'a str,
    grants: &'a [String],
    allow: &'a [String],
    network: Network,
    placeholders: &'a BTreeMap<String, String>,
    policy: &'a Option<String>,
    created_at: &'a str,
    uid: Option<u32>,
    broker: bool,
    base_url: bool,
    runner: Option<String>,
    authority: &'a Option<FrozenAuthority>,
    pid: Option<u32>,
    pid_start: Option<u64>,
    cgroup: &'a Option<String>,
    cgroup_origin: &'a Option<String>,
    private_tmp: &'a Option<String>,
}

fn mac(key: &RunKey, run: &RunRecord) -> Hmac<Sha256> {
    let covered = Covered {
        v: 1,
        id: &run.id,
        token_sha256: &run.token_sha256,
        grants: &run.grants,
        allow: &run.allow,
        network: run.network,
        placeholders: &run.placeholders,
        policy: &run.policy,
        created_at: &run.created_at,
        uid: run.uid,
        broker: run.broker,
        base_url: run.base_url,
        runner: run
            .runner
            .as_ref()
            .map(|c| serde_json::Value::Object(c.to_json()).to_string()),
        authority: &run.authority,
        pid: run.pid,
        pid_start: run.pid_start,
        cgroup: &run.cgroup,
        cgroup_origin: &run.cgroup_origin,
        private_tmp: &run.private_tmp,
    };
    let bytes = serde_json::to_vec(&covered).expect("a run record serializes");
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_slice()).expect("any key length");
    mac.update(b"keyward run record\0");
    mac.update(&bytes);
    mac
}

/// The record's seal: hex HMAC-SHA256.
pub fn seal(key: &RunKey, run: &RunRecord) -> String {
    hex::encode(mac(key, run).finalize().into_bytes())
}

/// Whether the record carries a valid seal (compared in constant time).
pub fn verify(key: &RunKey, run: &RunRecord) -> bool {
    let Some(tag) = run.seal.as_deref().and_then(|s| hex::decode(s).ok()) else {
        return false;
    };
    mac(key, run).verify_slice(&tag).is_ok()
}
