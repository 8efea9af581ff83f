//! The key sets, read from files and re-read while the node runs.
//!
//! Only SHA-256 digests of the keys are kept, and a presented key is compared by its
//! digest with every stored one in constant time (`subtle`), all of them, whatever
//! matches: how long a check takes says nothing about how much of a key was right, nor
//! which key matched. Equal-length digests also hide the keys' lengths.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::RwLock;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use super::{Access, AuthError};

/// Shortest key accepted: a shorter one is guessable, and most likely a mistake.
pub const MIN_KEY_LEN: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFileError {
    #[error("reading API keys from {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error(
        "{path} line {line}: an API key must be at least {MIN_KEY_LEN} characters (and \
         printable ASCII without spaces)"
    )]
    BadKey { path: PathBuf, line: usize },
}

type KeyDigest = [u8; 32];

fn digest(key: &str) -> KeyDigest {
    Sha256::digest(key.as_bytes()).into()
}

/// Whether `d` is one of `set`, looking at every entry.
fn contains(set: &[KeyDigest], d: &KeyDigest) -> bool {
    set.iter()
        .fold(Choice::from(0), |found, k| found | k.ct_eq(d))
        .into()
}

/// Keys of a file: one per line, `#` comments and blank lines ignored.
fn parse(path: &Path, text: &str) -> Result<Vec<KeyDigest>, KeyFileError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let key = line.trim();
        if key.is_empty() || key.starts_with('#') {
            continue;
        }
        // What an HTTP header and gRPC metadata can carry after `Bearer `.
        let printable = key.bytes().all(|b| b.is_ascii_graphic());
        if key.len() < MIN_KEY_LEN || !printable {
            return Err(KeyFileError::BadKey {
                path: path.to_path_buf(),
                line: i + 1,
            });
        }
        out.push(digest(key));
    }
    Ok(out)
}

fn read(path: &Path) -> Result<Vec<KeyDigest>, KeyFileError> {
    let text = std::fs::read_to_string(path).map_err(|e| KeyFileError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    parse(path, &text)
}

/// Where the keys come from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyFiles {
    /// Keys that may read and write.
    pub read_write: Option<PathBuf>,
    /// Keys that may only read (search, get, count, info).
    pub read_only: Option<PathBuf>,
}

impl KeyFiles {
    /// Whether API keys are on (at least one file given).
    pub fn enabled(&self) -> bool {
        self.read_write.is_some() || self.read_only.is_some()
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
struct KeySets {
    read_write: Vec<KeyDigest>,
    read_only: Vec<KeyDigest>,
}

impl KeySets {
    fn load(files: &KeyFiles) -> Result<KeySets, KeyFileError> {
        let load = |p: &Option<PathBuf>| p.as_deref().map(read).transpose();
        Ok(KeySets {
            read_write: load(&files.read_write)?.unwrap_or_default(),
            read_only: load(&files.read_only)?.unwrap_or_default(),
        })
    }
}

/// The node's API keys.
#[derive(Debug)]
pub struct ApiKeys {
    files: KeyFiles,
    sets: RwLock<KeySets>,
}

impl ApiKeys {
    /// Reads the key files. Fails when a given file cannot be read or holds a bad key: a
    /// node asked to require keys never starts without them.
    pub fn load(files: KeyFiles) -> Result<ApiKeys, KeyFileError> {
        let sets = KeySets::load(&files)?;
        if sets.read_write.is_empty() && sets.read_only.is_empty() {
            tracing::warn!(
                ?files,
                "API keys are on but the key files hold no key: every data-plane request will be refused"
            );
        }
        Ok(ApiKeys {
            files,
            sets: RwLock::new(sets),
        })
    }

    /// Checks a presented key for `need`.
    pub fn check(&self, key: &str, need: Access) -> Result<(), AuthError> {
        let d = digest(key);
        let sets = self.sets.read();
        // Both sets looked at in full before deciding (see the module docs).
        let read_write = contains(&sets.read_write, &d);
        let read_only = contains(&sets.read_only, &d);
        match (read_write, read_only, need) {
            (true, _, _) | (false, true, Access::Read) => Ok(()),
            (false, true, Access::Write) => Err(AuthError::ReadOnly),
            (false, false, _) => Err(AuthError::Invalid),
        }
    }

    /// Re-reads the files. On an error the keys in force stay as they were (a Secret being
    /// rewritten, a typo): refusing every client, or accepting every one, would be worse.
    /// Returns whether the keys changed.
    pub fn reload(&self) -> Result<bool, KeyFileError> {
        let new = KeySets::load(&self.files)?;
        let mut sets = self.sets.write();
        if *sets == new {
            return Ok(false);
        }
        *sets = new;
        Ok(true)
    }

    /// Re-reads the files every `every` while `keys` is alive.
    pub fn spawn_reload(keys: &Arc<ApiKeys>, every: Duration) {
        let weak: Weak<ApiKeys> = Arc::downgrade(keys);
        tokio::spawn(async move {
            let mut last_error = None;
            loop {
                tokio::time::sleep(every).await;
                let Some(keys) = weak.upgrade() else {
                    return;
                };
                match keys.reload() {
                    Ok(true) => {
                        let s = keys.sets.read();
                        tracing::info!(
                            read_write = s.read_write.len(),
                            read_only = s.read_only.len(),
                            "API keys reloaded"
                        );
                        last_error = None;
                    }
                    Ok(false) => last_error = None,
                    // Logged once per distinct error, not every period.
                    Err(e) if last_error.as_ref() != Some(&e) => {
                        tracing::warn!(error = %e, "API keys not reloaded; the previous keys stay in force");
                        last_error = Some(e);
                    }
                    Err(_) => {}
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RW: &str = "rw-key-0123456789abcdef";
    const RW2: &str = "rw-key-new-0123456789abcdef";
    const RO: &str = "ro-key-0123456789abcdef";

    fn files(dir: &Path, rw: &str, ro: &str) -> KeyFiles {
        std::fs::write(dir.join("rw"), rw).unwrap();
        std::fs::write(dir.join("ro"), ro).unwrap();
        KeyFiles {
            read_write: Some(dir.join("rw")),
            read_only: Some(dir.join("ro")),
        }
    }

    #[test]
    fn read_write_read_only_and_wrong_keys() {
        let dir = tempfile::tempdir().unwrap();
        let keys = ApiKeys::load(files(dir.path(), RW, &format!("# ro\n\n{RO}\n"))).unwrap();
        assert_eq!(keys.check(RW, Access::Write), Ok(()));
        assert_eq!(keys.check(RW, Access::Read), Ok(()));
        assert_eq!(keys.check(RO, Access::Read), Ok(()));
        assert_eq!(keys.check(RO, Access::Write), Err(AuthError::ReadOnly));
        assert_eq!(keys.check("nope", Access::Read), Err(AuthError::Invalid));
        // A prefix or an extension of a key is another key.
        assert_eq!(keys.check(&RW[..20], Access::Read), Err(AuthError::Invalid));
        assert_eq!(
            keys.check(&format!("{RW}x"), Access::Read),
            Err(AuthError::Invalid)
        );
    }

    #[test]
    fn rotation_keeps_both_keys_while_both_are_listed() {
        let dir = tempfile::tempdir().unwrap();
        let keys = ApiKeys::load(files(dir.path(), RW, RO)).unwrap();
        assert_eq!(keys.reload(), Ok(false));
        std::fs::write(dir.path().join("rw"), format!("{RW}\n{RW2}\n")).unwrap();
        assert_eq!(keys.reload(), Ok(true));
        assert_eq!(keys.check(RW, Access::Write), Ok(()));
        assert_eq!(keys.check(RW2, Access::Write), Ok(()));
        std::fs::write(dir.path().join("rw"), RW2).unwrap();
        assert_eq!(keys.reload(), Ok(true));
        assert_eq!(keys.check(RW, Access::Write), Err(AuthError::Invalid));
        assert_eq!(keys.check(RW2, Access::Write), Ok(()));
    }

    #[test]
    fn a_bad_or_missing_file_fails_at_start_and_keeps_the_keys_on_reload() {
        let dir = tempfile::tempdir().unwrap();
        let missing = KeyFiles {
            read_write: Some(dir.path().join("absent")),
            read_only: None,
        };
        assert!(matches!(
            ApiKeys::load(missing),
            Err(KeyFileError::Read { .. })
        ));
        let short = files(dir.path(), "short", RO);
        assert!(matches!(
            ApiKeys::load(short),
            Err(KeyFileError::BadKey { line: 1, .. })
        ));
        let keys = ApiKeys::load(files(dir.path(), RW, RO)).unwrap();
        std::fs::remove_file(dir.path().join("rw")).unwrap();
        assert!(keys.reload().is_err());
        assert_eq!(keys.check(RW, Access::Write), Ok(()), "old keys stay");
        std::fs::write(dir.path().join("rw"), "has space in it 0123456789").unwrap();
        assert!(matches!(keys.reload(), Err(KeyFileError::BadKey { .. })));
        assert_eq!(keys.check(RW, Access::Write), Ok(()), "old keys stay");
    }

    #[test]
    fn only_a_read_only_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ro"), RO).unwrap();
        let keys = ApiKeys::load(KeyFiles {
            read_write: None,
            read_only: Some(dir.path().join("ro")),
        })
        .unwrap();
        assert_eq!(keys.check(RO, Access::Read), Ok(()));
        assert_eq!(keys.check(RO, Access::Write), Err(AuthError::ReadOnly));
    }
}
