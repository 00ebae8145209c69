//! The proxy's settings on a real daemon: grants bound to a port, over TLS
//! or explicitly in clear, as `grant list` shows them; `[proxy]` bounds
//! validated like the rest of the config; a flood of idle connections
//! that neither takes the daemon down nor keeps `keyward status` from
//! answering; and pooled upstream connections closed once idle.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{TestHome, json, wait_for};
use keyward_testkit::{Answer, Origin};

#[test]
fn grant_ports_plaintext_and_body_substitution_are_config_and_shown() {
    let home = TestHome::new();
    std::fs::create_dir_all(&home.path).unwrap();
    let path = home.file("keyward.toml");
    std::fs::write(
        &path,
        "[grants.legacy]\nsecret = \"vault:legacy\"\nhosts = [\"legacy.example.com:8080\"]\n\
         inject = { header = \"X-Key\" }\nplaceholder_env = \"LEGACY_KEY\"\nplaintext = true\nsubstitute_body = true\n",
    )
    .unwrap();
    home.start(&[]);
    let list = json(&home.run(&["grant", "list", "--json"]).stdout);
    let grants = list["grants"].as_array().unwrap();
    let legacy = grants.iter().find(|g| g["name"] == "legacy").unwrap();
    assert_eq!(
        legacy["hosts"],
        serde_json::json!(["legacy.example.com:8080"])
    );
    assert_eq!(legacy["plaintext"], true);
    assert_eq!(legacy["substitute_body"], true);
    let github = grants.iter().find(|g| g["name"] == "github").unwrap();
    assert_eq!(github["plaintext"], false, "presets stay TLS only");
    assert_eq!(github["substitute_body"], false);
    let text = home.run(&["grant", "list"]).stdout;
    assert!(text.contains("may go over plain HTTP"), "{text}");
    assert!(text.contains("swapped in bodies too"), "{text}");

    // `grant add` writes the same keys.
    let run = home.run(&[
        "grant",
        "add",
        "intranet",
        "--secret",
        "vault:intranet",
        "--host",
        "wiki.intranet.example:8080",
        "--header",
        "X-Key",
        "--placeholder-env",
        "WIKI_KEY",
        "--plaintext",
        "--substitute-body",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    let written = std::fs::read_to_string(&path).unwrap();
    assert!(written.contains("plaintext = true"), "{written}");
    assert!(written.contains("substitute_body = true"), "{written}");
    let list = json(&home.run(&["grant", "list", "--json"]).stdout);
    let intranet = list["grants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "intranet")
        .unwrap()
        .clone();
    assert_eq!(
        intranet["hosts"],
        serde_json::json!(["wiki.intranet.example:8080"])
    );
    assert_eq!(intranet["plaintext"], true);
    assert_eq!(intranet["substitute_body"], true);

    // A host that names a public suffix is refused without the flag, and
    // the file is left as it was; with it, the grant is written.
    let wide = |extra: &[&str]| {
        let mut args = vec![
            "grant", "add", "wide", "--secret", "vault:w", "--host", "*.co.uk", "--header", "X",
        ];
        args.extend_from_slice(extra);
        home.run(&args)
    };
    let before = std::fs::read_to_string(&path).unwrap();
    let refused = wide(&[]);
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(
        refused.stderr.contains("public suffix co.uk")
            && refused.stderr.contains("--public-suffix"),
        "{refused:?}"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
    let forced = wide(&["--public-suffix"]);
    assert_eq!(forced.code, 0, "{forced:?}");
    assert!(
        std::fs::read_to_string(&path)
            .unwrap()
            .contains("public_suffix = true")
    );

    // `grant rm` takes a grant out of the file and the running daemon.
    let rm = home.run(&["grant", "rm", "intranet"]);
    assert_eq!(rm.code, 0, "{rm:?}");
    assert!(
        rm.stdout.contains("the daemon reloaded its config"),
        "{rm:?}"
    );
    let written = std::fs::read_to_string(&path).unwrap();
    assert!(!written.contains("[grants.intranet]") && written.contains("[grants.legacy]"));
    let list = home.run(&["grant", "list", "--json"]).stdout;
    assert!(!list.contains("\"intranet\""), "{list}");
    let again = home.run(&["grant", "rm", "intranet"]);
    assert_eq!(again.code, 1, "{again:?}");
    assert!(
        again.stderr.contains("no grant named intranet") && again.stderr.contains("legacy"),
        "{again:?}"
    );
    home.run(&["daemon", "stop"]);

    for (hosts, expected) in [
        ("api.example.com:0", "not a port"),
        ("api.example.com:https", "not a port"),
    ] {
        std::fs::write(
            &path,
            format!("[grants.x]\nsecret = \"vault:x\"\nhosts = [\"{hosts}\"]\ninject = {{ header = \"X\" }}\n"),
        )
        .unwrap();
        let run = home.run(&["config", "check"]);
        assert_eq!(run.code, 64, "{run:?}");
        assert!(run.stderr.contains("grants.x.hosts"), "{run:?}");
        assert!(run.stderr.contains(expected), "{run:?}");
    }
}

#[test]
fn bad_proxy_bounds_are_exit_64_naming_the_key_and_nothing_starts() {
    let home = TestHome::new();
    std::fs::create_dir_all(&home.path).unwrap();
    let path = home.file("keyward.toml");
    for (key, value, expected) in [
        ("header_read_timeout", "\"0\"", "above zero"),
        ("idle_timeout", "\"off\"", "above zero"),
        ("connect_timeout", "\"soon\"", "expected a duration"),
        ("response_header_timeout", "\"0\"", "above zero"),
        ("max_connections", "0", "expected 1 to 65536"),
        ("max_connections", "100000", "expected 1 to 65536"),
        ("upstream_idle_timeout", "\"0\"", "expected 1s to 1h"),
        ("upstream_idle_timeout", "\"500ms\"", "expected 1s to 1h"),
        ("upstream_idle_timeout", "\"2h\"", "expected 1s to 1h"),
        ("upstream_idle_timeout", "\"soon\"", "expected a duration"),
    ] {
        std::fs::write(&path, format!("[proxy]\n{key} = {value}\n")).unwrap();
        for args in [&["config", "check"][..], &["daemon", "start"][..]] {
            let run = home.run(args);
            assert_eq!(run.code, 64, "{key} = {value}: {run:?}");
            assert!(run.stderr.contains(&format!("proxy.{key}")), "{run:?}");
            assert!(run.stderr.contains(expected), "{run:?}");
        }
        assert!(!home.pid_file().exists(), "nothing started");
    }
    // The defaults these bounds guard: tests/cmd/config/defaults-json.toml.
}

/// The proxy keeps an upstream connection for reuse and closes it once it
/// has been idle for `proxy.upstream_idle_timeout` (here 1 s): the
/// upstream sees its end, after it sat idle at least that long (a timer
/// cannot fire early). With the default, 90 s, the wait below fails.
#[test]
fn an_idle_upstream_connection_is_closed_after_upstream_idle_timeout() {
    let home = TestHome::new();
    std::fs::create_dir_all(&home.path).unwrap();
    // Answers `fine` on HTTP/1.1 keep-alive connections; the kit notes
    // each connection and, when its peer ends it, how long it sat idle
    // after its last answer.
    let upstream = Origin::builder()
        .fallback(|_| Answer::bytes("fine"))
        .start_background();
    let (port, ca) = (
        upstream.port(),
        upstream.write_ca(home.path.parent().unwrap()),
    );
    std::fs::write(
        home.file("keyward.toml"),
        format!(
            "[proxy]\nupstream_ca = [\"{}\"]\nupstream_idle_timeout = \"1s\"\n\n\
             [grants.local]\nsecret = \"vault:local-token\"\nhosts = [\"localhost:{port}\"]\n\
             inject = {{ header = \"Authorization\", format = \"Bearer {{secret}}\" }}\n",
            ca.display()
        ),
    )
    .unwrap();
    let set = home.run_stdin(&["secret", "set", "local-token"], "kw-idle-SECRET-5b8e21");
    assert_eq!(set.code, 0, "{set:?}");
    let url = format!("https://localhost:{port}/ok");
    let run = home.run(&["run", "--grant", "local", "--", "curl", "-sS", &url]);
    assert_eq!(run.stdout, "fine", "{run:?}\n{}", home.log());
    let closed = wait_for(Duration::from_secs(30), || {
        upstream.connections().iter().any(|c| c.closed)
    });
    let noted = upstream.connections();
    assert!(closed, "the upstream connection is still open: {noted:?}");
    assert_eq!(noted.len(), 1, "{noted:?}");
    let idle = noted[0]
        .idle_at_close
        .unwrap_or_else(|| panic!("{noted:?}"));
    assert!(
        idle >= Duration::from_millis(950),
        "closed {idle:?} after its answer: {noted:?}"
    );
}

#[test]
fn a_flood_of_idle_clients_is_capped_timed_out_and_status_still_answers() {
    let home = TestHome::new();
    std::fs::create_dir_all(&home.path).unwrap();
    std::fs::write(
        home.file("keyward.toml"),
        "[proxy]\nmax_connections = 8\nheader_read_timeout = \"2s\"\n",
    )
    .unwrap();
    home.start(&[]);
    let port: u16 = std::fs::read_to_string(home.file("proxy.port"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    // Slowloris: connections that send half a request head and stop.
    let flood: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let _ = s.write_all(b"GET http://example.invalid/ HTTP/1.1\r\nHost: exa");
            s
        })
        .collect();
    let status = home.run(&["status", "--json"]);
    assert_eq!(status.code, 0, "{status:?}\n{}", home.log());
    assert_eq!(json(&status.stdout)["running"], true);
    assert!(
        common::wait_for(Duration::from_secs(10), || home
            .log()
            .contains("refusing new ones until some close")),
        "the cap is logged: {}",
        home.log()
    );

    // The ones let in are closed when their head does not arrive in time;
    // the rest were closed at once. Either way every socket ends (a read
    // returns end of file or a reset, not the safety timeout).
    for mut s in flood {
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(n) => assert!(n == 0 || buf.starts_with(b"HTTP/1.1 408"), "{n}"),
            Err(e) => assert!(
                !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "a flood connection stayed open: {e}"
            ),
        }
    }

    // With the flood gone, the proxy serves again.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET http://example.invalid/ HTTP/1.1\r\nHost: example.invalid\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(
        reply.starts_with("HTTP/1.1 407"),
        "asks for a run token: {reply}"
    );
}

#[test]
fn a_grant_goes_over_plain_http_only_when_it_says_plaintext() {
    const SECRET: &str = "plain-SECRET-4a7c19e2";
    let home = TestHome::new();
    std::fs::create_dir_all(&home.path).unwrap();
    // A plain-HTTP server that answers with the Authorization it received.
    let server = Origin::builder()
        .plain()
        .fallback(|req| {
            Answer::bytes(format!(
                "got {}",
                req.header("authorization").unwrap_or("nothing")
            ))
        })
        .start_background();
    let port = server.port();
    let path = home.file("keyward.toml");
    let grant = format!(
        "[grants.plain]\nsecret = \"vault:plain\"\nhosts = [\"localhost:{port}\"]\ninject = {{ header = \"Authorization\", format = \"Bearer {{secret}}\" }}\n"
    );
    std::fs::write(&path, &grant).unwrap();
    assert_eq!(home.run_stdin(&["secret", "set", "plain"], SECRET).code, 0);
    let url = format!("http://localhost:{port}/x");
    let curl = [
        "run", "--grant", "plain", "--", "curl", "-sS", "-D", "-", &url,
    ];

    let refused = home.run(&curl);
    assert!(refused.stdout.contains("403"), "{refused:?}");
    assert!(
        refused
            .stdout
            .contains("x-keyward-blocked: plaintext_refused"),
        "{refused:?}"
    );
    assert!(refused.stdout.contains("plaintext = true"), "{refused:?}");

    std::fs::write(&path, format!("{grant}plaintext = true\n")).unwrap();
    assert_eq!(home.http("POST", "/v1/reload", None).0, 200);
    let sent = home.run(&curl);
    assert!(sent.stdout.contains("got Bearer [REDACTED]"), "{sent:?}");
    assert!(!sent.stdout.contains(SECRET), "{sent:?}");
}

/// `proxy.upstream_ca` applies on a reload, without a restart: a request
/// the upstream's unknown issuer failed succeeds once the CA is added and
/// `keyward daemon reload` ran. A reload of a broken file is refused (64),
/// the previous config stays in effect, and `keyward status` shows the
/// failure until a reload succeeds; a reload that changes a setting read
/// only at start names it.
#[test]
fn reload_applies_upstream_trust_and_says_what_it_cannot() {
    let (home, upstream) = common::upstream::setup("");
    let config = home.file("keyward.toml");
    let trusted = std::fs::read_to_string(&config).unwrap();
    let untrusted: String = trusted
        .lines()
        .filter(|l| !l.starts_with("upstream_ca"))
        .map(|l| format!("{l}\n"))
        .collect();
    // The daemon setup started trusts the upstream; untrusted by a reload.
    std::fs::write(&config, &untrusted).unwrap();
    assert_eq!(home.run(&["daemon", "reload"]).code, 0);
    let fetch = |path: &str| {
        common::upstream::run_sh(
            &home,
            &["local"],
            &format!(
                "curl -sS -o /dev/null -w '%{{http_code}}' {}",
                upstream.url(path)
            ),
        )
    };
    let before = fetch("/before-trust");
    assert_eq!(before.stdout, "502", "unknown issuer: {before:?}");

    std::fs::write(&config, &trusted).unwrap();
    let reload = home.run(&["daemon", "reload"]);
    assert_eq!(reload.code, 0, "{reload:?}");
    assert!(!reload.stdout.contains("only after"), "{reload:?}");
    let after = fetch("/after-trust");
    assert_eq!(after.stdout, "200", "trusted after the reload: {after:?}");

    // A broken file: refused, kept out, shown by status until fixed.
    std::fs::write(&config, format!("{trusted}\n[proxy.bogus]\n")).unwrap();
    let refused = home.run(&["daemon", "reload"]);
    assert_eq!(refused.code, 64, "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("the previous config stays in effect"),
        "{refused:?}"
    );
    let status = home.run(&["status"]);
    assert!(status.stdout.contains("RELOAD FAILED"), "{status:?}");
    let report = json(&home.run(&["status", "--json"]).stdout);
    assert!(
        report["reload_failed"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("keyward.toml")),
        "{report}"
    );
    assert_eq!(
        fetch("/while-broken").stdout,
        "200",
        "the previous config serves"
    );

    // Fixed, with a setting read only at start changed: said, and the
    // failure is gone.
    std::fs::write(
        &config,
        trusted.replace("[proxy]\n", "[proxy]\nmax_connections = 77\n"),
    )
    .unwrap();
    let reload = home.run(&["daemon", "reload"]);
    assert_eq!(reload.code, 0, "{reload:?}");
    assert!(
        reload
            .stdout
            .contains("apply only after `keyward daemon restart`: proxy.max_connections"),
        "{reload:?}"
    );
    let status = home.run(&["status"]);
    assert!(!status.stdout.contains("RELOAD FAILED"), "{status:?}");
    upstream.settle();
    let got = upstream.received();
    assert!(
        got.iter().all(|r| r["path"] != "/before-trust"),
        "nothing reached the upstream it did not trust: {got:?}"
    );
    home.run(&["daemon", "stop"]);
}
