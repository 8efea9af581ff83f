//! `GrpcNodeClient` against a real tonic Admin server on loopback, through an
//! injected `AddressBook` (the way a later test tier maps pods to local processes).
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kindex_operator::observe::{AddressBook, GrpcNodeClient, NodeClient, NodeError, PodRef};
use kindex_proto::admin_server::{Admin, AdminServer};
use kindex_proto::{
    AddLearnerRequest, AdminResponse, ChangeMembershipRequest, InitializeRequest, Member,
    SnapshotResponse, StatusRequest, StatusResponse, TransferLeaderRequest, TriggerSnapshotRequest,
};
use tonic::{Request, Response, Status};

#[path = "../../node/tests/procs/loopback.rs"]
mod loopback;

#[derive(Default, Clone)]
struct FakeAdmin {
    calls: Arc<Mutex<Vec<String>>>,
}

impl FakeAdmin {
    fn push(&self, s: String) -> Result<Response<AdminResponse>, Status> {
        self.calls.lock().unwrap().push(s);
        Ok(Response::new(AdminResponse::default()))
    }
}

#[tonic::async_trait]
impl Admin for FakeAdmin {
    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        Ok(Response::new(StatusResponse {
            index: "idx".into(),
            node_id: 0,
            role: "leader".into(),
            initialized: true,
            structural_hash: "74f6a5f1cbb7360a".into(),
            ..StatusResponse::default()
        }))
    }
    async fn initialize(
        &self,
        r: Request<InitializeRequest>,
    ) -> Result<Response<AdminResponse>, Status> {
        let ids: Vec<u64> = r.get_ref().members.iter().map(|m| m.node_id).collect();
        self.push(format!(
            "initialize {ids:?} {}",
            r.get_ref().members[1].addr
        ))
    }
    async fn add_learner(
        &self,
        r: Request<AddLearnerRequest>,
    ) -> Result<Response<AdminResponse>, Status> {
        let r = r.into_inner();
        let m = r.member.unwrap();
        self.push(format!(
            "add_learner {} voter={} blocking={}",
            m.node_id, m.voter, r.blocking
        ))
    }
    async fn change_membership(
        &self,
        r: Request<ChangeMembershipRequest>,
    ) -> Result<Response<AdminResponse>, Status> {
        let r = r.into_inner();
        self.push(format!(
            "change_membership {:?} retain={}",
            r.voters, r.retain
        ))
    }
    async fn transfer_leader(
        &self,
        r: Request<TransferLeaderRequest>,
    ) -> Result<Response<AdminResponse>, Status> {
        if r.get_ref().to == 99 {
            return Err(Status::failed_precondition("not a voter"));
        }
        self.push(format!("transfer_leader {}", r.get_ref().to))
    }
    async fn apply_digest(
        &self,
        _: Request<kindex_proto::ApplyDigestRequest>,
    ) -> Result<Response<kindex_proto::ApplyDigestResponse>, Status> {
        Err(Status::unimplemented("not used by the operator"))
    }
    async fn trigger_snapshot(
        &self,
        _: Request<TriggerSnapshotRequest>,
    ) -> Result<Response<SnapshotResponse>, Status> {
        Err(Status::unimplemented("not used by the operator"))
    }
    async fn change_policy(
        &self,
        _: Request<kindex_proto::PolicyWriteRequest>,
    ) -> Result<Response<kindex_proto::PolicyWriteResponse>, Status> {
        Err(Status::unimplemented("not used by the operator yet"))
    }
    async fn list_policies(
        &self,
        _: Request<kindex_proto::ListPoliciesRequest>,
    ) -> Result<Response<kindex_proto::ListPoliciesResponse>, Status> {
        Err(Status::unimplemented("not used by the operator yet"))
    }
}

/// Every pod is the one local server; Raft addresses stay symbolic.
/// Every pod's admin endpoint is this `ip:port`.
struct Loopback(String);

impl AddressBook for Loopback {
    fn admin_endpoint(&self, _: &PodRef) -> String {
        format!("http://{}", self.0)
    }
    fn raft_addr(&self, pod: &PodRef) -> String {
        format!("{}:7071", pod.pod_name())
    }
}

/// A node from before the admin port: nothing listens on `.0` (its admin port), Admin is
/// served on `.1` (its data port).
struct PreAdminPort(String, String);

impl AddressBook for PreAdminPort {
    fn admin_endpoint(&self, _: &PodRef) -> String {
        format!("http://{}", self.0)
    }
    fn raft_addr(&self, pod: &PodRef) -> String {
        format!("{}:7071", pod.pod_name())
    }
    fn pre_admin_port_endpoint(&self, _: &PodRef) -> Option<String> {
        Some(format!("http://{}", self.1))
    }
}

fn pod(ordinal: u32) -> PodRef {
    PodRef {
        namespace: "ns".into(),
        index: "idx".into(),
        shard: 0,
        ordinal,
    }
}

#[tokio::test]
async fn admin_calls_reach_the_node() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let admin = FakeAdmin::default();
    let server = admin.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(AdminServer::new(server))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    let client = GrpcNodeClient {
        addresses: Arc::new(Loopback(format!("127.0.0.1:{port}"))),
        timeout: Duration::from_secs(5),
        identities: Default::default(),
    };

    let s = client.status(&pod(0)).await.unwrap();
    assert_eq!((s.role.as_str(), s.initialized), ("leader", true));
    let member = |id: u64, voter| Member {
        node_id: id,
        addr: format!("idx-s0-{id}:7071"),
        voter,
    };
    client
        .initialize(&pod(0), vec![member(0, true), member(1, true)])
        .await
        .unwrap();
    client.add_learner(&pod(0), member(3, false)).await.unwrap();
    client
        .change_membership(&pod(0), vec![0, 1, 3])
        .await
        .unwrap();
    client.transfer_leader(&pod(0), 1).await.unwrap();
    assert_eq!(
        *admin.calls.lock().unwrap(),
        [
            "initialize [0, 1] idx-s0-1:7071",
            "add_learner 3 voter=false blocking=false",
            "change_membership [0, 1, 3] retain=false",
            "transfer_leader 1",
        ]
    );

    let err = client.transfer_leader(&pod(0), 99).await.unwrap_err();
    assert!(
        matches!(&err, NodeError::Rpc { status, .. } if status.contains("not a voter")),
        "{err}"
    );
}

#[tokio::test]
async fn unreachable_node_is_an_error_not_a_hang() {
    // An address nobody listens on: a loopback address of this test's own.
    let nobody = format!("{}:7072", loopback::Block::next().ip(1));
    let client = GrpcNodeClient {
        addresses: Arc::new(Loopback(nobody)),
        timeout: Duration::from_secs(2),
        identities: Default::default(),
    };
    let started = std::time::Instant::now();
    let err = client.status(&pod(0)).await.unwrap_err();
    assert!(matches!(err, NodeError::Connect { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// During an upgrade the operator still reaches old nodes, which serve Admin on the data
/// port, when their admin port refuses; with the admin port answering it is used alone.
#[tokio::test]
async fn old_nodes_are_reached_on_their_data_port() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let admin = FakeAdmin::default();
    let server = admin.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(AdminServer::new(server))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    let nobody = format!("{}:7072", loopback::Block::next().ip(1));
    let old = GrpcNodeClient {
        addresses: Arc::new(PreAdminPort(nobody.clone(), format!("127.0.0.1:{port}"))),
        timeout: Duration::from_secs(2),
        identities: Default::default(),
    };
    let s = old.status(&pod(0)).await.unwrap();
    assert_eq!(s.role, "leader");
    old.transfer_leader(&pod(0), 1).await.unwrap();
    assert_eq!(*admin.calls.lock().unwrap(), ["transfer_leader 1"]);
    // Neither answers: the admin port's error is reported.
    let nobody2 = format!("{}:7070", loopback::Block::next().ip(1));
    let none = GrpcNodeClient {
        addresses: Arc::new(PreAdminPort(nobody.clone(), nobody2)),
        timeout: Duration::from_secs(2),
        identities: Default::default(),
    };
    let err = none.status(&pod(0)).await.unwrap_err();
    assert!(
        matches!(&err, NodeError::Connect { endpoint, .. } if endpoint.contains(&nobody)),
        "{err}"
    );
}

/// With an identity for the index, the admin port is dialled over mTLS: a node with peer
/// TLS answers; without one (or with a certificate of another CA) it is not reached.
#[tokio::test]
async fn admin_calls_use_the_index_identity_over_mtls() {
    use kindex_node::tls::issue::{Ca, Validity, write_dir};
    use kindex_operator::peer_tls::{Identity, PeerIdentities};
    let name = kindex_crds::spec::peer_tls::server_name("idx", "ns");
    let week = || Validity::from_now(Duration::from_secs(7 * 86_400));
    let ca = Ca::generate("index CA", week()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_dir(
        dir.path(),
        &ca.issue(std::slice::from_ref(&name), week()).unwrap(),
        ca.cert_pem(),
    )
    .unwrap();
    let tls = Arc::new(kindex_node::tls::PeerTls::load(dir.path(), None).unwrap());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let router =
        tonic::transport::Server::builder().add_service(AdminServer::new(FakeAdmin::default()));
    tokio::spawn(kindex_node::tls::serve(
        router,
        listener,
        Some(tls.acceptor()),
        std::future::pending(),
    ));

    let client = |identities: PeerIdentities| GrpcNodeClient {
        addresses: Arc::new(Loopback(format!("127.0.0.1:{port}"))),
        timeout: Duration::from_secs(2),
        identities,
    };
    let identity = |ca: &Ca| {
        let me = ca.issue(&["kindex-operator".to_string()], week()).unwrap();
        let config = kindex_node::tls::client_config_from_pem(
            me.cert_pem.as_bytes(),
            me.key_pem.as_bytes(),
            ca.cert_pem().as_bytes(),
        )
        .unwrap();
        Identity::new(config, name.clone())
    };

    let ids = PeerIdentities::default();
    ids.set("ns", "idx", identity(&ca));
    let s = client(ids.clone()).status(&pod(0)).await.unwrap();
    assert_eq!(s.role, "leader");

    let plain = client(PeerIdentities::default()).status(&pod(0)).await;
    assert!(plain.is_err(), "a plain client reached the mTLS admin port");

    let foreign = Ca::generate("another CA", week()).unwrap();
    let other = PeerIdentities::default();
    other.set("ns", "idx", identity(&foreign));
    let err = client(other).status(&pod(0)).await.unwrap_err();
    assert!(matches!(err, NodeError::Connect { .. }), "{err}");
}
