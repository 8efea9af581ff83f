//! Structural (persisted, hashed, immutable) vs runtime (reloadable) config.

pub mod runtime;
pub mod structural;

pub use runtime::RuntimeConfig;
pub use structural::{StructuralConfig, StructuralError};
