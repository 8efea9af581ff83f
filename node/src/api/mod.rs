//! The layer below both `server` (gRPC, HTTP) and `coordinator`: what turns a request into
//! something the node can execute, and a node error back into an answer.
//!
//! - [`convert`]: protobuf ↔ engine and log types;
//! - [`validate`]: request validation, once per request, against the limits table
//!   (`engine::limits`); a validated upsert carries its parsed payloads to the Raft proposal;
//! - [`status`]: `NodeError` → `tonic::Status`, and `Info`.
//!
//! `server` depends on `coordinator`, both depend on `api`; `api` depends on neither.

pub mod convert;
pub mod status;
pub mod validate;
