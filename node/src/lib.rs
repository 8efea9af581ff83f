//! kindex index node: the HNSW engine, snapshots, configuration and servers.

pub mod api;
pub mod auth;
pub mod channels;
pub mod config;
pub mod coordinator;
pub mod divergence;
pub mod engine;
pub mod fsutil;
pub mod memory;
pub mod metrics;
pub mod node;
pub mod policy;
pub mod raft;
pub mod server;
pub mod snapshot;
pub mod tls;
pub mod volume;
