//! The bridge out of a sandboxed run's private network namespace:
//! `keyward run` holds listeners the program's namespace opened on
//! `127.0.0.1:<port>` and relays each accepted connection to the same
//! port on the host's loopback (the proxy, or a port `--allow-port`
//! forwards). Nothing else leaves the namespace.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Connections relayed at once per run; more wait in the listen backlog
/// (a program cannot exhaust `keyward run`'s descriptors this way).
pub const MAX_BRIDGED: usize = 512;

/// Serves every listener until this process exits: each connection
/// accepted on `(port, listener)` is relayed to `127.0.0.1:port` on the
/// host, with `TCP_NODELAY` on both sides. Needs a tokio runtime.
pub fn spawn_bridge(listeners: Vec<(u16, std::net::TcpListener)>) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(MAX_BRIDGED));
    for (port, listener) in listeners {
        listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(listener)?;
        let permits = permits.clone();
        let target = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
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
