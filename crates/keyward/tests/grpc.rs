//! gRPC through `keyward run`, end to end: a real grpcio server over TLS
//! on loopback (tests/grpc/server.py, which refuses every call without the
//! grant's `authorization` metadata) and a real grpcio client as the run's
//! child (tests/grpc/client.py), which finds the proxy and keyward's CA
//! bundle only through the environment `keyward run` gives it. The server
//! speaks only HTTP/2, so every call also shows the upstream connection
//! negotiating h2 over ALPN.
//!
//! Streaming calls show that one message arrives before the next is sent:
//! the sender waits (with a deadline) for the other side to note the
//! message in the server's log, so a proxy that buffers a body stalls and
//! the call fails. Every call shows that the child never holds the secret:
//! its environment (printed whole) and output do not contain it.

mod common;

use std::path::PathBuf;
use std::process::Child;

use common::{TestHome, wait_for};

const SECRET: &str = "kw-grpc-SECRET-5f0c2b7e91";
const SERVER: &str = include_str!("grpc/server.py");
const CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grpc/client.py");

/// A daemon whose `local` grant injects `authorization: Bearer SECRET`
/// toward the gRPC server, and that server.
struct Grpc {
    home: TestHome,
    server: Child,
    port: u16,
    ca: PathBuf,
    log: PathBuf,
    /// The server speaks cleartext HTTP/2; the client uses an insecure
    /// channel.
    cleartext: bool,
}

impl Drop for Grpc {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

impl Grpc {
    /// Over TLS; `grant_extra` goes into the grant's table.
    fn start(grant_extra: &str) -> Self {
        Self::start_with(grant_extra, false)
    }

    fn start_with(grant_extra: &str, cleartext: bool) -> Self {
        let home = TestHome::new();
        std::fs::create_dir_all(&home.path).unwrap();
        let dir = home.path.parent().unwrap();
        // The server reads what it requires from <log>.expect.
        std::fs::write(dir.join("upstream.log.expect"), format!("Bearer {SECRET}")).unwrap();
        let (server, port, ca, log) = if cleartext {
            start_cleartext(dir)
        } else {
            common::start_tls_python(dir, SERVER)
        };
        let trust = if cleartext {
            String::new()
        } else {
            format!("[proxy]\nupstream_ca = [\"{}\"]\n", ca.display())
        };
        std::fs::write(
            home.file("keyward.toml"),
            format!(
                "{trust}\n[grants.local]\nsecret = \"vault:local-token\"\nhosts = [\"localhost:{port}\"]\ninject = {{ header = \"Authorization\", format = \"Bearer {{secret}}\" }}\nplaceholder_env = \"LOCAL_TOKEN\"\n{grant_extra}\n",
            ),
        )
        .unwrap();
        let set = home.run_stdin(&["secret", "set", "local-token"], SECRET);
        assert_eq!(set.code, 0, "{set:?}");
        Self {
            home,
            server,
            port,
            ca,
            log,
            cleartext,
        }
    }

    /// Runs client.py's `call` as the child of `keyward run --grant local`,
    /// from an environment that holds a copy of the secret and names
    /// another CA bundle for gRPC (both must not reach the child), and
    /// checks that the child never held the secret.
    fn call(&self, call: &str) -> common::Run {
        let out = self
            .home
            .cmd(&["run", "--grant", "local", "--", "python3", CLIENT])
            .args([&self.port.to_string(), self.log.to_str().unwrap(), call])
            .args(self.cleartext.then_some("insecure"))
            .env("SOME_COPY_OF_IT", SECRET)
            .env(
                "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
                "/etc/ssl/certs/ca-certificates.crt",
            )
            .output()
            .unwrap();
        let run = common::Run::from(out);
        let environ = run
            .stdout
            .lines()
            .find(|l| l.starts_with("ENVIRON "))
            .unwrap_or_else(|| panic!("the child did not start: {run:?}"));
        let bundle = self.home.file("ca/public/bundle.pem");
        assert!(
            environ.contains(&format!(
                "'GRPC_DEFAULT_SSL_ROOTS_FILE_PATH': '{}'",
                bundle.display()
            )),
            "{environ}"
        );
        assert!(
            !run.stdout.contains(SECRET) && !run.stderr.contains(SECRET),
            "the child held the secret: {run:?}"
        );
        run
    }

    /// The server's log: what reached it.
    fn server_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn placeholder(&self, run: &common::Run) -> String {
        let environ = run.stdout.lines().next().unwrap();
        let start = environ.find("'LOCAL_TOKEN': '").unwrap() + "'LOCAL_TOKEN': '".len();
        environ[start..].split('\'').next().unwrap().to_owned()
    }
}

/// Starts server.py in cleartext: (child, port, no CA, log).
fn start_cleartext(dir: &std::path::Path) -> (Child, u16, PathBuf, PathBuf) {
    use std::io::BufRead;
    let log = dir.join("upstream.log");
    let mut child = std::process::Command::new("python3")
        .args(["-c", SERVER, "-", "-"])
        .arg(&log)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line.trim().parse().expect("the test server's port");
    (child, port, PathBuf::new(), log)
}

/// The lines of `run`'s output that start with `key`, without it.
fn values<'a>(run: &'a common::Run, key: &str) -> Vec<&'a str> {
    run.stdout
        .lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
        .collect()
}

#[test]
fn a_unary_call_gets_the_credential_as_metadata_the_child_never_holds() {
    let grpc = Grpc::start("");
    // Without keyward, the same client is refused: the server really
    // requires the credential.
    let direct = std::process::Command::new("python3")
        .args([CLIENT, &grpc.port.to_string(), grpc.log.to_str().unwrap()])
        .arg("unary")
        .env("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", &grpc.ca)
        .env_remove("grpc_proxy")
        .env_remove("https_proxy")
        .env_remove("http_proxy")
        .env_remove("HTTPS_PROXY")
        .output()
        .unwrap();
    let direct = common::Run::from(direct);
    assert_eq!(direct.code, 2, "{direct:?}");
    assert_eq!(values(&direct, "CODE"), ["UNAUTHENTICATED"], "{direct:?}");

    let run = grpc.call("unary");
    assert_eq!(run.code, 0, "{run:?}\n{}", grpc.home.log());
    assert_eq!(values(&run, "REPLY"), ["echo:hello"], "{run:?}");
    let log = grpc.server_log();
    assert_eq!(log.matches("METADATA ").count(), 1, "{log}");
    assert_eq!(log.matches("REFUSED").count(), 1, "{log}");
    // One egress event for the call, with the grant injected.
    let daemon_log = grpc.home.log();
    assert!(
        daemon_log
            .lines()
            .any(|l| l.contains("path=\"/kw.Test/Unary\"")
                && l.contains("status=200")
                && l.contains("injected=\"local\"")),
        "{daemon_log}"
    );
}

#[test]
fn a_placeholder_in_metadata_is_swapped_for_the_secret() {
    let grpc = Grpc::start("");
    let run = grpc.call("placeholder");
    assert_eq!(run.code, 0, "{run:?}\n{}", grpc.home.log());
    assert_eq!(values(&run, "REPLY"), ["echo:p"]);
    assert!(grpc.placeholder(&run).starts_with("kw_ph_"));
    let log = grpc.server_log();
    assert!(log.contains(&format!("x-token={SECRET}")), "{log}");
}

#[test]
fn client_streaming_delivers_each_message_before_the_next_is_sent() {
    let grpc = Grpc::start("");
    let run = grpc.call("client_stream");
    assert_eq!(run.code, 0, "{run:?}\n{}", grpc.server_log());
    assert_eq!(values(&run, "REPLY"), ["m0,m1,m2"]);
}

#[test]
fn server_streaming_delivers_each_message_before_the_next_is_sent() {
    let grpc = Grpc::start("");
    let run = grpc.call("server_stream");
    assert_eq!(run.code, 0, "{run:?}\n{}", grpc.server_log());
    assert_eq!(values(&run, "PART"), ["part-0", "part-1", "part-2"]);
}

#[test]
fn bidirectional_streaming_answers_each_message_before_the_next_is_sent() {
    let grpc = Grpc::start("");
    let run = grpc.call("bidi");
    assert_eq!(run.code, 0, "{run:?}\n{}", grpc.server_log());
    assert_eq!(
        values(&run, "ANSWER"),
        ["re:ping-0", "re:ping-1", "re:ping-2"]
    );
}

#[test]
fn grpc_bodies_stream_even_when_the_grant_swaps_placeholders_in_bodies() {
    // substitute_body buffers other request bodies; gRPC messages never.
    let grpc = Grpc::start("substitute_body = true");
    let run = grpc.call("bidi");
    assert_eq!(run.code, 0, "{run:?}\n{}", grpc.server_log());
    assert_eq!(values(&run, "ANSWER").len(), 3, "{run:?}");
    let run = grpc.call("client_stream");
    assert_eq!(run.code, 0, "{run:?}\n{}", grpc.server_log());
    assert_eq!(values(&run, "REPLY"), ["m0,m1,m2"]);
}

#[test]
fn an_error_status_and_its_message_arrive_intact() {
    let grpc = Grpc::start("");
    let run = grpc.call("fail");
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(values(&run, "CODE"), ["FAILED_PRECONDITION"], "{run:?}");
    assert_eq!(
        values(&run, "DETAILS"),
        ["précondition: 100% failed / ¿sí?"],
        "{run:?}"
    );
}

#[test]
fn a_deadline_reaches_the_server_and_ends_the_call_there() {
    let grpc = Grpc::start("");
    let run = grpc.call("deadline");
    assert_eq!(values(&run, "CODE"), ["DEADLINE_EXCEEDED"], "{run:?}");
    // The server learnt the deadline (grpc-timeout) and saw the call end.
    assert!(
        wait_for(std::time::Duration::from_secs(20), || grpc
            .server_log()
            .contains("SLOW ended")),
        "{}",
        grpc.server_log()
    );
    let log = grpc.server_log();
    assert!(
        log.lines()
            .any(|l| l.starts_with("DEADLINE ") && l != "DEADLINE none"),
        "{log}"
    );
    assert!(log.contains("SLOW ended active=False"), "{log}");
}

#[test]
fn a_cancelled_call_is_cancelled_at_the_server() {
    let grpc = Grpc::start("");
    let run = grpc.call("cancel");
    assert_eq!(run.code, 0, "{run:?}\n{}", grpc.server_log());
    assert_eq!(values(&run, "CANCELLED"), ["True"]);
    // The call has no deadline: only keyward resetting the upstream stream
    // ends it at the server before the server gives up (active=True).
    assert_eq!(
        values(&run, "SERVER"),
        ["SLOW ended active=False"],
        "{run:?}"
    );
    let log = grpc.server_log();
    assert!(log.contains("DEADLINE none"), "{log}");
}

#[test]
fn a_credential_echoed_in_metadata_trailers_and_messages_comes_back_scrubbed() {
    let grpc = Grpc::start("");
    let run = grpc.call("echo_auth");
    assert_eq!(run.code, 0, "{run:?}\n{}", grpc.home.log());
    let placeholder = grpc.placeholder(&run);
    // Metadata and trailers: the placeholder, as in HTTP headers.
    assert_eq!(
        values(&run, "INITIAL"),
        [format!("Bearer {placeholder}")],
        "{run:?}"
    );
    assert_eq!(
        values(&run, "TRAILER"),
        [format!("Bearer {placeholder}")],
        "{run:?}"
    );
    assert_eq!(values(&run, "STATUS"), ["OK"]);
    // The message: a mask of the secret's length, so gRPC's and protobuf's
    // length prefixes still hold (the server compressed it if it could).
    let mask = format!("[REDACTED]{}", "*".repeat(SECRET.len() - 10));
    assert_eq!(
        values(&run, "REPLY"),
        [format!("you sent: Bearer {mask}")],
        "{run:?}"
    );
}

#[test]
fn an_insecure_channel_gets_the_credential_only_where_the_grant_allows_plaintext() {
    // A grant without `plaintext = true`: the cleartext call is refused
    // before anything reaches the server.
    let grpc = Grpc::start_with("", true);
    let run = grpc.call("unary");
    assert_eq!(values(&run, "CODE"), ["PERMISSION_DENIED"], "{run:?}");
    assert_eq!(grpc.server_log(), "");
    assert!(
        grpc.home.log().contains("blocked=\"plaintext_refused\""),
        "{}",
        grpc.home.log()
    );

    // With it: HTTP/2 in clear (prior knowledge) both ways, the
    // credential injected.
    let grpc = Grpc::start_with("plaintext = true", true);
    let run = grpc.call("unary");
    assert_eq!(run.code, 0, "{run:?}\n{}", grpc.home.log());
    assert_eq!(values(&run, "REPLY"), ["echo:hello"], "{run:?}");
    let run = grpc.call("bidi");
    assert_eq!(run.code, 0, "{run:?}\n{}", grpc.server_log());
    assert_eq!(values(&run, "ANSWER").len(), 3, "{run:?}");
}
