//! The client Service (all pods of the index, ready ones only) and one headless
//! Service per shard (stable pod DNS names for Raft and the operator, including pods
//! that are not ready yet: a Raft group must form before its pods report ready).
//!
//! The client Service exposes the data plane only (gRPC and HTTP): never the Raft port
//! nor the Admin port, which change a shard's membership. The headless Service names
//! them for the operator and the other nodes.

use super::{labels, owned_meta};
use crate::validate::ValidIndex;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

pub const GRPC_PORT: i32 = 7070;
pub const RAFT_PORT: i32 = 7071;
/// Admin gRPC (membership, snapshots, status): the operator and the other nodes only.
pub const ADMIN_PORT: i32 = 7072;
pub const HTTP_PORT: i32 = 7080;

fn port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.to_owned()),
        port,
        target_port: Some(IntOrString::String(name.to_owned())),
        protocol: Some("TCP".to_owned()),
        ..ServicePort::default()
    }
}

pub fn build_client_service(vi: &ValidIndex) -> Service {
    Service {
        metadata: owned_meta(
            vi,
            labels::client_service_name(&vi.name),
            labels::index_labels(&vi.name),
        ),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            selector: Some(labels::index_selector(&vi.name)),
            ports: Some(vec![port("grpc", GRPC_PORT), port("http", HTTP_PORT)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

pub fn build_headless_service(vi: &ValidIndex, shard: u32) -> Service {
    Service {
        metadata: owned_meta(
            vi,
            labels::headless_name(&vi.name, shard),
            labels::shard_labels(&vi.name, shard),
        ),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_owned()),
            publish_not_ready_addresses: Some(true),
            selector: Some(labels::shard_selector(&vi.name, shard)),
            ports: Some(vec![
                port("grpc", GRPC_PORT),
                port("raft", RAFT_PORT),
                port("admin", ADMIN_PORT),
                port("http", HTTP_PORT),
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}
