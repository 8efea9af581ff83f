//! Fault injection for tests: cut Raft links, delay this member's own log flushes or applies,
//! make it apply a different command at one index.
//!
//! Always compiled, off unless a fault file is configured (`kindex-node --raft-fault-file`).
//! The file holds words separated by commas, spaces or newlines (`#` starts a comment; a missing
//! or empty file means no faults). It is re-read every [`FaultSwitch::POLL`], so a test changes
//! the faults of a running member by rewriting it.
//!
//! - `<node id>`: the Raft links to/from that peer are cut, both directions, at this member:
//!   outgoing RPCs to the peer fail as `Unreachable` without being sent, and incoming RPCs from
//!   it (identified by the vote they carry) are refused with `UNAVAILABLE` before openraft sees
//!   them. So one file on the isolated member partitions it; the client port is not affected.
//! - `flush-delay-ms=<n>`: this member's log store holds appended entries in memory for `n` ms
//!   before handing them to the WAL's flush thread. openraft replicates entries before they are
//!   flushed locally, so a leader killed in that window restarts with a shorter log than its
//!   followers: the window that lost acknowledged writes with leader restore (issue 12).
//! - `apply-delay-ms=<n>`: this member's state machine waits `n` ms before applying each batch
//!   of committed entries: a replica that knows its leader but lags in apply (a new learner's
//!   window before its first entry is applied, for the divergence guard's tests).
//! - `clock-skew-ms=<n>` (may be negative): this member's wall clock, as the node reads it for
//!   stamps (leader), retention cutoffs (sweep, reads), is moved by `n` ms: leaders with
//!   different clocks, and data that looks old without waiting for it to age.
//! - `diverge-at=<index>`: when this member applies the entry at that log index, it applies a
//!   different command (the first point's vector negated, or the first id of a delete
//!   dropped): a replica that silently disagrees, for the divergence guard's tests.

use std::collections::BTreeSet;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Weak;
use std::time::Duration;

use parking_lot::RwLock;

use super::NodeId;

/// The faults in force.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// Peers whose links are cut.
    pub cut: BTreeSet<NodeId>,
    /// Hold appended log entries this long before they are flushed.
    pub flush_delay: Option<Duration>,
    /// Wait this long before applying each batch of committed entries.
    pub apply_delay: Option<Duration>,
    /// Apply a different command at this log index.
    pub diverge_at: Option<u64>,
    /// Move this member's wall clock by this many ms.
    pub clock_skew_ms: Option<i64>,
}

impl Faults {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// The faults in force, shared by the transport, the log store and the state machine.
/// Clones share the same faults.
#[derive(Debug, Clone, Default)]
pub struct FaultSwitch {
    faults: Arc<RwLock<Faults>>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("raft fault file: {0:?} is neither a node id nor a known `name=value` fault")]
pub struct FaultFileError(String);

impl FaultSwitch {
    /// How often the fault file is re-read.
    pub const POLL: Duration = Duration::from_millis(50);

    /// Is the link to/from `peer` cut?
    pub fn is_cut(&self, peer: NodeId) -> bool {
        // Fast path for the normal case (no faults): a read lock on an empty set.
        self.faults.read().cut.contains(&peer)
    }

    /// How long this member holds appended entries before flushing them (None: not at all).
    pub fn flush_delay(&self) -> Option<Duration> {
        self.faults.read().flush_delay
    }

    /// How long this member waits before applying a batch (None: not at all).
    pub fn apply_delay(&self) -> Option<Duration> {
        self.faults.read().apply_delay
    }

    /// Whether the entry at `index` is to be applied differently on this member.
    pub fn diverges_at(&self, index: u64) -> bool {
        self.faults.read().diverge_at == Some(index)
    }

    /// How far this member's wall clock is moved (0: not at all).
    pub fn clock_skew_ms(&self) -> i64 {
        self.faults.read().clock_skew_ms.unwrap_or(0)
    }

    pub fn set(&self, faults: Faults) {
        let mut cur = self.faults.write();
        if *cur != faults {
            if faults.is_empty() {
                tracing::warn!("raft fault injection: cleared");
            } else {
                tracing::warn!(?faults, "raft fault injection in force");
            }
            *cur = faults;
        }
    }

    /// A switch driven by `path` (see the module doc), polled by a task on the current tokio
    /// runtime for as long as a clone of the switch lives.
    pub fn watch_file(path: PathBuf) -> Self {
        let switch = Self::default();
        switch.reload(&path);
        let weak: Weak<RwLock<Faults>> = Arc::downgrade(&switch.faults);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Self::POLL).await;
                let Some(faults) = weak.upgrade() else { return };
                FaultSwitch { faults }.reload(&path);
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
            Ok(faults) => self.set(faults),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "faults unchanged")
            }
        }
    }
}

/// The command a member with `diverge-at` applies instead of `cmd` (see the module doc).
pub fn diverged(cmd: &super::Command) -> super::Command {
    let mut cmd = cmd.clone();
    match &mut cmd {
        super::Command::Upsert { points } | super::Command::StampedUpsert { points, .. } => {
            if let Some(p) = points.first_mut() {
                p.vector.iter_mut().for_each(|x| *x = -*x - 1.0);
            }
        }
        super::Command::Delete { ids } => {
            if !ids.is_empty() {
                ids.remove(0);
            }
        }
        super::Command::Policy { json } => json.push(' '),
    }
    cmd
}

/// See the module doc for the syntax.
pub fn parse_fault_file(text: &str) -> Result<Faults, FaultFileError> {
    let mut faults = Faults::default();
    let words = text
        .lines()
        .map(|l| l.split_once('#').map_or(l, |(before, _)| before))
        .flat_map(|l| l.split(|c: char| c == ',' || c.is_whitespace()))
        .filter(|w| !w.is_empty());
    for w in words {
        let bad = || FaultFileError(w.to_string());
        match w.split_once('=') {
            None => {
                faults.cut.insert(w.parse().map_err(|_| bad())?);
            }
            Some(("flush-delay-ms", v)) => {
                let ms: u64 = v.parse().map_err(|_| bad())?;
                faults.flush_delay = (ms > 0).then(|| Duration::from_millis(ms));
            }
            Some(("apply-delay-ms", v)) => {
                let ms: u64 = v.parse().map_err(|_| bad())?;
                faults.apply_delay = (ms > 0).then(|| Duration::from_millis(ms));
            }
            Some(("diverge-at", v)) => faults.diverge_at = Some(v.parse().map_err(|_| bad())?),
            Some(("clock-skew-ms", v)) => {
                let ms: i64 = v.parse().map_err(|_| bad())?;
                faults.clock_skew_ms = (ms != 0).then_some(ms);
            }
            Some(_) => return Err(bad()),
        }
    }
    Ok(faults)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_file_syntax() {
        assert_eq!(parse_fault_file(""), Ok(Faults::default()));
        assert_eq!(
            parse_fault_file("# isolate node 0\n1, 2\n 3 # and 3\n").map(|f| f.cut),
            Ok(BTreeSet::from([1, 2, 3]))
        );
        assert_eq!(
            parse_fault_file(
                "1 flush-delay-ms=250 apply-delay-ms=40 diverge-at=17 clock-skew-ms=-3600000"
            ),
            Ok(Faults {
                cut: BTreeSet::from([1]),
                flush_delay: Some(Duration::from_millis(250)),
                apply_delay: Some(Duration::from_millis(40)),
                diverge_at: Some(17),
                clock_skew_ms: Some(-3_600_000),
            })
        );
        assert_eq!(
            parse_fault_file("flush-delay-ms=0").map(|f| f.flush_delay),
            Ok(None)
        );
        for bad in [
            "1 x",
            "flush-delay-ms=soon",
            "apply-delay-ms=-1",
            "diverge-at=",
            "slow=1",
        ] {
            let word = bad.split(' ').next_back().unwrap_or_default();
            assert_eq!(parse_fault_file(bad), Err(FaultFileError(word.to_string())));
        }
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
