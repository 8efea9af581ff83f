//! The data volume's free space, and the low-water mark below which a node takes no more data
//! (etcd's NOSPACE alarm, per replica).
//!
//! Running out of space in the middle of a WAL append or a snapshot fsync is the worst time to
//! find out: the Raft log store then fails, openraft stops the member, and the process restarts
//! into the same full volume (a crash loop). Instead, every write path that adds bytes to the
//! volume asks [`VolumeGuard::full`] first, which is true while the free space is below a
//! reserve:
//!
//! - a leader refuses client writes with `RESOURCE_EXHAUSTED` ("volume full on <pod>: ...")
//!   before proposing them (nothing is appended, so nothing half-written is acknowledged);
//! - a follower refuses `AppendEntries` that carry entries and `InstallSnapshot`, so it never
//!   acknowledges what it could not store; heartbeats still pass (no elections), and the other
//!   voters keep the shard's quorum;
//! - snapshots are not triggered (a snapshot needs room for a second copy of the state).
//!
//! Reads never write and keep working. Freeing space (or growing the volume) clears the state
//! at the next sample, at most [`SAMPLE_EVERY`] later: no restart, no Raft step. The reserve is
//! what the writes of one sample period, a vote and the log's own records may still need.

use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;
use std::time::Instant;

use parking_lot::Mutex;

/// How old a sample may be before a check takes a new one (`statvfs`, a few µs).
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// Smallest automatic reserve.
pub const AUTO_RESERVE_MIN: u64 = 4 << 20;
/// Largest automatic reserve.
pub const AUTO_RESERVE_MAX: u64 = 1 << 30;

/// How much free space a node keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserve {
    /// 5% of the volume, between [`AUTO_RESERVE_MIN`] and [`AUTO_RESERVE_MAX`].
    Auto,
    /// [`Reserve::Auto`] plus this many bytes: room for one more chunk of vectors with
    /// `--vectors-on-disk`, which takes its blocks when a write crosses into it.
    AutoPlus(u64),
    Bytes(u64),
}

impl Reserve {
    /// `--volume-reserve-bytes`: 0 means [`Reserve::Auto`].
    pub fn from_flag(bytes: u64) -> Reserve {
        match bytes {
            0 => Reserve::Auto,
            b => Reserve::Bytes(b),
        }
    }

    /// The automatic reserve grown by `extra` bytes; an explicit size stays as it was set.
    pub fn plus(self, extra: u64) -> Reserve {
        match self {
            Reserve::Auto | Reserve::AutoPlus(_) if extra == 0 => self,
            Reserve::Auto => Reserve::AutoPlus(extra),
            Reserve::AutoPlus(b) => Reserve::AutoPlus(b.saturating_add(extra)),
            Reserve::Bytes(_) => self,
        }
    }

    pub fn bytes(self, total: u64) -> u64 {
        match self {
            Reserve::Auto => (total / 20).clamp(AUTO_RESERVE_MIN, AUTO_RESERVE_MAX),
            Reserve::AutoPlus(extra) => Reserve::Auto.bytes(total).saturating_add(extra),
            Reserve::Bytes(b) => b,
        }
    }
}

/// One look at the volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Bytes an unprivileged writer may still use (`f_bavail`).
    pub free: u64,
    pub total: u64,
    pub reserve: u64,
}

impl Sample {
    pub fn full(&self) -> bool {
        self.free < self.reserve
    }
}

/// The volume is below its reserve: what every refusal says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "volume full on {who}: {} free of {}, below the reserve of {} (--volume-reserve-bytes); \
     writes are refused until space is freed or the volume is expanded; reads keep working",
    mib(.sample.free), mib(.sample.total), mib(.sample.reserve)
)]
pub struct VolumeFull {
    /// The pod (or node) whose volume it is.
    pub who: String,
    pub sample: Sample,
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
}

/// The data dir's volume, sampled at most every [`SAMPLE_EVERY`].
#[derive(Debug)]
pub struct VolumeGuard {
    dir: PathBuf,
    who: String,
    reserve: Reserve,
    last: Mutex<Option<(Instant, Sample)>>,
}

impl VolumeGuard {
    /// `who` names this replica in messages (its pod name).
    pub fn new(dir: impl Into<PathBuf>, who: impl Into<String>, reserve: Reserve) -> Self {
        Self {
            dir: dir.into(),
            who: who.into(),
            reserve,
            last: Mutex::new(None),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A fresh sample (at most [`SAMPLE_EVERY`] old). None if the volume cannot be asked (the
    /// dir vanished): the write path then finds out by itself.
    pub fn sample(&self) -> Option<Sample> {
        let mut last = self.last.lock();
        if let Some((at, s)) = *last
            && at.elapsed() < SAMPLE_EVERY
        {
            return Some(s);
        }
        let s = measure(&self.dir, self.reserve)?;
        let was_full = last.is_some_and(|(_, p)| p.full());
        if s.full() && !was_full {
            tracing::warn!(
                free = s.free,
                total = s.total,
                reserve = s.reserve,
                "data volume below its reserve: refusing writes, appends and snapshots until space is freed"
            );
        } else if was_full && !s.full() {
            tracing::info!(
                free = s.free,
                total = s.total,
                reserve = s.reserve,
                "data volume has room again: writes accepted"
            );
        }
        *last = Some((Instant::now(), s));
        Some(s)
    }

    /// Err while the volume is below its reserve.
    pub fn check(&self) -> Result<(), VolumeFull> {
        match self.sample() {
            Some(sample) if sample.full() => Err(VolumeFull {
                who: self.who.clone(),
                sample,
            }),
            _ => Ok(()),
        }
    }

    pub fn is_full(&self) -> bool {
        self.check().is_err()
    }
}

fn measure(dir: &Path, reserve: Reserve) -> Option<Sample> {
    let free = fs2::available_space(dir).ok()?;
    let total = fs2::total_space(dir).ok()?;
    Some(Sample {
        free,
        total,
        reserve: reserve.bytes(total),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_reserve_is_five_percent_within_bounds() {
        assert_eq!(Reserve::Auto.bytes(64 << 20), AUTO_RESERVE_MIN);
        assert_eq!(Reserve::Auto.bytes(10 << 30), 512 << 20);
        assert_eq!(Reserve::Auto.bytes(1 << 40), AUTO_RESERVE_MAX);
        assert_eq!(Reserve::from_flag(0), Reserve::Auto);
        assert_eq!(Reserve::from_flag(7).bytes(1 << 40), 7);
        // Room for a vector chunk on top of the automatic reserve, never of an explicit one.
        assert_eq!(Reserve::Auto.plus(0), Reserve::Auto);
        assert_eq!(Reserve::Auto.plus(8 << 20).bytes(10 << 30), (512 + 8) << 20);
        assert_eq!(
            Reserve::Auto.plus(8 << 20).bytes(64 << 20),
            AUTO_RESERVE_MIN + (8 << 20)
        );
        assert_eq!(Reserve::Bytes(7).plus(8 << 20), Reserve::Bytes(7));
    }

    #[test]
    fn full_below_the_reserve_with_a_message_naming_the_pod() {
        let d = tempfile::tempdir().unwrap();
        let free = fs2::available_space(d.path()).unwrap();
        let ok = VolumeGuard::new(d.path(), "demo-s0-0", Reserve::Bytes(1));
        assert!(ok.check().is_ok());
        // A reserve above the free space: full, and the refusal says where and why.
        let full = VolumeGuard::new(
            d.path(),
            "demo-s0-0",
            Reserve::Bytes(free.saturating_mul(4)),
        );
        let e = full.check().unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("volume full on demo-s0-0: "), "{msg}");
        assert!(msg.contains("below the reserve"), "{msg}");
        assert!(full.is_full());
    }

    #[test]
    fn a_missing_dir_is_not_reported_full() {
        let g = VolumeGuard::new(
            "/nonexistent/kindex-volume-test",
            "x",
            Reserve::Bytes(1 << 60),
        );
        assert!(g.sample().is_none());
        assert!(g.check().is_ok());
    }
}
