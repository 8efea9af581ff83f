//! The gRPC contract shared by every kindex crate.

#[allow(clippy::all, missing_docs, rust_2018_idioms)]
pub mod v1 {
    tonic::include_proto!("kindex.v1");
}

pub use v1::*;
