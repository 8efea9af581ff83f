//! Network edges: gRPC (data + admin), HTTP (health, metrics, REST) and the admin port's
//! HTTP policy API.

pub mod admin_http;
pub mod grpc;
pub mod http;
pub mod openapi;
