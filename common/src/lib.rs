//! What the kindex node and the operator must agree on, in one place and with no
//! Kubernetes dependency: the distance metric, the structural config (and the hash the
//! node persists next to its data), and the runtime config file the operator renders
//! and the node reloads, and how a pod's Raft node id is made.

pub mod log_format;
pub mod metric;
pub mod node_id;
pub mod runtime;
pub mod structural;

pub use log_format::LogFormat;
pub use metric::Metric;
pub use runtime::{RuntimeConfig, RuntimeConfigError};
pub use structural::{FieldDiff, InvalidStructural, Quantization, StructuralConfig, StructuralDoc};
