//! Vault figures, each beside a baseline measured in the same run:
//!
//! * snapshot write (`set` on a vault of 1,000 secrets: JSON, age
//!   encryption, O_EXCL file, fsync, directory fsync, prune) against a bare
//!   durable write of the same number of bytes (O_EXCL, fsync, dir fsync);
//! * resolving a cached `file:` reference and a `vault:` reference against
//!   an `env:` reference (a process-environment lookup);
//! * resolving an `openbao:` reference uncached (a KV v2 read over HTTP)
//!   against a bare HTTP GET of the same URL on the same kind of client,
//!   when `BAO_ADDR` and `BAO_TOKEN` are set (bench/vault.sh starts a dev
//!   server and seeds `secret/bench#token`).
//!
//! Run: `bash bench/vault.sh` (or `cargo bench -p keyward-vault --bench vault`).

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use age::secrecy::SecretString;
use keyward_api::KeyMode;
use keyward_vault::{
    OpenBao, OpenBaoAuth, OpenBaoSettings, Resolver, ResolverOptions, SecretRef, Vault,
};

const SECRETS: usize = 1000;
const WRITES: usize = 200;

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let idx = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[idx]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn row(name: &str, p50: Duration, p99: Duration, base_p50: Duration) {
    println!(
        "{name:46} p50 {:9.3} ms  p99 {:9.3} ms  ratio(p50) {:6.2}",
        ms(p50),
        ms(p99),
        p50.as_secs_f64() / base_p50.as_secs_f64()
    );
}

fn bench_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let mut vault = Vault::new(dir.path().join("vault"), 20);
    vault.init(KeyMode::KeyFile, None).unwrap();
    let fill = Instant::now();
    for i in 0..SECRETS {
        let value = SecretString::from(format!("value-{i:04}-{}", "x".repeat(40)));
        vault
            .set(&format!("secret-{i:04}"), value, Some("bench".into()))
            .unwrap();
    }
    eprintln!(
        "filled {SECRETS} secrets in {:.1} s",
        fill.elapsed().as_secs_f64()
    );

    let mut writes = Vec::with_capacity(WRITES);
    for i in 0..WRITES {
        let value = SecretString::from(format!("updated-{i}"));
        let t = Instant::now();
        vault
            .set(&format!("secret-{:04}", i % SECRETS), value, None)
            .unwrap();
        writes.push(t.elapsed());
    }
    let size = vault.history().unwrap().last().unwrap().size as usize;

    let raw_dir = tempfile::tempdir().unwrap();
    let payload = vec![0x5au8; size];
    let mut raw = Vec::with_capacity(WRITES);
    for i in 0..WRITES {
        let t = Instant::now();
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(raw_dir.path().join(format!("{i}.bin")))
            .unwrap();
        f.write_all(&payload).unwrap();
        f.sync_all().unwrap();
        std::fs::File::open(raw_dir.path())
            .unwrap()
            .sync_all()
            .unwrap();
        raw.push(t.elapsed());
    }
    let (rp50, rp99) = (percentile(&mut raw, 0.5), percentile(&mut raw, 0.99));
    println!("snapshot size at {SECRETS} secrets: {size} bytes; {WRITES} writes each");
    row(
        "baseline: durable write of the same bytes",
        rp50,
        rp99,
        rp50,
    );
    let (p50, p99) = (percentile(&mut writes, 0.5), percentile(&mut writes, 0.99));
    row("vault set (snapshot write)", p50, p99, rp50);
}

async fn per_op(resolver: &Resolver, r: &SecretRef, n: usize) -> Duration {
    resolver.resolve(r).await.unwrap();
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(resolver.resolve(r).await.unwrap());
    }
    t.elapsed() / n as u32
}

async fn bench_resolve() {
    let dir = tempfile::tempdir().unwrap();
    let mut vault = Vault::new(dir.path().join("vault"), 20);
    vault.init(KeyMode::KeyFile, None).unwrap();
    vault
        .set("bench", SecretString::from("v".repeat(40)), None)
        .unwrap();
    let vault = Arc::new(Mutex::new(vault));
    let file = dir.path().join("token");
    std::fs::write(&file, "file-value\n").unwrap();
    // SAFETY-free alternative to set_var: the bench inherits KW_BENCH_ENV
    // from bench/vault.sh; fall back to PATH, which always exists.
    let env_var = if std::env::var_os("KW_BENCH_ENV").is_some() {
        "KW_BENCH_ENV"
    } else {
        "PATH"
    };
    let resolver = Resolver::new(vault, None, ResolverOptions::default());
    let n = 20_000;
    let env = per_op(&resolver, &SecretRef::Env(env_var.into()), n).await;
    let cached = per_op(
        &resolver,
        &format!("file:{}", file.display()).parse().unwrap(),
        n,
    )
    .await;
    let in_vault = per_op(&resolver, &SecretRef::Vault("bench".into()), n).await;
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!("resolve, mean of {n}:");
    println!(
        "  {:44} {:9.3} us  ratio {:6.2}",
        "baseline: env: reference",
        us(env),
        1.0
    );
    println!(
        "  {:44} {:9.3} us  ratio {:6.2}",
        "cached file: reference",
        us(cached),
        cached.as_secs_f64() / env.as_secs_f64()
    );
    println!(
        "  {:44} {:9.3} us  ratio {:6.2}",
        "vault: reference (in memory)",
        us(in_vault),
        in_vault.as_secs_f64() / env.as_secs_f64()
    );
}

async fn bench_openbao() {
    let (Ok(addr), Ok(token)) = (std::env::var("BAO_ADDR"), std::env::var("BAO_TOKEN")) else {
        println!("openbao: skipped (set BAO_ADDR and BAO_TOKEN, or run bench/vault.sh)");
        return;
    };
    let settings = OpenBaoSettings {
        addr: addr.clone(),
        auth: OpenBaoAuth::Token(SecretString::from(token.clone())),
        namespace: None,
        ca_file: None,
    };
    let dir = tempfile::tempdir().unwrap();
    let vault = Arc::new(Mutex::new(Vault::new(dir.path().join("vault"), 20)));
    let resolver = Resolver::new(
        vault,
        Some(OpenBao::new(settings).unwrap()),
        ResolverOptions {
            cache_ttl: Duration::ZERO,
            ..Default::default()
        },
    );
    let r: SecretRef = "openbao:secret/bench#token".parse().unwrap();
    let n = 500;
    let mut ours = Vec::with_capacity(n);
    resolver.resolve(&r).await.unwrap();
    for _ in 0..n {
        let t = Instant::now();
        resolver.resolve(&r).await.unwrap();
        ours.push(t.elapsed());
    }

    use http_body_util::{BodyExt, Empty};
    use hyper::body::Bytes;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<Bytes>>();
    let url: hyper::Uri = format!("{addr}/v1/secret/data/bench").parse().unwrap();
    let mut raw = Vec::with_capacity(n);
    for _ in 0..=n {
        let req = hyper::Request::get(url.clone())
            .header("X-Vault-Token", &token)
            .body(Empty::new())
            .unwrap();
        let t = Instant::now();
        let resp = client.request(req).await.unwrap();
        let _ = resp.into_body().collect().await.unwrap();
        raw.push(t.elapsed());
    }
    raw.remove(0);
    let (rp50, rp99) = (percentile(&mut raw, 0.5), percentile(&mut raw, 0.99));
    println!("openbao KV v2 read, {n} requests, keep-alive:");
    row("baseline: bare HTTP GET of the same URL", rp50, rp99, rp50);
    let (p50, p99) = (percentile(&mut ours, 0.5), percentile(&mut ours, 0.99));
    row("openbao: reference, uncached", p50, p99, rp50);
    let cached = Resolver::new(
        Arc::new(Mutex::new(Vault::new(dir.path().join("v2"), 20))),
        Some(
            OpenBao::new(OpenBaoSettings {
                addr,
                auth: OpenBaoAuth::Token(SecretString::from(token)),
                namespace: None,
                ca_file: None,
            })
            .unwrap(),
        ),
        ResolverOptions::default(),
    );
    let per = per_op(&cached, &r, 20_000).await;
    println!(
        "  {:44} {:9.3} us (mean)",
        "openbao: reference, cached",
        per.as_secs_f64() * 1e6
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    bench_snapshots();
    runtime.block_on(bench_resolve());
    runtime.block_on(bench_openbao());
}
