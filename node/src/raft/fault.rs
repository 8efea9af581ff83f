//! Fault injection for the Raft transport: cut the links between this member and chosen peers.
//!
//! Always compiled, off unless a fault file is configured (`kindex-node --raft-fault-file`).
//! The file lists the node ids this member cannot talk to (separated by commas, spaces or
//! newlines; `#` starts a comment; a missing or empty file cuts nothing). It is re-read every
//! [`FaultSwitch::POLL`], so a test partitions and heals a running cluster by rewriting it.
//!
//! A cut link is cut in both directions at this member: outgoing RPCs to the peer fail as
//! `Unreachable` without being sent, and incoming RPCs from it (identified by the vote they
//! carry) are refused with `UNAVAILABLE` before openraft sees them. So one file on the isolated
//! member partitions it from the rest; the client gRPC port is not affected.

use std::collections::BTreeSet;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Weak;
use std::time::Duration;

use parking_lot::RwLock;

use super::NodeId;

/// The set of peers whose links are cut. Clones share the set.
#[derive(Debug, Clone, Default)]
pub struct FaultSwitch {
    cut: Arc<RwLock<BTreeSet<NodeId>>>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("raft fault file: {0:?} is not a node id")]
pub struct FaultFileError(String);

impl FaultSwitch {
    /// How often the fault file is re-read.
    pub const POLL: Duration = Duration::from_millis(50);

    /// Is the link to/from `peer` cut?
    pub fn is_cut(&self, peer: NodeId) -> bool {
        // Fast path for the normal case (no faults): a read lock on an empty set.
        let cut = self.cut.read();
        !cut.is_empty() && cut.contains(&peer)
    }

    pub fn set(&self, peers: BTreeSet<NodeId>) {
        let mut cut = self.cut.write();
        if *cut != peers {
            tracing::warn!(?peers, "raft fault injection: links to these peers are cut");
            *cut = peers;
        }
    }

    /// A switch driven by `path` (see the module doc), polled by a task on the current tokio
    /// runtime for as long as a clone of the switch lives.
    pub fn watch_file(path: PathBuf) -> Self {
        let switch = Self::default();
        switch.reload(&path);
        let weak: Weak<RwLock<BTreeSet<NodeId>>> = Arc::downgrade(&switch.cut);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Self::POLL).await;
                let Some(cut) = weak.upgrade() else { return };
                FaultSwitch { cut }.reload(&path);
            }
        });
        switch
    }

    fn reload(&self, path: &Path) {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "raft fault file unreadable; faults unchanged");
                return;
            }
        };
        match parse_fault_file(&text) {
            Ok(peers) => self.set(peers),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "faults unchanged")
            }
        }
    }
}

/// Node ids separated by commas or whitespace; `#` comments.
pub fn parse_fault_file(text: &str) -> Result<BTreeSet<NodeId>, FaultFileError> {
    text.lines()
        .map(|l| l.split_once('#').map_or(l, |(before, _)| before))
        .flat_map(|l| l.split(|c: char| c == ',' || c.is_whitespace()))
        .filter(|w| !w.is_empty())
        .map(|w| w.parse().map_err(|_| FaultFileError(w.to_string())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_file_syntax() {
        assert_eq!(parse_fault_file(""), Ok(BTreeSet::new()));
        assert_eq!(
            parse_fault_file("# isolate node 0\n1, 2\n 3 # and 3\n"),
            Ok(BTreeSet::from([1, 2, 3]))
        );
        assert_eq!(
            parse_fault_file("1 x"),
            Err(FaultFileError("x".to_string()))
        );
    }

    #[tokio::test]
    async fn switch_follows_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("faults");
        let sw = FaultSwitch::watch_file(path.clone());
        assert!(!sw.is_cut(1), "missing file: nothing cut");
        std::fs::write(&path, "1,2").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !sw.is_cut(1) {
            assert!(std::time::Instant::now() < deadline, "cut not picked up");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(sw.is_cut(2) && !sw.is_cut(0));
        std::fs::write(&path, "1, nonsense").unwrap();
        tokio::time::sleep(FaultSwitch::POLL * 4).await;
        assert!(sw.is_cut(1) && sw.is_cut(2), "bad file keeps the faults");
        std::fs::write(&path, "").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while sw.is_cut(1) {
            assert!(std::time::Instant::now() < deadline, "heal not picked up");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
