//! Network edges: gRPC (data + admin) and HTTP (health, metrics, REST).

pub mod grpc;
pub mod http;
pub mod openapi;
