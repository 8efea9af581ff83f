//! Dialling other nodes over mTLS: a connector for `Endpoint::connect_with_connector*`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Context;
use std::task::Poll;

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::codegen::http::Uri;

use super::PeerTls;

/// Connects `http://host:port` URIs with TCP, then an mTLS handshake (the URI's scheme stays
/// `http`: the TLS is ours, so tonic does not add its own).
#[derive(Clone, Debug)]
pub struct Connector {
    source: Source,
}

#[derive(Clone, Debug)]
enum Source {
    /// A node's own identity, reloaded (the config is taken at each connection).
    Peer(Arc<PeerTls>),
    /// A fixed client config (tools, tests) and the name to check (None: the host dialled).
    Fixed(Arc<ClientConfig>, Option<String>),
}

impl Connector {
    pub fn new(tls: Arc<PeerTls>) -> Connector {
        Connector {
            source: Source::Peer(tls),
        }
    }

    /// Dials with `config`, checking `server_name` (None: the host dialled) in the server's
    /// certificate.
    pub fn with_config(config: Arc<ClientConfig>, server_name: Option<String>) -> Connector {
        Connector {
            source: Source::Fixed(config, server_name),
        }
    }

    fn config(&self) -> (Arc<ClientConfig>, Option<String>) {
        match &self.source {
            Source::Peer(tls) => (tls.client_config(), tls.server_name().map(str::to_string)),
            Source::Fixed(c, name) => (c.clone(), name.clone()),
        }
    }
}

type Connecting =
    Pin<Box<dyn Future<Output = std::io::Result<TokioIo<TlsStream<TcpStream>>>> + Send>>;

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let (config, server_name) = self.config();
        Box::pin(async move {
            let bad = |what: &str| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{what}: {uri}"))
            };
            let host = uri.host().ok_or_else(|| bad("no host"))?;
            // `[::1]` in a URI; the bare address for the socket and the name.
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().ok_or_else(|| bad("no port"))?;
            let name = server_name.unwrap_or_else(|| host.clone());
            let name = ServerName::try_from(name).map_err(|e| bad(&e.to_string()))?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let stream = TlsConnector::from(config).connect(name, tcp).await?;
            Ok(TokioIo::new(stream))
        })
    }
}
