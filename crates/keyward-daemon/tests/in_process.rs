//! The daemon started in this test's own process (no binary, no fork): the
//! daemon crate tested on its own, through its public entry point and the
//! admin API. Start, answer, decide (on record), issue a team token, reload,
//! and stop cleanly with the socket and PID file gone.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::Method;
use keyward_api::{Client, DecisionResponse, EvaluateRequest, IssueTokenRequest, IssuedToken};
use keyward_config::{ConfigSource, home::Home};
use keyward_daemon::{DaemonOptions, LogControl};

/// Log filters are the process's business; a test has none to change.
struct NoLogControl;

impl LogControl for NoLogControl {
    fn set_filter(&self, _directive: &str) -> Result<(), String> {
        Ok(())
    }
}

/// The daemon for `home`, running on `runtime` until it is told to stop.
fn start_in_process(
    runtime: &tokio::runtime::Runtime,
    home: &Path,
) -> tokio::task::JoinHandle<Result<(), keyward_daemon::DaemonError>> {
    let home = Home::at(home);
    let config = keyward_config::load(&ConfigSource {
        path: home.default_config_path(),
        explicit: false,
    })
    .expect("built-in defaults load");
    runtime.spawn(keyward_daemon::run(DaemonOptions {
        home,
        config,
        idle_exit_override: Some(None),
        require_runner_auth: false,
        log: Box::new(NoLogControl),
    }))
}

/// Waits until the daemon answers (a condition, bounded so that a daemon
/// that never comes up fails the test instead of hanging it).
async fn until_ready(client: &Client) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.health().await.is_err() {
        assert!(Instant::now() < deadline, "the daemon did not come up");
        tokio::task::yield_now().await;
    }
}

#[test]
fn the_daemon_runs_decides_and_stops_in_process() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::Builder::new()
        .prefix("kwd")
        .tempdir_in("/tmp")
        .unwrap();
    let home = dir.path().join("home");
    let runtime = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap(),
    );
    let daemon = start_in_process(&runtime, &home);
    let client = Client::new(home.join("keyward.sock"));
    let token = runtime.block_on(async {
        until_ready(&client).await;
        let health = client.health().await.unwrap();
        assert_eq!(health.pid, std::process::id(), "served from this process");

        let decision: DecisionResponse = client
            .call(
                Method::POST,
                "/v1/evaluate",
                Some(&EvaluateRequest {
                    action_type: "execute_command".into(),
                    target: Some("rm -rf /".into()),
                    ..Default::default()
                }),
            )
            .await
            .unwrap();
        assert_eq!(decision.decision, keyward_api::Decision::Block);
        assert_eq!(decision.evidence_refs.len(), 1, "on record before answered");

        let issued: IssuedToken = client
            .call(
                Method::POST,
                "/v1/tokens",
                Some(&IssueTokenRequest {
                    user: "ci".into(),
                    role: "runner".into(),
                    ..Default::default()
                }),
            )
            .await
            .unwrap();
        assert!(issued.token.starts_with("kwt_"));
        let _: serde_json::Value = client
            .call(Method::POST, "/v1/reload", None::<&()>)
            .await
            .unwrap();
        client.shutdown(Some("test".into())).await.unwrap();
        issued.token
    });
    runtime
        .block_on(daemon)
        .expect("the daemon task")
        .expect("a clean stop");
    assert!(!home.join("keyward.sock").exists(), "socket left behind");
    assert!(!home.join("keyward.pid").exists(), "PID file left behind");
    // The token's user is kept, its value nowhere.
    let tokens = std::fs::read_to_string(home.join("auth/tokens.toml")).unwrap();
    assert!(tokens.contains("user = \"ci\""), "{tokens}");
    assert!(!tokens.contains(&token[4..]), "{tokens}");
}
