//! gRPC through `keyward run`, end to end: a real grpcio server over TLS
//! on loopback (tests/grpc/server.py, which refuses every call without the
//! grant's `authorization` metadata) and a real grpcio client as the run's
//! child (tests/grpc/client.py), which finds the proxy and keyward's CA
//! bundle only through the environment `keyward run` gives it. The server
//! speaks only HTTP/2, so every call also shows the upstream connection
//! negotiating h2 over ALPN. Also: an insecure channel (cleartext HTTP/2)
//! against the same server in clear, and a grpc-go client
//! (tests/grpc/client.go).
//!
//! Streaming calls show that one message arrives before the next is sent:
//! the sender waits (with a deadline) for the other side to note the
//! message in the server's log, so a proxy that buffers a body stalls and
//! the call fails. Every call shows that the child never holds the secret:
//! its environment (printed whole) and output do not contain it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::{TestHome, wait_for};

const SECRET: &str = "kw-grpc-SECRET-5f0c2b7e91";
const SERVER: &str = include_str!("grpc/server.py");
const CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grpc/client.py");

/// How the test server is reached.
#[derive(Clone, Copy, PartialEq)]
enum Transport {
    /// TLS, with a certificate for this name (from a fresh test CA).
    Tls(&'static str),
    /// Cleartext HTTP/2; clients use an insecure channel.
    Cleartext,
}

/// A daemon whose `local` grant injects `authorization: Bearer SECRET`
/// toward the gRPC server, and that server.
struct Grpc {
    home: TestHome,
    server: Child,
    port: u16,
    ca: PathBuf,
    log: PathBuf,
    transport: Transport,
}

impl Drop for Grpc {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

impl Grpc {
    /// Over TLS to localhost; `grant_extra` goes into the grant's table.
    fn start(grant_extra: &str) -> Self {
        Self::start_with(grant_extra, Transport::Tls("localhost"))
    }

    fn start_with(grant_extra: &str, transport: Transport) -> Self {
        let home = TestHome::new();
        std::fs::create_dir_all(&home.path).unwrap();
        let dir = home.path.parent().unwrap();
        // The server reads what it requires from <log>.expect.
        std::fs::write(dir.join("upstream.log.expect"), format!("Bearer {SECRET}")).unwrap();
        let (server, port, ca, log) = start_server(dir, transport);
        let (host, trust) = match transport {
            Transport::Tls(name) => (
                name,
                format!("[proxy]\nupstream_ca = [\"{}\"]\n", ca.display()),
            ),
            Transport::Cleartext => ("localhost", String::new()),
        };
        std::fs::write(
            home.file("keyward.toml"),
            format!(
                "{trust}\n[grants.local]\nsecret = \"vault:local-token\"\nhosts = [\"{host}:{port}\"]\ninject = {{ header = \"Authorization\", format = \"Bearer {{secret}}\" }}\nplaceholder_env = \"LOCAL_TOKEN\"\n{grant_extra}\n",
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
            transport,
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
            .args((self.transport == Transport::Cleartext).then_some("insecure"))
            .env("SOME_COPY_OF_IT", SECRET)
            .env(
                "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
                "/etc/ssl/certs/ca-certificates.crt",
            )
            .output()
            .unwrap();
        let bundle = self.home.file("ca/public/bundle.pem");
        let trust = format!("'GRPC_DEFAULT_SSL_ROOTS_FILE_PATH': '{}'", bundle.display());
        self.checked(out, &trust)
    }

    /// Runs client.go's `call` (built as `client`) like [`Grpc::call`]; Go
    /// programs trust SSL_CERT_FILE.
    fn go_call(&self, client: &Path, call: &str) -> common::Run {
        let out = self
            .home
            .cmd(&["run", "--grant", "local", "--"])
            .arg(client)
            .arg(format!("{GO_HOST}:{}", self.port))
            .arg(call)
            .env("SOME_COPY_OF_IT", SECRET)
            .env("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt")
            .output()
            .unwrap();
        let bundle = self.home.file("ca/public/bundle.pem");
        self.checked(out, &format!("SSL_CERT_FILE={}", bundle.display()))
    }

    /// The child's output, once shown to name keyward's bundle (`trust`,
    /// as its environment prints it) and never to have held the secret.
    fn checked(&self, out: std::process::Output, trust: &str) -> common::Run {
        let run = common::Run::from(out);
        let environ = run
            .stdout
            .lines()
            .find(|l| l.starts_with("ENVIRON "))
            .unwrap_or_else(|| panic!("the child did not start: {run:?}"));
        assert!(environ.contains(trust), "{environ}");
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

    /// The child's LOCAL_TOKEN, from its printed environment.
    fn placeholder(&self, run: &common::Run) -> String {
        let environ = run.stdout.lines().next().unwrap();
        let at = environ.find("LOCAL_TOKEN").unwrap();
        environ[at..]
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .find(|word| word.starts_with("kw_ph_"))
            .unwrap()
            .to_owned()
    }
}

/// Starts server.py: (child, port, CA file, log). It prints its port on
/// its first line.
fn start_server(dir: &Path, transport: Transport) -> (Child, u16, PathBuf, PathBuf) {
    use std::io::BufRead;
    use std::os::unix::fs::PermissionsExt;
    let (ca, log) = (dir.join("upstream-ca.pem"), dir.join("upstream.log"));
    let (cert, key) = match transport {
        Transport::Tls(name) => {
            let identity = keyward_proxy::ServiceIdentity::new(name).unwrap();
            let (cert, key) = (dir.join("upstream.pem"), dir.join("upstream.key"));
            std::fs::write(&ca, &identity.ca_pem).unwrap();
            std::fs::write(&cert, &identity.cert_pem).unwrap();
            std::fs::write(&key, &identity.key_pem).unwrap();
            // Read by the daemon, as proxy.upstream_ca.
            std::fs::set_permissions(&ca, std::fs::Permissions::from_mode(0o644)).unwrap();
            (cert, key)
        }
        Transport::Cleartext => ("-".into(), "-".into()),
    };
    let mut child = Command::new("python3")
        .args(["-c", SERVER])
        .args([&cert, &key, &log])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line.trim().parse().expect("the test server's port");
    (child, port, ca, log)
}

const GO_CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grpc/client.go");

/// The Go test's server name. Go never sends `localhost` or a loopback
/// address through a proxy (net/http's ProxyFromEnvironment), so the test
/// gives 127.0.0.1 a name of its own, in its own /etc/hosts.
const GO_HOST: &str = "grpc-go.keyward.test";

/// Set in the run of the Go test inside its mount namespace.
const GO_HOSTS_VAR: &str = "KEYWARD_TEST_GO_HOSTS";

/// Runs `test` again, alone, in a private mount namespace (`unshare
/// --mount`, plus `--map-root-user` when not root) where /etc/hosts also
/// maps [`GO_HOST`] to 127.0.0.1; the daemon it starts resolves the name
/// there too. Returns true in the outer run, which asserts the inner one
/// passed.
fn rerun_with_go_host(test: &str) -> bool {
    if std::env::var_os(GO_HOSTS_VAR).is_some() {
        return false;
    }
    let hosts = tempfile::NamedTempFile::new().unwrap();
    let mut text = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    text.push_str(&format!("\n127.0.0.1 {GO_HOST}\n"));
    std::fs::write(hosts.path(), text).unwrap();
    let mut cmd = Command::new("unshare");
    cmd.arg("--mount");
    if keyward_sys::effective_uid() != 0 {
        cmd.arg("--map-root-user");
    }
    let run = common::Run::from(
        cmd.args([
            "sh",
            "-c",
            r#"mount --bind "$1" /etc/hosts && shift && exec "$@""#,
            "sh",
        ])
        .arg(hosts.path())
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(GO_HOSTS_VAR, "1")
        .output()
        .expect("unshare (util-linux) runs"),
    );
    assert!(
        run.code == 0 && run.stdout.contains("1 passed"),
        "{test} failed in its mount namespace (exit {}):\n{}\n{}",
        run.code,
        run.stdout,
        run.stderr
    );
    true
}

/// Builds client.go in GOPATH mode against Debian's golang-google-grpc-dev
/// (`.ci/run` installs it with golang-go): no module is downloaded.
fn go_client() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let out = tmp.join("grpc-go-client");
    let build = Command::new("go")
        .args(["build", "-o"])
        .arg(&out)
        .arg(GO_CLIENT)
        .env("GO111MODULE", "off")
        .env("GOPATH", "/usr/share/gocode")
        .env("GOCACHE", tmp.join("go-build"))
        .output()
        .expect("go (Debian's golang-go) runs");
    assert!(
        build.status.success(),
        "go build of client.go failed (is golang-google-grpc-dev installed?): {}",
        String::from_utf8_lossy(&build.stderr)
    );
    out
}

/// What a secret in a gRPC message becomes: a mask of its length, so
/// gRPC's and protobuf's length prefixes still hold.
fn masked_secret() -> String {
    format!(
        "[REDACTED]{}",
        "*".repeat(SECRET.len() - "[REDACTED]".len())
    )
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
    let direct = Command::new("python3")
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
fn the_run_token_in_metadata_is_refused_and_in_messages_masked() {
    let grpc = Grpc::start("");
    let run = grpc.call("leak_token");
    assert_eq!(run.code, 0, "{run:?}\n{}", grpc.server_log());
    let token = values(&run, "TOKEN")[0].to_owned();
    assert_eq!(token.len(), 64);
    // In metadata: refused before anything is sent, with the reason.
    assert_eq!(values(&run, "METADATA"), ["PERMISSION_DENIED"], "{run:?}");
    assert!(
        values(&run, "METADATA_DETAILS")[0].contains("the x-leak header carries this run's token"),
        "{run:?}"
    );
    // In a message: masked in place (lengths kept), the call goes on.
    let masked = format!("[REDACTED]{}", "*".repeat(token.len() - 10));
    assert_eq!(
        values(&run, "REPLY"),
        [format!("note {masked},ordinary")],
        "{run:?}"
    );
    let log = grpc.server_log();
    assert!(log.contains(&format!("GOT note {masked}")), "{log}");
    assert!(!log.to_ascii_lowercase().contains(&token), "{log}");
    for needle in [token.clone(), token.to_ascii_uppercase()] {
        assert!(
            grpc.home.files_containing(&needle).is_empty(),
            "{:?}",
            grpc.home.files_containing(&needle)
        );
    }
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
    // The message: masked (the server compressed it if it could).
    assert_eq!(
        values(&run, "REPLY"),
        [format!("you sent: Bearer {}", masked_secret())],
        "{run:?}"
    );
}

#[test]
fn an_insecure_channel_gets_the_credential_only_where_the_grant_allows_plaintext() {
    // A grant without `plaintext = true`: the cleartext call is refused
    // before anything reaches the server.
    let grpc = Grpc::start_with("", Transport::Cleartext);
    let run = grpc.call("unary");
    assert_eq!(values(&run, "CODE"), ["PERMISSION_DENIED"], "{run:?}");
    // keyward's reason reaches the client as the status message.
    let details = values(&run, "DETAILS");
    assert!(
        details.len() == 1
            && details[0].starts_with("keyward refused to send grant local's secret")
            && details[0].contains("plaintext = true"),
        "{run:?}"
    );
    assert_eq!(grpc.server_log(), "");
    assert!(
        grpc.home.log().contains("blocked=\"plaintext_refused\""),
        "{}",
        grpc.home.log()
    );

    // With it: HTTP/2 in clear (prior knowledge) both ways, the
    // credential injected.
    let grpc = Grpc::start_with("plaintext = true", Transport::Cleartext);
    let run = grpc.call("unary");
    assert_eq!(run.code, 0, "{run:?}\n{}", grpc.home.log());
    assert_eq!(values(&run, "REPLY"), ["echo:hello"], "{run:?}");
    let run = grpc.call("bidi");
    assert_eq!(run.code, 0, "{run:?}\n{}", grpc.server_log());
    assert_eq!(values(&run, "ANSWER").len(), 3, "{run:?}");
}

#[test]
fn a_go_client_trusts_keyward_through_ssl_cert_file_and_never_holds_the_secret() {
    if rerun_with_go_host(
        "a_go_client_trusts_keyward_through_ssl_cert_file_and_never_holds_the_secret",
    ) {
        return;
    }
    let client = go_client();
    let grpc = Grpc::start_with("", Transport::Tls(GO_HOST));
    let run = grpc.go_call(&client, "unary");
    assert_eq!(run.code, 0, "{run:?}\n{}", grpc.home.log());
    assert_eq!(values(&run, "REPLY"), ["echo:hello"], "{run:?}");
    assert!(grpc.server_log().contains("METADATA "));

    let run = grpc.go_call(&client, "echo_auth");
    assert_eq!(run.code, 0, "{run:?}\n{}", grpc.home.log());
    let placeholder = grpc.placeholder(&run);
    assert_eq!(values(&run, "INITIAL"), [format!("Bearer {placeholder}")]);
    assert_eq!(values(&run, "TRAILER"), [format!("Bearer {placeholder}")]);
    assert_eq!(
        values(&run, "REPLY"),
        [format!("you sent: Bearer {}", masked_secret())],
        "{run:?}"
    );
}
