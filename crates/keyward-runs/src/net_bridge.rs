//! The bridge out of a sandboxed run's private network namespace:
//! `keyward run` holds listeners the program's namespace opened on
//! `127.0.0.1:<port>` and `[::1]:<port>` and relays each accepted
//! connection to one address on the host: the proxy's (whichever family
//! the program used), or the same loopback address and port for a port
//! `--allow-port` forwards. Nothing else leaves the namespace.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Connections relayed at once per run; more wait in the listen backlog
/// (a program cannot exhaust `keyward run`'s descriptors this way).
pub const MAX_BRIDGED: usize = 512;

/// Where a connection accepted on `listener` goes on the host: the proxy
/// listens on `127.0.0.1` only, so both families of its port lead there
/// (never to whatever holds that port number on `::1`); a forwarded port
/// keeps the family the program used.
pub fn bridge_target(listener: &keyward_sys::ForwardedListener, proxy_port: u16) -> SocketAddr {
    if listener.ipv6 && listener.port != proxy_port {
        SocketAddr::from((Ipv6Addr::LOCALHOST, listener.port))
    } else {
        SocketAddr::from((Ipv4Addr::LOCALHOST, listener.port))
    }
}

/// Serves every listener until this process exits: each connection
/// accepted on a listener is relayed to its [`bridge_target`] on the host,
/// with `TCP_NODELAY` on both sides. Needs a tokio runtime.
pub fn spawn_bridge(
    listeners: Vec<keyward_sys::ForwardedListener>,
    proxy_port: u16,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(MAX_BRIDGED));
    for forwarded in listeners {
        let target = bridge_target(&forwarded, proxy_port);
        let port = forwarded.port;
        forwarded.listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(forwarded.listener)?;
        let permits = permits.clone();
        tokio::spawn(async move {
            loop {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let inside = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::debug!(port, error = %e, "bridge accept failed");
                        // EMFILE and friends: give the process a moment.
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        continue;
                    }
                };
                tokio::spawn(async move {
                    let _permit = permit;
                    relay(inside, target).await;
                });
            }
        });
    }
    Ok(())
}

async fn relay(mut inside: TcpStream, target: SocketAddr) {
    let _ = inside.set_nodelay(true);
    let Ok(mut outside) = TcpStream::connect(target).await else {
        return;
    };
    let _ = outside.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut inside, &mut outside).await;
}
