//! Accepting TLS connections for a tonic server ([`incoming`]) or an axum one
//! ([`TlsListener`]).

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use super::Acceptor;
use super::HANDSHAKE_TIMEOUT;

type Accepted = std::io::Result<TlsStream<TcpStream>>;

/// Connections accepted on `listener` that completed a TLS handshake with `tls`, for
/// `Server::serve_with_incoming*`. Each handshake runs in its own task, so a slow or
/// hostile client does not hold up the others; failed handshakes are counted
/// (`kindex_peer_tls_handshake_failures_total` / `kindex_client_tls_handshake_failures_total`)
/// and logged at debug, never served. The accept loop ends when the server drops the stream.
pub fn incoming(listener: TcpListener, tls: Acceptor) -> ReceiverStream<Accepted> {
    ReceiverStream::new(accept_loop(listener, tls))
}

fn accept_loop(listener: TcpListener, tls: Acceptor) -> mpsc::Receiver<Accepted> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let acceptor = TlsAcceptor::from(tls.config.clone());
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = tx.closed() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let (failures, what) = (tls.failures, tls.what);
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => {
                        failures.inc();
                        tracing::debug!(%peer, error = %e, "{what} TLS handshake refused");
                    }
                    Err(_) => {
                        failures.inc();
                        tracing::debug!(%peer, "{what} TLS handshake timed out");
                    }
                }
            });
        }
    });
    rx
}

/// An [`axum::serve::Listener`] of TLS connections (the HTTP port with client TLS), accepted
/// as [`incoming`] does.
pub struct TlsListener {
    rx: mpsc::Receiver<Accepted>,
    local: SocketAddr,
}

impl TlsListener {
    pub fn new(listener: TcpListener, tls: Acceptor) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        Ok(TlsListener {
            rx: accept_loop(listener, tls),
            local,
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.rx.recv().await {
                Some(Ok(stream)) => {
                    let peer = stream.get_ref().0.peer_addr().unwrap_or(self.local);
                    return (stream, peer);
                }
                Some(Err(_)) => continue,
                // The accept loop ended (it never does while we hold the receiver).
                None => std::future::pending().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
