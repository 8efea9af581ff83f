//! The shard leader as this node knows it, and forwarding to it (once).

use std::time::Duration;

use crate::channels::Channels;
use kindex_proto as pb;
use openraft::async_runtime::WatchReceiver;
use tonic::transport::Channel;

use crate::raft;
use crate::raft::NodeId;

use super::*;

impl Node {
    // ---------------------------------------------------------------- leader and forwarding

    /// The client gRPC address of a member address (`"raft"` or `"raft|grpc"`): the explicit
    /// one, else the Raft host with this node's gRPC port (every replica of a StatefulSet
    /// listens on the same ports).
    pub fn grpc_addr_of_member(&self, addr: &str) -> String {
        member_grpc_addr(addr, self.grpc_port)
    }

    /// The Admin gRPC address of a member address: the explicit one (`"raft|grpc|admin"`),
    /// else the Raft host with this node's admin port (same ports on every replica).
    pub fn admin_addr_of_member(&self, addr: &str) -> String {
        member_admin_addr(addr, self.admin_port)
    }

    pub fn leader(&self) -> Option<LeaderInfo> {
        let m = self.raft.metrics().borrow_watched().clone();
        let id = m.current_leader?;
        let addr = m
            .membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone());
        Some(LeaderInfo {
            id,
            grpc: addr.as_ref().map(|a| self.grpc_addr_of_member(a)),
            admin: addr.as_ref().map(|a| self.admin_addr_of_member(a)),
        })
    }

    pub(super) fn not_leader(&self, id: Option<NodeId>, node: Option<raft::Member>) -> NodeError {
        let grpc = node.map(|n| self.grpc_addr_of_member(&n.addr)).or_else(|| {
            self.leader()
                .filter(|l| Some(l.id) == id)
                .and_then(|l| l.grpc)
        });
        NodeError::NotLeader {
            leader_id: id,
            leader_grpc: grpc,
        }
    }

    /// A cached channel to another member's client gRPC endpoint.
    pub(super) fn channel(&self, grpc_addr: &str) -> Result<Channel, NodeError> {
        self.channels
            .get(grpc_addr)
            .map_err(|e| NodeError::Unavailable(format!("member: {e}")))
    }

    /// The channel cache to other nodes, shared with the coordinator.
    pub fn channels(&self) -> &Arc<Channels> {
        &self.channels
    }

    /// Where to call another member's `Points` service known by its client address: that
    /// address, or with peer mTLS on its internal (admin) port, where the call is known to
    /// come from a node by its certificate (see [`crate::tls`]).
    pub fn points_addr_of(&self, grpc_addr: &str) -> String {
        if !self.channels.peer_tls() {
            return grpc_addr.to_string();
        }
        let m = self.raft.metrics().borrow_watched().clone();
        m.membership_config
            .membership()
            .nodes()
            .find(|(_, n)| self.grpc_addr_of_member(&n.addr) == grpc_addr)
            .map(|(_, n)| self.admin_addr_of_member(&n.addr))
            .unwrap_or_else(|| with_port(grpc_addr, self.admin_port))
    }

    /// A client to another member's `Points` service (`grpc_addr`: its client address; see
    /// [`Self::points_addr_of`]).
    pub fn points_client(
        &self,
        grpc_addr: &str,
    ) -> Result<pb::points_client::PointsClient<Channel>, NodeError> {
        Ok(
            pb::points_client::PointsClient::new(self.channel(&self.points_addr_of(grpc_addr))?)
                .max_decoding_message_size(256 << 20)
                .max_encoding_message_size(256 << 20),
        )
    }

    /// A client to another member's `Admin` service (`admin_addr`: its admin port, see
    /// [`Self::admin_addr_of_member`]).
    pub fn admin_client(
        &self,
        admin_addr: &str,
    ) -> Result<pb::admin_client::AdminClient<Channel>, NodeError> {
        Ok(pb::admin_client::AdminClient::new(
            self.channel(admin_addr)?,
        ))
    }

    /// Where to forward a request this node cannot serve: the leader, if known, not us, and the
    /// request was not forwarded already.
    pub(super) fn forward_target(
        &self,
        err: &NodeError,
        forwarded: bool,
    ) -> Option<(NodeId, String)> {
        match err {
            NodeError::NotLeader {
                leader_id: Some(id),
                leader_grpc: Some(addr),
            } if !forwarded && *id != self.node_id => Some((*id, addr.clone())),
            _ => None,
        }
    }

    /// A request to forward, marked as forwarded, with a deadline, carrying the caller's API
    /// key (the leader checks it like any client's, see `crate::auth`).
    pub fn forwarded_request<T>(&self, msg: T, timeout: Duration) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        if let Ok(v) = self.node_id.to_string().parse() {
            req.metadata_mut().insert(FORWARDED_HEADER, v);
        }
        crate::auth::attach(req.metadata_mut());
        req.set_timeout(timeout);
        req
    }

    /// The forwarded call failed: "unavailable" answers (including transport errors) stay
    /// retryable and name the leader; anything else the leader answered is passed through.
    pub(super) fn forward_failed(&self, leader: NodeId, addr: &str, s: tonic::Status) -> NodeError {
        match s.code() {
            _ if s.metadata().contains_key(QUORUM_LOST_HEADER) => NodeError::Forwarded(s),
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled => {
                NodeError::Unavailable(format!(
                    "forwarded to the shard leader (node {leader} at {addr}): {}",
                    s.message()
                ))
            }
            _ => NodeError::Forwarded(s),
        }
    }

    /// Whether an error of `read_barrier` should make the caller forward the read to the leader.
    pub fn read_forward_target(
        &self,
        err: &NodeError,
        forwarded: bool,
    ) -> Option<(NodeId, String)> {
        self.forward_target(err, forwarded)
    }

    /// See [`Self::forward_failed`].
    pub fn forward_error(&self, leader: NodeId, addr: &str, s: tonic::Status) -> NodeError {
        self.forward_failed(leader, addr, s)
    }
}

/// The shard's entry in a write response from another node.
pub fn outcome_of(r: pb::WriteResponse, shard: u32) -> WriteOutcome {
    let applied_index = r
        .token
        .and_then(|t| t.shards.into_iter().find(|s| s.shard == shard))
        .map_or(0, |s| s.applied_index);
    WriteOutcome {
        affected: r.affected,
        applied_index,
    }
}

/// The client gRPC address of a member address (`"raft"` or `"raft|grpc"`): the explicit one,
/// else the Raft host with `default_port`.
pub fn member_grpc_addr(addr: &str, default_port: u16) -> String {
    match raft::grpc_addr_of(addr) {
        Some(g) => g.to_string(),
        None => with_port(raft::raft_addr_of(addr), default_port),
    }
}

/// The Admin gRPC address of a member address (`"raft"`, `"raft|grpc"` or
/// `"raft|grpc|admin"`): the explicit one, else the Raft host with `default_port`.
pub fn member_admin_addr(addr: &str, default_port: u16) -> String {
    match raft::admin_addr_of(addr) {
        Some(a) => a.to_string(),
        None => with_port(raft::raft_addr_of(addr), default_port),
    }
}

/// `host:port` → `host:<port>`; a bare host gets the port.
pub fn with_port(addr: &str, port: u16) -> String {
    match addr.rsplit_once(':') {
        Some((host, _)) => format!("{host}:{port}"),
        None => format!("{addr}:{port}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_addresses_give_the_grpc_endpoint() {
        assert_eq!(member_grpc_addr("a.svc:7071", 7070), "a.svc:7070");
        assert_eq!(
            member_grpc_addr("10.0.0.1:9|10.0.0.1:8", 7070),
            "10.0.0.1:8"
        );
        assert_eq!(member_grpc_addr("[::1]:7071", 7070), "[::1]:7070");
        assert_eq!(raft::raft_addr_of("h:1|h:2"), "h:1");
        assert_eq!(raft::grpc_addr_of("h:1|"), None);
    }

    #[test]
    fn member_addresses_give_the_admin_endpoint() {
        // Derived from the Raft host: the operator's members are `pod.headless.ns.svc:7071`.
        assert_eq!(member_admin_addr("a.svc:7071", 7072), "a.svc:7072");
        assert_eq!(member_admin_addr("h:1|h:2", 7072), "h:7072");
        // Explicit third part (nodes sharing one host with different ports).
        assert_eq!(member_admin_addr("h:1|h:2|h:3", 7072), "h:3");
        assert_eq!(member_grpc_addr("h:1|h:2|h:3", 7070), "h:2");
        assert_eq!(raft::raft_addr_of("h:1|h:2|h:3"), "h:1");
        assert_eq!(member_admin_addr("h:1||", 7072), "h:7072");
        assert_eq!(with_port("[::1]:7070", 7072), "[::1]:7072");
    }
}
