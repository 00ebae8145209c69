//! The cost of checking a presented token per request (criterion): a good
//! token and an unknown one, with 1, 100 and 1,000 tokens issued (the
//! check hashes the token and compares it with every stored hash, so both
//! cost the same), and the full gate (authenticate, then scope and rate
//! limit) beside authenticate alone. The ratio that matters is against a
//! request's other work: see bench/evaluate.sh for a decision's cost.
//!
//! Run: `cargo bench -p keyward-auth --bench token_check`.

use std::hint::black_box;
use std::time::{Instant, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use keyward_auth::{AuthState as _, FileAuthState, RateLimiter, RoleSpec, Scope, authorize};

fn bench(c: &mut Criterion) {
    let now = SystemTime::now();
    for issued in [1usize, 100, 1000] {
        let dir = tempfile::tempdir().unwrap();
        let mut state = FileAuthState::open(dir.path()).unwrap();
        state
            .create_role(
                "limited",
                &RoleSpec {
                    scopes: Some(vec!["evaluate".into()]),
                    rate_limit: Some("1000000/1s".into()),
                    description: None,
                },
            )
            .unwrap();
        let mut good = String::new();
        for i in 0..issued {
            let token = state
                .issue(&format!("user-{i}"), "limited", None, "", now)
                .unwrap();
            good = token.value.expose().to_owned();
        }
        let unknown = "kwt_00000000000000000000000000000000";
        c.bench_function(&format!("authenticate good, {issued} tokens"), |b| {
            b.iter(|| state.authenticate(black_box(&good), now).unwrap())
        });
        c.bench_function(&format!("authenticate unknown, {issued} tokens"), |b| {
            b.iter(|| state.authenticate(black_box(unknown), now).unwrap_err())
        });
        if issued == 1 {
            let limiter = RateLimiter::default();
            c.bench_function("gate: authenticate + scope + rate limit, 1 token", |b| {
                b.iter(|| {
                    let principal = state.authenticate(black_box(&good), now).unwrap();
                    // Within the limit nearly always; past it, the refusal
                    // is the same work.
                    let _ = authorize(&principal, &Scope::Evaluate, &limiter, Instant::now());
                })
            });
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
