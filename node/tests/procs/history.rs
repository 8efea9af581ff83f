//! What clients did, and whether every replica agrees with it.
//!
//! The workload is a map of keys to versions: an upsert writes a version no other operation
//! writes (so a stored value names the one write it came from), a delete removes the key. Every
//! operation is recorded at invoke and at completion; only an acknowledged operation completes
//! (a failed or timed-out one may still have been applied, so it stays open forever).
//!
//! The check is linearizability of each key's final state, per replica: the value a replica
//! holds must come from a write that no acknowledged write on that key started after (a write
//! invoked after another completed is ordered after it). Anything else is
//! - `lost`: the key is absent although an acknowledged upsert must be visible;
//! - `resurrected`: a value is back that an acknowledged delete ordered after it removed;
//! - `stale`: a value an acknowledged later upsert replaced (or one nobody wrote).
//!
//! Replicas must also hold the same thing for every key.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use parking_lot::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    Upsert(u64),
    Delete,
}

#[derive(Debug, Clone)]
pub struct Op {
    pub key: String,
    pub write: Write,
    pub invoke: Duration,
    /// When it was acknowledged; None: not (yet) acknowledged.
    pub complete: Option<Duration>,
}

pub struct History {
    start: Instant,
    ops: Mutex<Vec<Op>>,
    versions: AtomicU64,
}

/// What one replica holds: key → version (None: absent).
pub type ReplicaState = BTreeMap<String, Option<u64>>;

impl History {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            ops: Mutex::new(Vec::new()),
            versions: AtomicU64::new(0),
        })
    }

    /// A version no other upsert uses (from 1; exact as an f32 up to 2^24).
    pub fn next_version(&self) -> u64 {
        self.versions.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Records the start of an operation; returns its id for [`Self::ack`].
    pub fn invoke(&self, key: &str, write: Write) -> usize {
        let mut ops = self.ops.lock();
        ops.push(Op {
            key: key.to_string(),
            write,
            invoke: self.start.elapsed(),
            complete: None,
        });
        ops.len() - 1
    }

    /// The operation was acknowledged.
    pub fn ack(&self, id: usize) {
        let now = self.start.elapsed();
        self.ops.lock()[id].complete = Some(now);
    }

    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().clone()
    }

    /// Every key an operation touched.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.ops.lock().iter().map(|o| o.key.clone()).collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// Checks what each replica holds (name, state of every key in [`Self::keys`]).
    pub fn check(&self, replicas: &[(String, ReplicaState)]) -> Report {
        let ops = self.ops();
        let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
        for o in &ops {
            by_key.entry(&o.key).or_default().push(o);
        }
        let mut report = Report {
            ops: ops.len(),
            acked: ops.iter().filter(|o| o.complete.is_some()).count(),
            keys: by_key.len(),
            replicas: replicas.len(),
            ..Report::default()
        };
        for (key, key_ops) in &by_key {
            let mut seen: Option<&Option<u64>> = None;
            for (name, state) in replicas {
                let got = state.get(*key).copied().flatten();
                if let Some(problem) = judge(key_ops, got) {
                    let line = format!("{name}: {key} = {got:?}");
                    match problem {
                        Problem::Lost => report.lost.push(line),
                        Problem::Resurrected => report.resurrected.push(line),
                        Problem::Stale => report.stale.push(line),
                    }
                }
                let held = state.get(*key).unwrap_or(&None);
                match seen {
                    None => seen = Some(held),
                    Some(s) if s != held => {
                        report
                            .replicas_differ
                            .push(format!("{key}: {name} holds {held:?}"));
                    }
                    Some(_) => {}
                }
            }
        }
        report
    }
}

enum Problem {
    Lost,
    Resurrected,
    Stale,
}

/// Whether a replica may hold `got` for a key with these operations (None: it may).
fn judge(ops: &[&Op], got: Option<u64>) -> Option<Problem> {
    // A write is a possible final value unless an acknowledged write started after it was
    // acknowledged; an unacknowledged write may have been applied at any time.
    let superseded = |o: &Op| {
        o.complete.is_some_and(|done| {
            ops.iter()
                .any(|later| later.complete.is_some() && later.invoke > done)
        })
    };
    let acked_any = ops.iter().any(|o| o.complete.is_some());
    let possible = |o: &&&Op| !superseded(o);
    let ok = match got {
        Some(v) => ops
            .iter()
            .filter(possible)
            .any(|o| o.write == Write::Upsert(v)),
        None => {
            !acked_any
                || ops
                    .iter()
                    .filter(possible)
                    .any(|o| o.write == Write::Delete)
        }
    };
    if ok {
        return None;
    }
    Some(match got {
        None => Problem::Lost,
        Some(v) => {
            // The last acknowledged write decides what was expected instead.
            let last = ops
                .iter()
                .filter(|o| o.complete.is_some())
                .max_by_key(|o| o.invoke)
                .map(|o| o.write);
            match (ops.iter().any(|o| o.write == Write::Upsert(v)), last) {
                (true, Some(Write::Delete)) => Problem::Resurrected,
                _ => Problem::Stale,
            }
        }
    })
}

/// The outcome of [`History::check`].
#[derive(Debug, Default)]
pub struct Report {
    pub ops: usize,
    pub acked: usize,
    pub keys: usize,
    pub replicas: usize,
    pub lost: Vec<String>,
    pub resurrected: Vec<String>,
    pub stale: Vec<String>,
    pub replicas_differ: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.lost.is_empty()
            && self.resurrected.is_empty()
            && self.stale.is_empty()
            && self.replicas_differ.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ops ({} acknowledged) on {} keys, {} replicas: {} lost, {} resurrected, {} stale, {} keys differ between replicas",
            self.ops,
            self.acked,
            self.keys,
            self.replicas,
            self.lost.len(),
            self.resurrected.len(),
            self.stale.len(),
            self.replicas_differ.len()
        )?;
        for (what, v) in [
            ("lost", &self.lost),
            ("resurrected", &self.resurrected),
            ("stale", &self.stale),
            ("differ", &self.replicas_differ),
        ] {
            for line in v.iter().take(10) {
                write!(f, "\n  {what}: {line}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(pairs: &[(&str, Option<u64>)]) -> ReplicaState {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    /// The checker itself can fail: each kind of anomaly on a hand-made history.
    #[test]
    fn the_checker_finds_each_anomaly() {
        let h = History::new();
        let a1 = h.invoke("a", Write::Upsert(1));
        h.ack(a1);
        std::thread::sleep(Duration::from_millis(2));
        let b1 = h.invoke("b", Write::Upsert(2));
        h.ack(b1);
        std::thread::sleep(Duration::from_millis(2));
        let b2 = h.invoke("b", Write::Delete);
        h.ack(b2);
        let c1 = h.invoke("c", Write::Upsert(3));
        h.ack(c1);
        std::thread::sleep(Duration::from_millis(2));
        let c2 = h.invoke("c", Write::Upsert(4));
        h.ack(c2);
        // An unacknowledged write may or may not be there.
        let _d = h.invoke("d", Write::Upsert(5));

        let good = state(&[("a", Some(1)), ("b", None), ("c", Some(4)), ("d", None)]);
        let also_good = state(&[("a", Some(1)), ("b", None), ("c", Some(4)), ("d", Some(5))]);
        let r = h.check(&[("n0".into(), good.clone())]);
        assert!(r.ok(), "{r}");
        assert!(h.check(&[("n0".into(), also_good.clone())]).ok());

        let bad = state(&[("a", None), ("b", Some(2)), ("c", Some(3)), ("d", None)]);
        let r = h.check(&[("n0".into(), good), ("n1".into(), bad)]);
        assert_eq!(
            (r.lost.len(), r.resurrected.len(), r.stale.len()),
            (1, 1, 1),
            "{r}"
        );
        assert_eq!(r.replicas_differ.len(), 3, "{r}");
        assert!(!r.ok());

        let r = h.check(&[
            ("n0".into(), also_good),
            ("n1".into(), state(&[("a", Some(1))])),
        ]);
        assert!(!r.replicas_differ.is_empty(), "{r}");
    }

    #[test]
    fn concurrent_writes_may_land_in_either_order() {
        let h = History::new();
        let x = h.invoke("k", Write::Upsert(1));
        let y = h.invoke("k", Write::Delete);
        h.ack(x);
        h.ack(y);
        assert!(h.check(&[("n".into(), state(&[("k", Some(1))]))]).ok());
        assert!(h.check(&[("n".into(), state(&[("k", None)]))]).ok());
    }
}
