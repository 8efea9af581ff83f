//! Structural (persisted, hashed, immutable) vs runtime (reloadable) config. Both are
//! defined in kindex-common, shared with the operator; this module persists the
//! structural one and applies the runtime one.

pub mod args;
pub mod logging;
pub mod structural;

pub use kindex_common::runtime::{self, RuntimeConfig, RuntimeConfigError};
pub use structural::{StructuralConfig, StructuralError};
