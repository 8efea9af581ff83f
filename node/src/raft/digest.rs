//! The apply digest: a running hash of every log entry a replica applied, so replicas that
//! applied different things at the same log index find out (the divergence guard).
//!
//! `d(i) = xxh3(d(i-1) ‖ log id i ‖ payload i)`, computed in apply for every entry (blank and
//! membership entries too), so two replicas at the same applied index have equal digests iff they
//! applied the same entries. Snapshots carry the digest at their log id, so the chain goes on
//! across restarts and snapshot installs. A snapshot written before digests existed carries
//! none: the chain then restarts at that snapshot's index ([`ApplyDigest::base`]) and is only
//! compared with chains that restarted at the same place.
//!
//! Peers: etcd's corruption check compares per-revision hashes across members.

use std::collections::VecDeque;

use serde::Deserialize;
use serde::Serialize;
use xxhash_rust::xxh3::Xxh3;

use super::Command;
use super::Entry;
use super::EntryPayload;
use super::LogId;
use super::wire;

/// The digest of everything applied up to `index`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyDigest {
    /// Last applied log index (0: nothing applied).
    pub index: u64,
    pub value: u64,
    /// Where the chain starts: 0 = at the beginning of the log; otherwise the index of a snapshot
    /// that carried no digest. Only digests with the same base are comparable.
    #[serde(default)]
    pub base: u64,
}

impl ApplyDigest {
    /// The chain of a replica that starts from a snapshot without a digest at `index`.
    pub fn restarted_at(index: u64) -> Self {
        Self {
            index,
            value: 0,
            base: index,
        }
    }

    /// Nothing applied on top of where the chain starts: a new, empty replica (the log starts at
    /// index 0, so an index alone cannot say "nothing applied"), or one that just loaded a
    /// snapshot without a digest. There is nothing to compare yet.
    pub fn is_chain_start(&self) -> bool {
        self.value == 0 && self.index == self.base
    }

    /// The digest after applying `entry` (as `applied`: the command this replica really applied,
    /// which fault injection may make differ from the entry's).
    pub fn next(&self, log_id: &LogId, payload: &EntryPayload, applied: Option<&Command>) -> Self {
        let mut h = Xxh3::new();
        h.update(&self.value.to_le_bytes());
        h.update(&log_id.index.to_le_bytes());
        h.update(&log_id.leader_id.term.to_le_bytes());
        h.update(&log_id.leader_id.node_id.to_le_bytes());
        match payload {
            openraft::EntryPayload::Blank => h.update(b"b"),
            openraft::EntryPayload::Normal(cmd) => {
                h.update(b"n");
                hash_command(&mut h, applied.unwrap_or(cmd));
            }
            openraft::EntryPayload::Membership(m) => {
                h.update(b"m");
                // postcard of BTreeMaps/BTreeSets: deterministic.
                match wire::encode(m) {
                    Ok(bytes) => h.update(&bytes),
                    Err(_) => h.update(b"?"),
                }
            }
        }
        Self {
            index: log_id.index,
            value: h.digest(),
            base: self.base,
        }
    }

    /// Fold `entry` into the digest.
    pub fn apply(&self, entry: &Entry, applied: Option<&Command>) -> Self {
        self.next(&entry.log_id, &entry.payload, applied)
    }
}

fn hash_command(h: &mut Xxh3, cmd: &Command) {
    // Field by field, lengths included, so no two commands hash the same input bytes.
    match cmd {
        Command::Upsert { points } => {
            h.update(b"u");
            hash_points(h, points);
        }
        Command::StampedUpsert { stamp_ms, points } => {
            h.update(b"s");
            h.update(&stamp_ms.to_le_bytes());
            hash_points(h, points);
        }
        Command::Delete { ids } => {
            h.update(b"d");
            h.update(&(ids.len() as u64).to_le_bytes());
            for id in ids {
                h.update(&(id.len() as u64).to_le_bytes());
                h.update(id.as_bytes());
            }
        }
        Command::Policy { json } => {
            h.update(b"p");
            h.update(&(json.len() as u64).to_le_bytes());
            h.update(json.as_bytes());
        }
    }
}

fn hash_points(h: &mut Xxh3, points: &[super::PointRecord]) {
    h.update(&(points.len() as u64).to_le_bytes());
    for p in points {
        h.update(&(p.id.len() as u64).to_le_bytes());
        h.update(p.id.as_bytes());
        h.update(&(p.vector.len() as u64).to_le_bytes());
        for x in &p.vector {
            h.update(&x.to_bits().to_le_bytes());
        }
        match &p.payload_json {
            None => h.update(b"-"),
            Some(j) => {
                h.update(&(j.len() as u64).to_le_bytes());
                h.update(j.as_bytes());
            }
        }
    }
}

/// The digests of the last [`DigestLog::CAPACITY`] applied indexes, for comparing with the
/// leader's at any recent index.
#[derive(Debug, Clone)]
pub struct DigestLog {
    current: ApplyDigest,
    /// (index, value), increasing index.
    recent: VecDeque<(u64, u64)>,
}

impl DigestLog {
    /// Enough for a follower a few seconds behind a busy leader (16 bytes each: 1 MiB).
    pub const CAPACITY: usize = 65_536;

    pub fn new(current: ApplyDigest) -> Self {
        Self {
            current,
            recent: VecDeque::new(),
        }
    }

    pub fn current(&self) -> ApplyDigest {
        self.current
    }

    /// Record the digest after one more applied entry.
    pub fn push(&mut self, d: ApplyDigest) {
        if self.recent.len() == Self::CAPACITY {
            self.recent.pop_front();
        }
        self.recent.push_back((d.index, d.value));
        self.current = d;
    }

    /// Replace the whole history (a snapshot was loaded or installed).
    pub fn reset(&mut self, current: ApplyDigest) {
        self.recent.clear();
        self.current = current;
    }

    /// The digest at `index`, if it is the current one or still remembered.
    pub fn at(&self, index: u64) -> Option<ApplyDigest> {
        if index == self.current.index {
            return Some(self.current);
        }
        let first = self.recent.front()?.0;
        let pos = usize::try_from(index.checked_sub(first)?).ok()?;
        let &(i, value) = self.recent.get(pos)?;
        (i == index).then_some(ApplyDigest {
            index,
            value,
            base: self.current.base,
        })
    }
}

/// What comparing this replica's digest with the leader's at the same index found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    Equal,
    /// Same index and base, different value: the replicas applied different entries.
    Diverged {
        ours: u64,
        leader: u64,
    },
    /// Nothing to compare (different bases, or the index is not remembered).
    Incomparable,
}

pub fn compare(ours: Option<ApplyDigest>, leader: Option<ApplyDigest>) -> Comparison {
    match (ours, leader) {
        // A replica that has applied nothing reports index 0 with the empty chain, while the
        // leader's digest at index 0 covers the initial membership entry: not a divergence.
        (Some(a), Some(b)) if a.is_chain_start() || b.is_chain_start() => Comparison::Incomparable,
        (Some(a), Some(b)) if a.index == b.index && a.base == b.base => {
            if a.value == b.value {
                Comparison::Equal
            } else {
                Comparison::Diverged {
                    ours: a.value,
                    leader: b.value,
                }
            }
        }
        _ => Comparison::Incomparable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::PointRecord;

    fn entry(term: u64, index: u64, cmd: Command) -> Entry {
        Entry {
            log_id: LogId::new(
                openraft::impls::leader_id_adv::LeaderId { term, node_id: 0 },
                index,
            ),
            payload: openraft::EntryPayload::Normal(cmd),
        }
    }

    fn upsert(id: &str, x: f32) -> Command {
        Command::Upsert {
            points: vec![PointRecord {
                id: id.into(),
                vector: vec![x, 1.0],
                payload_json: None,
            }],
        }
    }

    fn chain(entries: &[Entry]) -> DigestLog {
        let mut log = DigestLog::new(ApplyDigest::default());
        for e in entries {
            let d = log.current().apply(e, None);
            log.push(d);
        }
        log
    }

    #[test]
    fn same_entries_same_digest_different_command_differs_from_there_on() {
        let a = [entry(1, 1, upsert("a", 1.0)), entry(1, 2, upsert("b", 2.0))];
        let b = [entry(1, 1, upsert("a", 1.0)), entry(1, 2, upsert("b", 2.5))];
        let (la, lb) = (chain(&a), chain(&b));
        assert_eq!(compare(la.at(1), lb.at(1)), Comparison::Equal);
        assert!(matches!(
            compare(la.at(2), lb.at(2)),
            Comparison::Diverged { .. }
        ));
        // The id/vector boundary is hashed with lengths: moving bytes between fields differs.
        let c = [entry(1, 1, upsert("a", 1.0)), entry(1, 2, upsert("b", 2.0))];
        assert_eq!(compare(la.at(2), chain(&c).at(2)), Comparison::Equal);
    }

    #[test]
    fn the_applied_command_counts_not_the_logged_one() {
        let e = entry(1, 1, upsert("a", 1.0));
        let base = ApplyDigest::default();
        assert_ne!(
            base.apply(&e, None),
            base.apply(&e, Some(&upsert("a", -1.0)))
        );
        assert_eq!(
            base.apply(&e, None),
            base.apply(&e, Some(&upsert("a", 1.0)))
        );
    }

    #[test]
    fn log_remembers_a_bounded_window() {
        let entries: Vec<Entry> = (1..=(DigestLog::CAPACITY as u64 + 10))
            .map(|i| entry(1, i, upsert("x", i as f32)))
            .collect();
        let log = chain(&entries);
        assert!(log.at(1).is_none(), "fell out of the window");
        assert!(log.at(11).is_some());
        assert_eq!(log.at(entries.len() as u64), Some(log.current()));
        assert!(log.at(entries.len() as u64 + 1).is_none());
    }

    #[test]
    fn a_replica_that_applied_nothing_is_not_compared_with_index_0() {
        // openraft's first entry (the initial membership) is at index 0; a new learner that has
        // not applied it yet also says index 0. Seen in the full-stack tier: every new replica
        // that asked the leader in that window was marked diverged for good, never Ready.
        let first = entry(1, 0, upsert("a", 1.0));
        let leader = chain(&[first]);
        let fresh = DigestLog::new(ApplyDigest::default());
        assert_eq!(leader.current().index, 0);
        assert!(fresh.current().is_chain_start());
        assert!(!leader.current().is_chain_start());
        assert_eq!(
            compare(Some(fresh.current()), leader.at(0)),
            Comparison::Incomparable
        );
        assert_eq!(
            compare(leader.at(0), Some(fresh.current())),
            Comparison::Incomparable
        );
        // A snapshot without a digest restarts the chain there: nothing to compare until the
        // next entry is applied, and then only with chains of the same base.
        let restarted = ApplyDigest::restarted_at(7);
        assert!(restarted.is_chain_start());
        assert_eq!(
            compare(Some(restarted), Some(restarted)),
            Comparison::Incomparable
        );
        // Once the entry at 0 is applied, index 0 is compared as any other.
        let other = chain(&[entry(1, 0, upsert("a", 2.0))]);
        assert!(matches!(
            compare(other.at(0), leader.at(0)),
            Comparison::Diverged { .. }
        ));
    }

    #[test]
    fn different_bases_are_not_compared() {
        let a = ApplyDigest {
            index: 5,
            value: 1,
            base: 0,
        };
        let b = ApplyDigest { base: 3, ..a };
        assert_eq!(compare(Some(a), Some(b)), Comparison::Incomparable);
        assert_eq!(compare(Some(a), None), Comparison::Incomparable);
        assert_eq!(
            compare(Some(a), Some(ApplyDigest { value: 2, ..a })),
            Comparison::Diverged { ours: 1, leader: 2 }
        );
    }
}
