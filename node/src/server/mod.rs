//! Network edges: gRPC (data + admin) and HTTP (health, metrics, REST).

pub mod convert;
pub mod grpc;
pub mod http;
pub mod local;
pub mod openapi;
