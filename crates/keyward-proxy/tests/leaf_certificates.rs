//! The leaf certificates of intercepted tunnels, seen from a python3
//! child: the CONNECT authority names the leaf, whatever the child puts
//! in SNI (another name, none at all), and IP-literal targets get a leaf
//! for the address. Nothing here leaves loopback: the names end in
//! `.invalid` and no request is sent through the tunnels, so nothing
//! resolves them.

mod common;

use common::{Harness, TOKEN};
use keyward_proxy::ProxyOptions;

/// CONNECTs to `authority`, then makes a TLS handshake sending `sni`
/// (none when empty) and verifying the chain against the proxy's CA (not
/// the name: the test compares it); prints the leaf's subjectAltName
/// entries, one `TYPE:VALUE` per line.
const HANDSHAKE: &str = r#"
import socket, ssl, sys
port, token, ca, authority, sni = sys.argv[1:6]
s = socket.create_connection(("127.0.0.1", int(port)), timeout=20)
s.sendall(("CONNECT %s HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: Bearer %s\r\n\r\n"
           % (authority, authority, token)).encode())
head = b""
while b"\r\n\r\n" not in head:
    head += s.recv(1)
assert head.startswith(b"HTTP/1.1 200"), head
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.load_verify_locations(ca)
tls = ctx.wrap_socket(s, server_hostname=sni or None)
for kind, value in tls.getpeercert()["subjectAltName"]:
    print("%s:%s" % (kind, value))
"#;

async fn leaf_names(h: &Harness, authority: &str, sni: &str) -> String {
    let out = tokio::process::Command::new("python3")
        .args(["-c", HANDSHAKE])
        .arg(h.proxy_port.to_string())
        .arg(TOKEN)
        .arg(h.proxy_ca())
        .args([authority, sni])
        .output()
        .await
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "handshake through {authority} with SNI {sni:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A child asking, by SNI, for a leaf of another name than the one it
/// CONNECTed to gets the CONNECT authority's leaf (whose name its TLS
/// client would refuse), never one for the name it asked for; the same
/// holds once a leaf for that other name is cached from a tunnel of its
/// own. Without SNI (an IP literal, or a client that sends none) the
/// leaf is the CONNECT authority's too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connect_authority_names_the_leaf_whatever_the_sni() {
    let mut h = Harness::new();
    h.start_proxy(vec![], ProxyOptions::default()).await;

    let cases = [
        (
            "asked.leaf-test.invalid:443",
            "other.leaf-test.invalid",
            "DNS:asked.leaf-test.invalid",
        ),
        (
            "other.leaf-test.invalid:443",
            "other.leaf-test.invalid",
            "DNS:other.leaf-test.invalid",
        ),
        // Now that other's leaf is cached, SNI still does not reach it.
        (
            "asked.leaf-test.invalid:443",
            "other.leaf-test.invalid",
            "DNS:asked.leaf-test.invalid",
        ),
        (
            "Asked.Leaf-Test.invalid:443",
            "",
            "DNS:asked.leaf-test.invalid",
        ),
        ("127.0.0.2:443", "", "IP Address:127.0.0.2"),
        (
            "127.0.0.2:443",
            "other.leaf-test.invalid",
            "IP Address:127.0.0.2",
        ),
        ("[::1]:443", "", "IP Address:0:0:0:0:0:0:0:1"),
    ];
    for (authority, sni, leaf) in cases {
        let names = leaf_names(&h, authority, sni).await;
        assert_eq!(
            names.trim(),
            leaf,
            "CONNECT {authority} with SNI {sni:?} got a leaf for {names}"
        );
    }
}
