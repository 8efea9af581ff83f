//! The snapshot directory of a data dir (`<data>/snapshots/`): the one on-disk layout, written
//! by the node and read by every tool.
//!
//! - `snap-<index:020>-<seq:020>/`: a complete snapshot (the engine's section files plus the
//!   Raft layer's `RAFT_META`). Built in `tmp-<seq>/`, every file fsynced, renamed, the parent
//!   fsynced: a crash never leaves a half snapshot under this name. `seq` is time based and
//!   increasing, so names sort oldest → newest.
//! - `tmp-*` (being built) and `incoming-*` (being received from a leader): removed on open.
//! - `corrupt-snap-*`: a snapshot that failed to load, set aside (kept for inspection, never
//!   loaded again).
//!
//! Choosing what to load is [`SnapshotStore::load_newest`]: the newest snapshot that loads; each
//! newer one that does not is set aside and reported, unless the failure is a refusal (data of a
//! newer format or other structural parameters), which stops instead.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

const SNAP_PREFIX: &str = "snap-";
const TMP_PREFIX: &str = "tmp-";
const INCOMING_PREFIX: &str = "incoming-";
const CORRUPT_PREFIX: &str = "corrupt-";

/// Unique, increasing suffix for directory names (time based, bumped on collision).
fn next_seq() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut prev = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(prev + 1);
        match LAST.compare_exchange(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(p) => prev = p,
        }
    }
}

pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// fsync every file and directory below `dir` (and `dir`).
pub fn fsync_tree(dir: &Path) -> io::Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            fsync_tree(&e.path())?;
        } else {
            fs::File::open(e.path())?.sync_all()?;
        }
    }
    fsync_dir(dir)
}

/// Why one snapshot did not load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadFailure {
    /// Damaged or incomplete: set it aside and try the previous one.
    Damaged(String),
    /// Readable but not usable by this node (newer format, other structural parameters): no
    /// older snapshot is better, so stop.
    Refused(String),
}

/// A snapshot that did not load and was set aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// Where it was (before being renamed `corrupt-*`).
    pub dir: PathBuf,
    pub reason: String,
}

/// What [`SnapshotStore::load_newest`] found.
#[derive(Debug)]
pub struct Newest<T> {
    /// The newest snapshot that loaded and what loading it returned (None: none loaded).
    pub loaded: Option<(PathBuf, T)>,
    /// Newer snapshots that did not load, newest first, each set aside.
    pub skipped: Vec<Skipped>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("snapshot dir {dir}: {source}")]
    Io { dir: PathBuf, source: io::Error },
    #[error("snapshot {dir} cannot be used: {reason}")]
    Refused { dir: PathBuf, reason: String },
    #[error("no snapshot in {root} loads ({}); see docs/operations.md", describe(.skipped))]
    NoneLoads {
        root: PathBuf,
        skipped: Vec<Skipped>,
    },
}

fn describe(skipped: &[Skipped]) -> String {
    skipped
        .iter()
        .map(|s| format!("{}: {}", s.dir.display(), s.reason))
        .collect::<Vec<_>>()
        .join("; ")
}

impl<T> Newest<T> {
    /// The loaded snapshot; an error naming every damaged one when snapshots exist but none
    /// loads (never a silent empty state). Ok(None) only for an empty store.
    pub fn require(self, root: &Path) -> Result<Option<(PathBuf, T)>, StoreError> {
        match self.loaded {
            Some(l) => Ok(Some(l)),
            None if self.skipped.is_empty() => Ok(None),
            None => Err(StoreError::NoneLoads {
                root: root.to_path_buf(),
                skipped: self.skipped,
            }),
        }
    }
}

/// The `snapshots/` directory of a data dir.
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    root: PathBuf,
}

impl SnapshotStore {
    /// Open `root`, creating it, and remove leftovers of interrupted builds and transfers.
    /// Only the node that owns the data dir opens it this way.
    pub fn open(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        fs::create_dir_all(&root)?;
        for e in fs::read_dir(&root)? {
            let e = e?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(TMP_PREFIX) || name.starts_with(INCOMING_PREFIX) {
                tracing::info!(dir = %e.path().display(), "removing unfinished snapshot dir");
                fs::remove_dir_all(e.path())?;
            }
        }
        fsync_dir(&root)?;
        Ok(Self { root })
    }

    /// `root` as it is, for reading only (`kindex inspect`, possibly next to a running node):
    /// nothing is created or removed.
    pub fn read_only(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether `name` is the name of a complete snapshot dir.
    pub fn is_snapshot_name(name: &str) -> bool {
        name.starts_with(SNAP_PREFIX)
    }

    /// A fresh, empty directory for building a snapshot.
    pub fn new_build_dir(&self) -> io::Result<PathBuf> {
        let p = self.root.join(format!("{TMP_PREFIX}{:020}", next_seq()));
        fs::create_dir(&p)?;
        Ok(p)
    }

    /// A fresh, empty directory for receiving a snapshot.
    pub fn new_incoming_dir(&self) -> io::Result<PathBuf> {
        let p = self
            .root
            .join(format!("{INCOMING_PREFIX}{:020}", next_seq()));
        fs::create_dir(&p)?;
        Ok(p)
    }

    /// Whether `p` is a directory directly inside this store.
    pub fn contains(&self, p: &Path) -> bool {
        p.parent() == Some(self.root.as_path())
    }

    /// Make a complete snapshot directory durable and give it its final name (the snapshot
    /// covers the log up to `index`).
    pub fn commit(&self, tmp: &Path, index: u64) -> io::Result<PathBuf> {
        fsync_tree(tmp)?;
        let dest = self
            .root
            .join(format!("{SNAP_PREFIX}{index:020}-{:020}", next_seq()));
        fs::rename(tmp, &dest)?;
        fsync_dir(&self.root)?;
        Ok(dest)
    }

    fn with_prefix(&self, prefix: &str) -> io::Result<Vec<PathBuf>> {
        let mut v = vec![];
        let rd = match fs::read_dir(&self.root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(v),
            Err(e) => return Err(e),
        };
        for e in rd {
            let e = e?;
            if e.file_name().to_string_lossy().starts_with(prefix) && e.file_type()?.is_dir() {
                v.push(e.path());
            }
        }
        v.sort();
        v.reverse();
        Ok(v)
    }

    /// Complete snapshot directories, newest (highest index, then latest) first.
    pub fn list(&self) -> io::Result<Vec<PathBuf>> {
        self.with_prefix(SNAP_PREFIX)
    }

    /// Snapshots set aside as damaged (`corrupt-*`), newest first.
    pub fn set_aside(&self) -> io::Result<Vec<PathBuf>> {
        self.with_prefix(CORRUPT_PREFIX)
    }

    /// Keep `keep` newest snapshots and `current`; delete the others.
    pub fn prune(&self, current: &Path, keep: usize) -> io::Result<()> {
        for (i, p) in self.list()?.into_iter().enumerate() {
            if i >= keep && p != current {
                tracing::debug!(dir = %p.display(), "removing old snapshot");
                fs::remove_dir_all(&p)?;
            }
        }
        Ok(())
    }

    /// Move a snapshot that failed to load aside (kept for inspection, never loaded again).
    pub fn mark_corrupt(&self, p: &Path) -> io::Result<()> {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        fs::rename(p, self.root.join(format!("{CORRUPT_PREFIX}{name}")))?;
        fsync_dir(&self.root)
    }

    /// Load the newest snapshot that `load` accepts. Each newer one it reports as damaged is
    /// logged, set aside (`corrupt-*`) and listed in [`Newest::skipped`]; a refusal stops.
    /// `load` must leave the state unchanged when it fails.
    pub fn load_newest<T>(
        &self,
        mut load: impl FnMut(&Path) -> Result<T, LoadFailure>,
    ) -> Result<Newest<T>, StoreError> {
        let io = |source| StoreError::Io {
            dir: self.root.clone(),
            source,
        };
        let mut skipped = Vec::new();
        for dir in self.list().map_err(io)? {
            match load(&dir) {
                Ok(v) => {
                    if skipped.is_empty() {
                        tracing::info!(dir = %dir.display(), "loaded snapshot");
                    } else {
                        tracing::warn!(
                            dir = %dir.display(),
                            set_aside = skipped.len(),
                            "loaded an older snapshot: newer ones are damaged (set aside as corrupt-*)"
                        );
                    }
                    return Ok(Newest {
                        loaded: Some((dir, v)),
                        skipped,
                    });
                }
                Err(LoadFailure::Refused(reason)) => {
                    return Err(StoreError::Refused { dir, reason });
                }
                Err(LoadFailure::Damaged(reason)) => {
                    tracing::error!(dir = %dir.display(), error = %reason, "snapshot does not load; setting it aside and trying an older one");
                    self.mark_corrupt(&dir).map_err(io)?;
                    skipped.push(Skipped { dir, reason });
                }
            }
        }
        if !skipped.is_empty() {
            tracing::error!(root = %self.root.display(), damaged = skipped.len(), "no snapshot loads");
        }
        Ok(Newest {
            loaded: None,
            skipped,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with(names: &[&str]) -> (tempfile::TempDir, SnapshotStore) {
        let t = tempfile::tempdir().unwrap();
        for n in names {
            fs::create_dir(t.path().join(n)).unwrap();
        }
        let s = SnapshotStore::open(t.path()).unwrap();
        (t, s)
    }

    #[test]
    fn open_removes_unfinished_dirs_and_list_is_newest_first() {
        let (t, s) = store_with(&[
            "snap-1-1",
            "snap-2-1",
            "tmp-3",
            "incoming-4",
            "corrupt-snap-5",
        ]);
        let names: Vec<_> = s
            .list()
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["snap-2-1", "snap-1-1"]);
        assert!(!t.path().join("tmp-3").exists() && !t.path().join("incoming-4").exists());
        assert_eq!(s.set_aside().unwrap().len(), 1);
    }

    #[test]
    fn load_newest_sets_damaged_aside_and_stops_on_refusal() {
        let (_t, s) = store_with(&["snap-1-1", "snap-2-1", "snap-3-1"]);
        let got = s
            .load_newest(|d| {
                if d.ends_with("snap-1-1") {
                    Ok(1)
                } else {
                    Err(LoadFailure::Damaged("bad".into()))
                }
            })
            .unwrap();
        assert_eq!(got.loaded.as_ref().unwrap().1, 1);
        assert_eq!(got.skipped.len(), 2);
        assert_eq!(s.set_aside().unwrap().len(), 2);
        assert_eq!(s.list().unwrap().len(), 1);

        let err = s
            .load_newest(|_| -> Result<(), _> { Err(LoadFailure::Refused("newer".into())) })
            .unwrap_err();
        assert!(matches!(err, StoreError::Refused { .. }), "{err}");
        assert_eq!(
            s.list().unwrap().len(),
            1,
            "a refused snapshot is not set aside"
        );

        let none = s
            .load_newest(|_| -> Result<(), _> { Err(LoadFailure::Damaged("bad".into())) })
            .unwrap();
        let err = none.require(s.root()).unwrap_err();
        assert!(err.to_string().contains("no snapshot in"), "{err}");
        let empty = s.load_newest(|_| Ok(())).unwrap();
        assert!(empty.require(s.root()).unwrap().is_none());
    }
}
