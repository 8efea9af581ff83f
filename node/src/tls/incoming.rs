//! Accepting mTLS connections for a tonic server.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use super::HANDSHAKE_TIMEOUT;
use super::PeerTls;

/// Connections accepted on `listener` that completed an mTLS handshake, for
/// `Server::serve_with_incoming*`. Each handshake runs in its own task, so a slow or
/// hostile client does not hold up the others; failed handshakes are counted
/// (`kindex_peer_tls_handshake_failures_total`) and logged at debug, never served. The
/// accept loop ends when the server drops the stream.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<PeerTls>,
) -> ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
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
            let acceptor = TlsAcceptor::from(tls.server_config());
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => {
                        crate::metrics::peer_tls_handshake_failures().inc();
                        tracing::debug!(%peer, error = %e, "peer TLS handshake refused");
                    }
                    Err(_) => {
                        crate::metrics::peer_tls_handshake_failures().inc();
                        tracing::debug!(%peer, "peer TLS handshake timed out");
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
