//! Loopback addresses for test servers, never ports reserved by binding :0: such a port can
//! be taken, before the server binds it, by the ephemeral port of one of the many outgoing
//! connections a starting cluster makes (seen: a node failing to bind). Every caller gets a
//! `127.A.B.0/24` of its own from a counter shared by all test processes on the machine (a
//! locked file in the temp dir), so servers use their default ports without colliding.
//! Linux routes all of 127.0.0.0/8 to `lo`. Shared with the CLI tests via `#[path]`.

use std::io::{Read, Seek, SeekFrom, Write};

/// Blocks cycle through 127.100.1.0/24 ..= 127.249.254.0/24 (38,100 of them); 127.0.0.0/16
/// is left to servers on 127.0.0.1 with default ports (the standalone default).
const FIRST_A: u32 = 100;
const AS: u32 = 150;
const BS: u32 = 254;

/// One `127.A.B.0/24` of this caller's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    a: u32,
    b: u32,
}

impl Block {
    /// The next block of the machine-wide counter.
    pub fn next() -> Block {
        let path = std::env::temp_dir().join("kindex-loopback-blocks");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .expect("open the loopback block counter");
        f.lock().expect("lock the loopback block counter");
        let mut s = String::new();
        f.read_to_string(&mut s)
            .expect("read the loopback block counter");
        let n: u32 = s.trim().parse().unwrap_or(0) % (AS * BS);
        f.seek(SeekFrom::Start(0)).unwrap();
        f.set_len(0).unwrap();
        write!(f, "{}", n + 1).unwrap();
        // The lock goes with the file.
        Block {
            a: FIRST_A + n / BS,
            b: 1 + n % BS,
        }
    }

    /// Host `host` (1..=254) of this block.
    pub fn ip(&self, host: u32) -> String {
        assert!((1..=254).contains(&host), "host {host} outside 1..=254");
        format!("127.{}.{}.{}", self.a, self.b, host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_blocks_differ() {
        let (x, y) = (Block::next(), Block::next());
        assert_ne!(x, y);
        assert_ne!(x.ip(1), y.ip(1));
        assert!(x.ip(254).starts_with("127."));
    }
}
