//! The one cache of gRPC channels from this node to other nodes' client endpoints, shared by
//! forwarding to the shard leader, the divergence guard and the coordinator's calls to other
//! shards (one set of timeouts, one connection per address).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tonic::transport::Channel;
use tonic::transport::Endpoint;

use crate::tls::Connector;
use crate::tls::PeerTls;

/// How long connecting to another node may take. Calls are retried elsewhere (the coordinator)
/// or answered as unavailable (forwarding), so a dead address should fail fast.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
#[error("bad address {addr:?}: {reason}")]
pub struct BadAddress {
    pub addr: String,
    pub reason: String,
}

/// Lazily connecting channels by `host:port`.
#[derive(Default)]
pub struct Channels {
    /// The channels, and the peer TLS generation they were made with.
    by_addr: Mutex<(u64, HashMap<String, Channel>)>,
    /// Peer mTLS: every channel is dialled with this node's certificate. With it on, calls
    /// between nodes go to the other node's internal (admin) port, never its client port
    /// ([`Channels::peer_tls`]).
    tls: Option<Arc<PeerTls>>,
}

impl Channels {
    pub fn new(tls: Option<Arc<PeerTls>>) -> Channels {
        Channels {
            by_addr: Mutex::default(),
            tls,
        }
    }

    /// Whether calls to other nodes use peer mTLS (and so their internal port).
    pub fn peer_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// A cached channel to `addr` (`host:port`), connecting on first use.
    pub fn get(&self, addr: &str) -> Result<Channel, BadAddress> {
        let mut guard = self.by_addr.lock();
        let (generation, by_addr) = &mut *guard;
        // New certificates: new connections (see `PeerTls::generation`).
        if let Some(tls) = &self.tls
            && tls.generation() != *generation
        {
            by_addr.clear();
            *generation = tls.generation();
        }
        if let Some(c) = by_addr.get(addr) {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| BadAddress {
                addr: addr.to_string(),
                reason: e.to_string(),
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(20));
        let c = match &self.tls {
            None => endpoint.connect_lazy(),
            Some(tls) => endpoint.connect_with_connector_lazy(Connector::new(tls.clone())),
        };
        by_addr.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// How many addresses have a channel.
    pub fn len(&self) -> usize {
        self.by_addr.lock().1.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_channel_per_address() {
        let c = Channels::default();
        c.get("127.0.0.1:1").unwrap();
        c.get("127.0.0.1:1").unwrap();
        c.get("127.0.0.2:1").unwrap();
        assert_eq!(c.len(), 2);
        assert!(c.get("not an address").is_err());
    }
}
