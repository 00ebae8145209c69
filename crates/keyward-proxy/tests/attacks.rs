//! The egress attacks of a hostile child, performed for real: a python3
//! child sends raw bytes through the proxy to loopback upstreams that
//! misbehave on purpose, and each test shows the secret never reaches the
//! child (raw or encoded) or the wrong destination.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::*;
use keyward_proxy::ProxyOptions;
use keyward_testkit::{Answer, Origin};

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

fn get(path: &str, host: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n").into_bytes()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Brotli with one uncompressed meta-block (RFC 7932 §9.2): a valid
/// stream the decoder parses like any other.
fn brotli(data: &[u8]) -> Vec<u8> {
    assert!(!data.is_empty() && data.len() <= 1 << 16);
    // WBITS=16 (0), ISLAST=0, MNIBBLES=4 (00), MLEN-1 (16 bits),
    // ISUNCOMPRESSED=1, then padding to the byte.
    let bits: u32 = (((data.len() - 1) as u32) << 4) | (1 << 20);
    let mut out = bits.to_le_bytes()[..3].to_vec();
    out.extend_from_slice(data);
    out.push(0b11); // ISLAST, ISLASTEMPTY
    out
}

fn compress(encoding: &str, data: &[u8]) -> Vec<u8> {
    match encoding {
        "gzip" => gzip(data),
        "deflate" => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        "br" => brotli(data),
        "zstd" => {
            ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
        }
        "gzip, br" => brotli(&gzip(data)),
        _ => data.to_vec(),
    }
}

/// An API that stores what it receives and returns it in any encoding:
/// `POST /store` keeps the bearer token it was sent (as a service that
/// echoes a credential into a stored object would); `GET /read/ENC`
/// returns it compressed with ENC, whatever the request asked for.
fn storing_api(stored: Arc<Mutex<String>>) -> Handler {
    Arc::new(move |req: &Received| {
        let target = req.target();
        if target == "/store" {
            *stored.lock().unwrap() = injected(req).unwrap_or_default();
            return response("200 OK", &[], b"stored");
        }
        let encoding = target.trim_start_matches("/read/").replace("%20", " ");
        let body = format!("stored: {}\n", stored.lock().unwrap());
        response(
            "200 OK",
            &[("content-encoding", &encoding)],
            &compress(&encoding, body.as_bytes()),
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_secret_read_back_compressed_or_through_another_name_comes_back_scrubbed() {
    let mut h = Harness::new();
    let stored = Arc::new(Mutex::new(String::new()));
    let api = RawUpstream::tls(&h.identity, storing_api(stored.clone())).await;
    let granted = format!("localhost:{}", api.port);
    h.start_proxy(vec![bearer(&[&granted])], ProxyOptions::default())
        .await;

    // Toward the granted host the credential is injected, and the proxy
    // asks for an uncompressed answer whatever the child asked for.
    let post = format!(
        "POST /store HTTP/1.1\r\nHost: {granted}\r\nAccept-Encoding: gzip, br\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let out = h.child(Some(&granted), post.as_bytes()).await;
    assert!(text(&out).contains("stored"), "{}", text(&out));
    assert_eq!(stored.lock().unwrap().as_str(), SECRET);
    assert_eq!(
        api.received()[0].header("accept-encoding").as_deref(),
        Some("identity")
    );

    // Read back compressed, through the granted name and through a name no
    // grant covers (nothing injected there, the response scrubbed all the
    // same).
    let other = format!("127.0.0.1:{}", api.port);
    for tunnel in [&granted, &other] {
        for encoding in ["gzip", "deflate", "br", "zstd", "gzip, br"] {
            let path = format!("/read/{}", encoding.replace(' ', "%20"));
            let request = get(
                &path,
                tunnel,
                "Accept-Encoding: gzip, deflate, br, zstd\r\n",
            );
            let out = h.child(Some(tunnel), &request).await;
            assert_no_secret(&out);
            let reply = text(&out);
            assert!(
                reply.contains("stored: [REDACTED]"),
                "{tunnel} {encoding}: decoded and scrubbed: {reply}"
            );
            assert!(
                !reply.to_lowercase().contains("content-encoding"),
                "sent on uncompressed: {reply}"
            );
        }
    }
    let to_other: Vec<_> = api
        .received()
        .into_iter()
        .filter(|r| r.header("host").is_some_and(|h| h.starts_with("127.0.0.1")))
        .collect();
    assert_eq!(to_other.len(), 5);
    assert!(to_other.iter().all(|r| injected(r).is_none()));

    // An encoding the proxy cannot decode is refused, naming it.
    let out = h
        .child(Some(&other), &get("/read/x-magic", &other, ""))
        .await;
    assert_no_secret(&out);
    let reply = text(&out);
    assert!(reply.contains("502 Bad Gateway"), "{reply}");
    assert!(reply.contains("\"x-magic\""), "{reply}");
    assert!(
        reply.contains("x-keyward-blocked: unknown_encoding"),
        "{reply}"
    );
}

/// A response that tries every side channel at once: an informational
/// 103 with the secret, the secret in the reason phrase, in a header name
/// (as hex, a token a name may hold) and value, in every encoding in the
/// body, and in a trailer next to a gRPC status.
fn leaky_api() -> Handler {
    Arc::new(|req: &Received| {
        let secret = injected(req).unwrap_or_else(|| SECRET.to_owned());
        let hex: String = secret.bytes().map(|b| format!("{b:02x}")).collect();
        let mut body = format!("raw {secret}\n");
        for form in encodings(secret.as_bytes()) {
            body.push_str(&format!("enc {form}\n"));
        }
        let mut out = format!(
            "HTTP/1.1 103 Early Hints\r\nlink: </{secret}>; rel=preload\r\n\r\n\
             HTTP/1.1 200 Fine {secret}\r\nx-{hex}: name\r\nx-value: Bearer {secret}\r\n\
             transfer-encoding: chunked\r\ntrailer: x-trail, grpc-status\r\nconnection: close\r\n\r\n"
        )
        .into_bytes();
        // Split the body mid-secret across chunks.
        let (a, b) = body.as_bytes().split_at(8);
        for chunk in [a, b] {
            out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            out.extend_from_slice(chunk);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(
            format!("0\r\nx-trail: {secret}\r\ngrpc-status: 0\r\n\r\n").as_bytes(),
        );
        out
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reason_phrases_header_names_informational_responses_encodings_and_trailers_are_scrubbed() {
    let mut h = Harness::new();
    let api = RawUpstream::tls(&h.identity, leaky_api()).await;
    let granted = format!("localhost:{}", api.port);
    h.start_proxy(vec![bearer(&[&granted])], ProxyOptions::default())
        .await;
    let other = format!("127.0.0.1:{}", api.port);
    for tunnel in [&granted, &other] {
        let out = h
            .child(Some(tunnel), &get("/leak", tunnel, "TE: trailers\r\n"))
            .await;
        assert_no_secret(&out);
        let reply = text(&out);
        assert!(reply.contains(" 200 Fine [REDACTED]\r\n"), "{reply}");
        assert!(reply.contains("x-value: Bearer [REDACTED]"), "{reply}");
        assert!(reply.contains("raw [REDACTED]"), "{reply}");
        assert!(!reply.contains("103"), "1xx are not relayed: {reply}");
        assert!(
            !reply.contains(": name\r\n"),
            "the header named by the secret is gone: {reply}"
        );
        // Trailers are relayed, scrubbed: gRPC's status is in them.
        assert!(reply.contains("grpc-status: 0"), "{reply}");
        assert!(reply.contains("x-trail: [REDACTED]"), "{reply}");
        // Raw and encoded (10) in the body, reason, header, trailer.
        assert_eq!(reply.matches("[REDACTED]").count(), 14, "{reply}");
    }
    assert_eq!(
        injected(&api.received()[0]).as_deref(),
        Some(SECRET),
        "the granted request carried the secret"
    );
    assert_eq!(
        api.received()[0].header("te").as_deref(),
        Some("trailers"),
        "TE: trailers goes upstream"
    );
}

/// An HTTP/2-only upstream that echoes the authorization it got in the
/// body and sends it back in a trailer, as a gRPC server sends its status.
async fn h2_upstream_with_trailers(h: &Harness) -> Origin {
    Origin::builder()
        .identity(h.identity.clone())
        .alpn(&[b"h2"])
        .fallback(|req| {
            let auth = req.header("authorization").unwrap_or_default();
            Answer::bytes(format!("h2 echo {auth}"))
                .trailer("grpc-status", "0")
                .trailer("x-trail", auth)
        })
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_trailers_are_relayed_scrubbed() {
    let mut h = Harness::new();
    let upstream = h2_upstream_with_trailers(&h).await;
    let granted = format!("localhost:{}", upstream.port());
    h.start_proxy(vec![bearer(&[&granted])], ProxyOptions::default())
        .await;
    // An HTTP/1.1 child (the trailers are declared for it).
    let out = h
        .child(Some(&granted), &get("/grpc", &granted, "TE: trailers\r\n"))
        .await;
    assert_no_secret(&out);
    let reply = text(&out);
    assert!(reply.contains("h2 echo Bearer [REDACTED]"), "{reply}");
    assert!(reply.contains("grpc-status: 0"), "{reply}");
    assert!(reply.contains("x-trail: Bearer [REDACTED]"), "{reply}");
    // An HTTP/2 child, as gRPC clients are.
    let curl = tokio::process::Command::new("curl")
        .args(["-sS", "--http2", "-D", "-", "-H", "TE: trailers"])
        .arg("--cacert")
        .arg(h.proxy_ca())
        .arg("-x")
        .arg(format!("http://run:{TOKEN}@127.0.0.1:{}", h.proxy_port))
        .arg(format!("https://{granted}/grpc"))
        .output()
        .await
        .expect("curl runs");
    assert_no_secret(&curl.stdout);
    let reply = text(&curl.stdout);
    assert!(reply.contains("HTTP/2 200"), "{reply}");
    assert!(reply.contains("grpc-status: 0"), "{reply}");
    assert!(reply.contains("x-trail: Bearer [REDACTED]"), "{reply}");
}

fn echo_api() -> Handler {
    Arc::new(|req: &Received| {
        let auth = injected(req).unwrap_or_default();
        response("200 OK", &[], format!("echo <{auth}>").as_bytes())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleartext_other_ports_and_another_host_get_no_secret() {
    let mut h = Harness::new();
    let granted_api = RawUpstream::tls(&h.identity, echo_api()).await;
    let other_port = RawUpstream::tls(&h.identity, echo_api()).await;
    let plain = RawUpstream::plain(echo_api()).await;
    let granted = format!("localhost:{}", granted_api.port);
    let plain_host = format!("localhost:{}", plain.port);
    h.start_proxy(
        vec![bearer(&[&granted, &plain_host])],
        ProxyOptions::default(),
    )
    .await;

    // Cleartext: an absolute-form http:// request to a granted host and
    // port is refused, not sent with the secret.
    let request = format!(
        "GET http://{plain_host}/ HTTP/1.1\r\nHost: {plain_host}\r\nConnection: close\r\n\r\n"
    );
    let out = h.child(None, request.as_bytes()).await;
    let reply = text(&out);
    assert!(reply.starts_with("HTTP/1.1 403"), "{reply}");
    assert!(
        reply.contains("x-keyward-blocked: plaintext_refused"),
        "{reply}"
    );
    assert!(
        reply.contains("plaintext = true"),
        "says how to allow it: {reply}"
    );
    assert!(plain.received().is_empty(), "nothing went out in clear");

    // Another port of the granted host: no credential.
    let other = format!("localhost:{}", other_port.port);
    let out = h.child(Some(&other), &get("/", &other, "")).await;
    assert!(text(&out).ends_with("echo <>"), "{}", text(&out));
    assert!(injected(&other_port.received()[0]).is_none());

    // Host steering: the tunnel goes to the granted authority, the request
    // names another (a shared front end would route by it).
    for request in [
        get("/", "tenant-b.example", ""),
        get("/", &format!("{granted}.evil.example"), ""),
        format!(
            "GET https://tenant-b.example/ HTTP/1.1\r\nHost: {granted}\r\nConnection: close\r\n\r\n"
        )
        .into_bytes(),
    ] {
        let out = h.child(Some(&granted), &request).await;
        let reply = text(&out);
        assert!(reply.contains("403 Forbidden"), "{reply}");
        assert!(
            reply.contains("x-keyward-blocked: host_mismatch"),
            "{reply}"
        );
    }
    // HTTP/2's :authority too (curl sends the Host header as :authority).
    let curl = tokio::process::Command::new("curl")
        .args(["-sS", "--http2", "-D", "-", "-H", "Host: tenant-b.example"])
        .arg("--cacert")
        .arg(h.proxy_ca())
        .arg("-x")
        .arg(format!("http://run:{TOKEN}@127.0.0.1:{}", h.proxy_port))
        .arg(format!("https://{granted}/h2"))
        .output()
        .await
        .expect("curl runs");
    let reply = text(&curl.stdout);
    assert!(
        reply.contains("x-keyward-blocked: host_mismatch"),
        "{reply}"
    );
    assert!(
        granted_api.received().is_empty(),
        "nothing reached the granted host"
    );

    // The same request with the right Host is injected.
    let out = h.child(Some(&granted), &get("/", &granted, "")).await;
    assert!(text(&out).ends_with("echo <[REDACTED]>"), "{}", text(&out));
    assert_eq!(
        injected(&granted_api.received()[0]).as_deref(),
        Some(SECRET)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_grant_may_go_in_clear_and_is_still_scrubbed() {
    let mut h = Harness::new();
    let plain = RawUpstream::plain(echo_api()).await;
    let host = format!("localhost:{}", plain.port);
    let mut cred = bearer(&[&host]);
    cred.plaintext = true;
    h.start_proxy(vec![cred], ProxyOptions::default()).await;
    let request =
        format!("GET http://{host}/ HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let out = h.child(None, request.as_bytes()).await;
    assert_no_secret(&out);
    assert!(text(&out).ends_with("echo <[REDACTED]>"), "{}", text(&out));
    assert_eq!(injected(&plain.received()[0]).as_deref(), Some(SECRET));
}

/// A WebSocket frame from the server (unmasked).
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut f = vec![if fin { 0x80 } else { 0 } | opcode, payload.len() as u8];
    f.extend_from_slice(payload);
    f
}

/// Data frames' payloads, joined, and control frames' payloads, from the
/// bytes after a 101 head.
fn frames(mut bytes: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (mut data, mut control) = (Vec::new(), Vec::new());
    while bytes.len() >= 2 {
        let len = usize::from(bytes[1] & 0x7f);
        assert!(len < 126 && bytes[1] & 0x80 == 0);
        let payload = &bytes[2..2 + len];
        if bytes[0] & 0x0f >= 8 {
            control.extend_from_slice(payload);
        } else {
            data.extend_from_slice(payload);
        }
        bytes = &bytes[2 + len..];
    }
    (data, control)
}

/// Answers a WebSocket handshake with `upgrade`, a header echoing the
/// secret, and one text message carrying the secret split across three
/// fragments with a ping in between, then a close whose reason is the
/// secret.
fn websocket_api(upgrade: &'static str) -> Handler {
    Arc::new(move |req: &Received| {
        let secret = injected(req).unwrap_or_else(|| SECRET.to_owned());
        let mut out = format!(
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: {upgrade}\r\nconnection: upgrade\r\n\
             sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nx-echo: {secret}\r\n\r\n"
        )
        .into_bytes();
        let message = format!("you are {secret}!");
        let (a, rest) = message.as_bytes().split_at(12);
        let (b, c) = rest.split_at(6);
        out.extend(frame(false, 1, a));
        out.extend(frame(true, 9, b"ping"));
        out.extend(frame(false, 0, b));
        out.extend(frame(true, 0, c));
        let mut close = vec![3, 232];
        close.extend_from_slice(secret.as_bytes());
        out.extend(frame(true, 8, &close));
        out
    })
}

fn handshake(host: &str, upgrade: &str) -> Vec<u8> {
    format!(
        "GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: {upgrade}\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_websocket_is_joined_and_its_fragmented_messages_are_scrubbed() {
    let mut h = Harness::new();
    let ws = RawUpstream::tls(&h.identity, websocket_api("websocket")).await;
    let raw = RawUpstream::tls(&h.identity, websocket_api("x-raw")).await;
    let ws_host = format!("localhost:{}", ws.port);
    let raw_host = format!("localhost:{}", raw.port);
    h.start_proxy(
        vec![bearer(&[&ws_host, &raw_host])],
        ProxyOptions::default(),
    )
    .await;

    // Anything but exactly WebSocket, after a handshake with a secret, is
    // refused before it leaves.
    for upgrade in ["websocket, x-other", "x-raw", "h2c"] {
        let out = h.child(Some(&ws_host), &handshake(&ws_host, upgrade)).await;
        let reply = text(&out);
        assert!(reply.contains("403 Forbidden"), "{upgrade}: {reply}");
        assert!(
            reply.contains("x-keyward-blocked: upgrade_refused"),
            "{reply}"
        );
    }
    assert!(ws.received().is_empty());

    // A server that switches to something else is not joined.
    let out = h
        .child(Some(&raw_host), &handshake(&raw_host, "websocket"))
        .await;
    assert_no_secret(&out);
    let reply = text(&out);
    assert!(reply.contains("502 Bad Gateway"), "{reply}");
    assert!(
        reply.contains("x-keyward-blocked: upgrade_refused"),
        "{reply}"
    );

    // WebSocket: joined; the message is scrubbed across its fragments and
    // around the ping, the close reason and the 101's headers too; through
    // a name no grant covers (no secret sent) just the same.
    let other = format!("127.0.0.1:{}", ws.port);
    for host in [&ws_host, &other] {
        let out = h.child(Some(host), &handshake(host, "websocket")).await;
        let split = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = text(&out[..split]);
        assert!(head.contains("101 Switching Protocols"), "{head}");
        assert!(head.contains("x-echo: [REDACTED]"), "{head}");
        let (data, control) = frames(&out[split..]);
        assert_no_secret(&data);
        assert_no_secret(&control);
        let mask = format!("[REDACTED]{}", "*".repeat(SECRET.len() - 10));
        assert_eq!(text(&data), format!("you are {mask}!"));
        assert_eq!(&control[..4], b"ping");
        assert_eq!(text(&control[6..]), mask);
    }
    assert_eq!(injected(&ws.received()[0]).as_deref(), Some(SECRET));
    assert!(injected(&ws.received()[1]).is_none());
}

/// Runs the test named `name` again inside a network namespace that has
/// only loopback, so that a proxy which wrongly connects cannot send a
/// packet off the machine. Returns false when already inside.
fn rerun_without_network(name: &str) -> bool {
    const INSIDE: &str = "KEYWARD_TEST_WITHOUT_NETWORK";
    if std::env::var_os(INSIDE).is_some() {
        return false;
    }
    // Unprivileged: a user namespace too; as root, -n alone.
    let flags = ["-rn", "-n"]
        .into_iter()
        .find(|flags| {
            std::process::Command::new("unshare")
                .args([flags, "true"])
                .status()
                .is_ok_and(|s| s.success())
        })
        .expect("unshare cannot make a network namespace here; this test needs one");
    let status = std::process::Command::new("unshare")
        .args([flags, "sh", "-c", "ip link set lo up && exec \"$0\" \"$@\""])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(INSIDE, "1")
        .status()
        .unwrap();
    assert!(
        status.success(),
        "{name} failed inside its network namespace"
    );
    true
}

#[test]
fn metadata_addresses_in_every_form_are_refused_before_any_connect() {
    if rerun_without_network("metadata_addresses_in_every_form_are_refused_before_any_connect") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut h = Harness::new();
        h.start_proxy(vec![bearer(&["localhost"])], ProxyOptions::default())
            .await;
        let forms = [
            "169.254.169.254",
            "[::ffff:169.254.169.254]",
            "[::ffff:a9fe:a9fe]",
            "[::169.254.169.254]",
            "[64:ff9b::a9fe:a9fe]",
            "[64:ff9b:1::a9fe:a9fe]",
            "[fe80::1]",
            "[fd00:ec2::254]",
            "[fd20:ce::254]",
            "metadata.google.internal",
            "metadata",
            "metadata.azure.internal",
            "instance-data.ec2.internal",
            "metadata.tencentyun.com",
            // Outside link-local: Alibaba, Azure WireServer, Oracle legacy,
            // each also in the forms that carry an IPv4 address.
            "100.100.100.200",
            "[::ffff:100.100.100.200]",
            "[64:ff9b::6464:64c8]",
            "168.63.129.16",
            "[::ffff:a83f:8110]",
            "192.0.0.192",
            // Tencent Cloud's 169.254.0.23 and OpenStack's link-local peers.
            "169.254.0.23",
        ];
        for host in forms {
            for port in [80, 443] {
                let tunnel = format!("{host}:{port}");
                let out = h.child(Some(&tunnel), &get("/", &tunnel, "")).await;
                let reply = text(&out);
                assert!(reply.starts_with("HTTP/1.1 403"), "{tunnel}: {reply}");
                assert!(reply.contains("x-keyward-blocked: network.metadata"), "{reply}");
            }
            let request = format!(
                "GET http://{host}/latest/meta-data/ HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
            );
            let reply = text(&h.child(None, request.as_bytes()).await);
            assert!(reply.contains("x-keyward-blocked: network.metadata"), "{host}: {reply}");
        }
        // Forms only the resolver turns into an address (decimal, hex):
        // the resolved address goes through the same check, for forwarded
        // requests and for tunnels relayed without interception.
        let mut relaying = Harness::new();
        relaying
            .start_proxy(
                vec![bearer(&["localhost"])],
                ProxyOptions {
                    intercept: keyward_proxy::Intercept::Granted,
                    ..ProxyOptions::default()
                },
            )
            .await;
        // 2852039166 and 0xa9fea9fe: 169.254.169.254; 1684301000: 100.100.100.200.
        for host in ["2852039166", "0xa9fea9fe", "1684301000"] {
            let tunnel = format!("{host}:443");
            let reply = text(&relaying.child(Some(&tunnel), &get("/", &tunnel, "")).await);
            assert!(reply.starts_with("HTTP/1.1 502"), "{tunnel}: {reply}");
            assert!(reply.contains("link-local or metadata"), "{reply}");
            let request = format!(
                "GET http://{host}/ HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
            );
            let reply = text(&h.child(None, request.as_bytes()).await);
            assert!(reply.starts_with("HTTP/1.1 502"), "{host}: {reply}");
            assert!(reply.contains("link-local or metadata"), "{reply}");
        }
    });
}

/// The forms of the run token a child would try to slip past a filter.
fn token_carriers() -> Vec<(&'static str, String)> {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let hex: String = TOKEN.bytes().map(|b| format!("{b:02x}")).collect();
    let percent: String = TOKEN.bytes().map(|b| format!("%{b:02X}")).collect();
    vec![
        ("raw", TOKEN.to_owned()),
        ("upper-case", TOKEN.to_ascii_uppercase()),
        ("hex", hex.clone()),
        ("upper-case hex", hex.to_ascii_uppercase()),
        ("percent-encoded", percent),
        ("base64 of run:<token>", b64(&format!("run:{TOKEN}"))),
        ("base64 of the token", b64(TOKEN)),
    ]
}

/// Asserts the answer is the documented refusal, naming where the token was.
fn assert_token_refused(out: &[u8], place: &str, case: &str) {
    let reply = text(out);
    assert!(reply.starts_with("HTTP/1.1 403"), "{case}: {reply}");
    assert!(
        reply.contains("x-keyward-blocked: run_token"),
        "{case}: {reply}"
    );
    assert!(
        reply.contains(&format!("{place} carries this run's token")),
        "{case}: {reply}"
    );
}

/// Whether the upstream read the token in any form a child would try.
fn upstream_got_token(upstream: &RawUpstream) -> Option<String> {
    let raw = upstream.raw();
    let lower = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    token_carriers()
        .into_iter()
        .find(|(_, form)| lower.contains(&form.to_ascii_lowercase()))
        .map(|(case, _)| format!("{case}: {}", String::from_utf8_lossy(&raw)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_token_never_goes_upstream_in_headers_urls_or_bodies() {
    let mut h = Harness::new();
    let granted_api = RawUpstream::tls(&h.identity, echo_api()).await;
    let other_api = RawUpstream::tls(&h.identity, echo_api()).await;
    let plain = RawUpstream::plain(echo_api()).await;
    let granted = format!("localhost:{}", granted_api.port);
    let other = format!("localhost:{}", other_api.port);
    let plain_host = format!("localhost:{}", plain.port);
    h.start_proxy(vec![bearer(&[&granted])], ProxyOptions::default())
        .await;
    let base_url = format!("http://127.0.0.1:{}/r/{TOKEN}/api", h.proxy_port);

    // Each way in: a CONNECT tunnel to the granted host (injected), one to
    // another host (intercepted, nothing injected), and absolute-form
    // http:// in clear.
    let ways: [(Option<&str>, String, &RawUpstream); 3] = [
        (Some(&granted), granted.clone(), &granted_api),
        (Some(&other), other.clone(), &other_api),
        (None, plain_host.clone(), &plain),
    ];
    for (tunnel, host, upstream) in ways {
        let path = |p: &str| match tunnel {
            Some(_) => p.to_owned(),
            None => format!("http://{host}{p}"),
        };
        let mut attacks: Vec<(String, &str, Vec<u8>)> = vec![
            (
                "Referer".into(),
                "the referer header",
                get(
                    &path("/echo"),
                    &host,
                    &format!("Referer: {base_url}/page\r\n"),
                ),
            ),
            (
                "Origin".into(),
                "the origin header",
                get(&path("/echo"), &host, &format!("Origin: {base_url}\r\n")),
            ),
            (
                "header name".into(),
                "a header name",
                get(&path("/echo"), &host, &format!("X-{TOKEN}: 1\r\n")),
            ),
        ];
        for (case, form) in token_carriers() {
            attacks.push((
                format!("custom header, {case}"),
                "the x-leak header",
                get(&path("/echo"), &host, &format!("X-Leak: {form}\r\n")),
            ));
            attacks.push((
                format!("query, {case}"),
                "the query string",
                get(&path(&format!("/echo?t={form}&x=1")), &host, ""),
            ));
        }
        attacks.push((
            "Authorization: Basic run:<token>".into(),
            "the authorization header",
            get(
                &path("/echo"),
                &host,
                &format!("Authorization: Basic {}\r\n", token_carriers()[5].1),
            ),
        ));
        attacks.push((
            "path".into(),
            "the URL path",
            get(&path(&format!("/r/{TOKEN}/api/x")), &host, ""),
        ));
        // A JSON body, and a streamed body whose token comes after 60 KiB.
        let json = format!("{{\"model\": \"m\", \"note\": \"{TOKEN}\"}}");
        let mut big = vec![b'x'; 60 * 1024];
        big.extend_from_slice(json.as_bytes());
        for (case, body) in [("JSON body", json.into_bytes()), ("streamed body", big)] {
            let mut request = format!(
                "POST {} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                path("/echo"),
                body.len()
            )
            .into_bytes();
            request.extend_from_slice(&body);
            attacks.push((case.into(), "the request body", request));
        }
        for (case, place, request) in attacks {
            let case = format!("{case} via {tunnel:?}");
            let out = h.child(tunnel, &request).await;
            assert_token_refused(&out, place, &case);
            if let Some(leak) = upstream_got_token(upstream) {
                panic!("{case}: the upstream got the run token: {leak}");
            }
        }
        // An ordinary request on the same way still goes through.
        let body = "{\"model\": \"m\"}";
        let request = format!(
            "POST {} HTTP/1.1\r\nHost: {host}\r\nReferer: https://{host}/page\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            path("/echo?x=1"),
            body.len()
        );
        let out = h.child(tunnel, request.as_bytes()).await;
        let reply = text(&out);
        assert!(reply.starts_with("HTTP/1.1 200"), "{tunnel:?}: {reply}");
        let last = upstream.received().pop().expect("the request arrived");
        assert_eq!(last.body, body.as_bytes());
        assert!(last.target().ends_with("/echo?x=1"), "{}", last.head);
    }

    // A CONNECT whose host name carries the token is refused before any
    // name lookup.
    let out = h.child(Some(&format!("{TOKEN}.localhost:443")), b"").await;
    assert_token_refused(&out, "the host name", "CONNECT host");

    // HTTP/2 between the child and the proxy (curl, as gRPC clients speak).
    for header in [
        format!("Referer: {base_url}/page"),
        format!("x-leak: {}", TOKEN.to_ascii_uppercase()),
    ] {
        let curl = tokio::process::Command::new("curl")
            .args(["-sS", "--http2", "-D", "-", "-H", &header])
            .arg("--cacert")
            .arg(h.proxy_ca())
            .arg("-x")
            .arg(format!("http://run:{TOKEN}@127.0.0.1:{}", h.proxy_port))
            .arg(format!("https://{granted}/h2"))
            .output()
            .await
            .expect("curl runs");
        let reply = text(&curl.stdout);
        assert!(reply.contains("\nHTTP/2 403"), "{header}: {reply}");
        assert!(reply.contains("x-keyward-blocked: run_token"), "{reply}");
    }
    for upstream in [&granted_api, &other_api, &plain] {
        assert!(upstream_got_token(upstream).is_none());
    }
}

/// A WebSocket frame from the client (masked with `key`).
fn client_frame(opcode: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut f = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    f
}

/// The unmasked payloads of the client frames in `bytes`.
fn client_payloads(mut bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while bytes.len() >= 6 {
        let len = usize::from(bytes[1] & 0x7f);
        assert!(len < 126 && bytes[1] & 0x80 != 0, "{bytes:?}");
        let key = &bytes[2..6];
        out.extend(
            bytes[6..6 + len]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ key[i % 4]),
        );
        bytes = &bytes[6 + len..];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_frames_the_child_sends_reach_the_upstream_without_the_run_token() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut h = Harness::new();
    // A WebSocket server that keeps every byte the client sends after the
    // handshake (until it has been quiet for a second).
    let got: Arc<Mutex<Vec<u8>>> = Arc::default();
    let record = got.clone();
    let ws = Origin::builder()
        .identity(h.identity.clone())
        .fallback(move |_| {
            let record = record.clone();
            Answer::upgrade("websocket", move |mut io| async move {
                let mut buf = vec![0u8; 65536];
                while let Ok(Ok(n)) =
                    tokio::time::timeout(std::time::Duration::from_secs(1), io.read(&mut buf)).await
                {
                    if n == 0 {
                        break;
                    }
                    record.lock().unwrap().extend_from_slice(&buf[..n]);
                }
                let _ = io.shutdown().await;
            })
            .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        })
        .start()
        .await;
    let port = ws.port();
    let host = format!("localhost:{port}");
    h.start_proxy(vec![bearer(&[&host])], ProxyOptions::default())
        .await;
    let mut request = handshake(&host, "websocket");
    let key = [0x11, 0x22, 0x33, 0x44];
    request.extend(client_frame(1, format!("hello {TOKEN}!").as_bytes(), key));
    let upper = TOKEN.to_ascii_uppercase();
    request.extend(client_frame(1, format!("again {upper}").as_bytes(), key));
    request.extend(client_frame(1, b"an ordinary message", key));
    let out = h.child(Some(&host), &request).await;
    assert!(
        text(&out).contains("101 Switching Protocols"),
        "{}",
        text(&out)
    );
    let sent = client_payloads(&got.lock().unwrap());
    let sent = text(&sent);
    assert!(
        !sent.to_ascii_lowercase().contains(TOKEN),
        "the upstream got the run token: {sent}"
    );
    assert!(sent.starts_with("hello [REDACTED]"), "{sent}");
    assert!(sent.contains("again [REDACTED]"), "{sent}");
    assert!(sent.ends_with("an ordinary message"), "{sent}");
}
