//! The node's log output: text or JSON lines, and a filter that follows the runtime
//! config's `logLevel` without a restart (a tracing-subscriber reload layer).
//!
//! One rule for every filter (`RUST_LOG` at start, `logLevel` at start and on change):
//! openraft logs at warn unless the filter names openraft, because its INFO lines dump
//! whole Raft state structs and drown the node's own lifecycle lines.

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

pub use kindex_common::LogFormat;

use super::RuntimeConfig;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log filter {filter:?}: {reason}")]
    BadFilter { filter: String, reason: String },
    #[error("installing the log subscriber: {0}")]
    Init(String),
    #[error("changing the log filter: {0}")]
    Reload(#[from] reload::Error),
}

static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// `level` plus `openraft=warn` unless it says something about openraft itself.
pub fn directives(level: &str) -> String {
    let level = level.trim();
    if level.contains("openraft") {
        level.to_owned()
    } else if level.is_empty() {
        "openraft=warn".to_owned()
    } else {
        format!("{level},openraft=warn")
    }
}

fn filter(level: &str) -> Result<EnvFilter, LogError> {
    let d = directives(level);
    EnvFilter::try_new(&d).map_err(|e| LogError::BadFilter {
        filter: level.to_owned(),
        reason: e.to_string(),
    })
}

/// Installs the process-wide subscriber. `RUST_LOG`, when set, wins over `log_level`
/// at start; a later change of `logLevel` replaces either.
pub fn init(format: LogFormat, log_level: &str) -> Result<(), LogError> {
    let start = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| log_level.to_owned());
    let (layer, handle) = reload::Layer::new(filter(&start)?);
    // Colours only on a terminal: escape codes make files and `kubectl logs` hard to read.
    let ansi = std::io::stdout().is_terminal();
    let (text, json) = match format {
        LogFormat::Text => (Some(tracing_subscriber::fmt::layer().with_ansi(ansi)), None),
        LogFormat::Json => (None, Some(tracing_subscriber::fmt::layer().json())),
    };
    tracing_subscriber::registry()
        .with(layer)
        .with(text)
        .with(json)
        .try_init()
        .map_err(|e| LogError::Init(e.to_string()))?;
    // Only this function sets it, and `try_init` above fails on a second call.
    let _ = FILTER.set(handle);
    Ok(())
}

/// Replaces the filter; a no-op when [`init`] was not called (in-process tests).
pub fn set_level(level: &str) -> Result<(), LogError> {
    let new = filter(level)?;
    if let Some(h) = FILTER.get() {
        h.reload(new)?;
    }
    Ok(())
}

/// Applies a reloaded runtime config's `logLevel` if it changed. A filter that does not
/// parse is reported and the previous one kept, like any rejected runtime change.
pub fn apply_runtime(old: &RuntimeConfig, new: &RuntimeConfig) {
    if old.log_level == new.log_level {
        return;
    }
    match set_level(&new.log_level) {
        Ok(()) => tracing::info!(log_level = %new.log_level, "log filter changed"),
        Err(e) => tracing::error!(error = %e, "log filter rejected; keeping the previous one"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openraft_is_quiet_unless_named() {
        assert_eq!(directives("info"), "info,openraft=warn");
        assert_eq!(directives("debug"), "debug,openraft=warn");
        assert_eq!(directives("info,openraft=debug"), "info,openraft=debug");
        assert_eq!(directives(""), "openraft=warn");
        assert!(filter("debug").is_ok());
        assert!(matches!(
            filter("info,[[[").unwrap_err(),
            LogError::BadFilter { .. }
        ));
    }
}
