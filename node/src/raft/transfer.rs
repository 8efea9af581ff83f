//! Snapshot transfer between replicas as a chunk stream (one gRPC client stream,
//! `SnapshotChunk`s).
//!
//! A header chunk whose `meta` is a [`TransferHeader`] (vote, snapshot meta, file list with
//! sizes), data chunks whose `offset` is the position in the concatenation of the files in list
//! order, and a final chunk with `done = true` whose `meta` is a [`TransferTrailer`] (CRC32C of
//! every file, computed while reading). The receiver writes into an `incoming-*` dir of the
//! [`SnapshotStore`], enforces a size cap and checks offsets and checksums before the snapshot
//! is installed.

use std::fs;
use std::io;
use std::io::Read;
use std::path::Component;
use std::path::Path;
use std::path::PathBuf;

use kindex_proto::SnapshotChunk;
use serde::Deserialize;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use super::SnapshotMeta;
use super::Vote;
use super::network::NetworkConfig;
use super::snapshot::RAFT_META_FILE;
use super::wire;
use crate::snapshot::store::SnapshotStore;
use crate::snapshot::store::fsync_tree;

/// One file of a snapshot: `/`-separated path relative to the snapshot dir, and size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub name: String,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransferHeader {
    pub vote: Vote,
    pub meta: SnapshotMeta,
    pub files: Vec<FileEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransferTrailer {
    pub crc32c: Vec<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("snapshot stream: {0}")]
    Protocol(String),
    #[error("snapshot of {size} bytes exceeds the cap of {cap} bytes")]
    TooLarge { size: u64, cap: u64 },
    #[error("snapshot file {name}: checksum mismatch (sent {sent:08x}, received {got:08x})")]
    Checksum { name: String, sent: u32, got: u32 },
    #[error("snapshot message: {0}")]
    Wire(#[from] wire::WireError),
    #[error("snapshot i/o: {0}")]
    Io(#[from] io::Error),
}

/// Turn a transferred name into a path below the snapshot dir; refuses anything that could
/// escape it (absolute paths, `..`, empty names).
pub fn safe_relative_path(name: &str) -> Result<PathBuf, TransferError> {
    let p = Path::new(name);
    if name.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(TransferError::Protocol(format!(
            "unsafe file name {name:?}"
        )));
    }
    Ok(p.to_path_buf())
}

/// All regular files below `dir`, sorted by name. Symlinks and other special files are refused.
pub fn list_files(dir: &Path) -> io::Result<Vec<FileEntry>> {
    fn walk(root: &Path, rel: &Path, out: &mut Vec<FileEntry>) -> io::Result<()> {
        for e in fs::read_dir(root.join(rel))? {
            let e = e?;
            let ty = e.file_type()?;
            let rel = rel.join(e.file_name());
            if ty.is_dir() {
                walk(root, &rel, out)?;
            } else if ty.is_file() {
                let name = rel
                    .to_str()
                    .ok_or_else(|| {
                        io::Error::new(io::ErrorKind::InvalidData, "non UTF-8 file name")
                    })?
                    .replace(std::path::MAIN_SEPARATOR, "/");
                out.push(FileEntry {
                    name,
                    size: e.metadata()?.len(),
                });
            } else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("snapshot holds a special file {}", rel.display()),
                ));
            }
        }
        Ok(())
    }
    let mut out = vec![];
    walk(dir, Path::new(""), &mut out)?;
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Read the snapshot in `dir` as a chunk stream (header, data, trailer) into `tx`. Runs on a
/// blocking thread; stops early (Ok) when the receiver side is gone.
pub fn read_chunks(
    dir: &Path,
    vote: Vote,
    meta: SnapshotMeta,
    chunk_size: usize,
    tx: tokio::sync::mpsc::Sender<SnapshotChunk>,
) -> Result<(), TransferError> {
    let files = list_files(dir)?;
    let header = TransferHeader {
        vote,
        meta,
        files: files.clone(),
    };
    let send = |c: SnapshotChunk| tx.blocking_send(c).is_ok();
    if !send(SnapshotChunk {
        meta: wire::encode(&header)?,
        data: vec![],
        offset: 0,
        done: false,
    }) {
        return Ok(());
    }
    let chunk_size = chunk_size.max(4096);
    let mut crcs = Vec::with_capacity(files.len());
    let mut buf: Vec<u8> = Vec::with_capacity(chunk_size);
    let mut buf_offset = 0u64; // global offset of buf[0]
    let mut offset = 0u64;
    for f in &files {
        let mut file = fs::File::open(dir.join(safe_relative_path(&f.name)?))?;
        let mut crc = 0u32;
        let mut left = f.size;
        while left > 0 {
            let room = (chunk_size - buf.len()).min(left as usize);
            let start = buf.len();
            buf.resize(start + room, 0);
            file.read_exact(&mut buf[start..])?; // the file shrank under us: an error
            crc = crc32c::crc32c_append(crc, &buf[start..]);
            left -= room as u64;
            offset += room as u64;
            if buf.len() == chunk_size {
                let data = std::mem::replace(&mut buf, Vec::with_capacity(chunk_size));
                if !send(SnapshotChunk {
                    meta: vec![],
                    data,
                    offset: buf_offset,
                    done: false,
                }) {
                    return Ok(());
                }
                buf_offset = offset;
            }
        }
        crcs.push(crc);
    }
    if !buf.is_empty()
        && !send(SnapshotChunk {
            meta: vec![],
            data: buf,
            offset: buf_offset,
            done: false,
        })
    {
        return Ok(());
    }
    let trailer = TransferTrailer { crc32c: crcs };
    send(SnapshotChunk {
        meta: wire::encode(&trailer)?,
        data: vec![],
        offset,
        done: true,
    });
    Ok(())
}

/// Receive a whole snapshot stream (header, data, trailer) into an `incoming-*` dir of `store`:
/// within `cfg.snapshot_timeout` overall and `cfg.snapshot_idle_timeout` per chunk, at most
/// `cfg.max_snapshot_bytes`. Used for InstallSnapshot (server) and FetchSnapshot (client).
pub async fn receive(
    store: &SnapshotStore,
    stream: &mut tonic::Streaming<SnapshotChunk>,
    cfg: &NetworkConfig,
) -> Result<(Vote, SnapshotMeta, IncomingDir), TransferError> {
    let deadline = Instant::now() + cfg.snapshot_timeout;
    let idle = cfg.snapshot_idle_timeout;
    let first = next_chunk(stream, deadline, idle).await?;
    let mut incoming = Incoming::begin(store, &first, cfg.max_snapshot_bytes).await?;
    tracing::info!(
        meta = %incoming.header().meta,
        files = incoming.header().files.len(),
        bytes = incoming.total(),
        "receiving snapshot"
    );
    loop {
        let chunk = next_chunk(stream, deadline, idle).await?;
        if chunk.done {
            return incoming.finish(&chunk).await;
        }
        incoming.write(&chunk).await?;
    }
}

/// The next chunk, within the idle timeout and the transfer deadline.
async fn next_chunk(
    stream: &mut tonic::Streaming<SnapshotChunk>,
    deadline: Instant,
    idle: std::time::Duration,
) -> Result<SnapshotChunk, TransferError> {
    let wait = idle.min(deadline.saturating_duration_since(Instant::now()));
    match tokio::time::timeout(wait, stream.message()).await {
        Err(_) => Err(TransferError::Protocol(format!("no chunk within {wait:?}"))),
        Ok(Err(status)) => Err(TransferError::Protocol(format!("stream broken: {status}"))),
        Ok(Ok(None)) => Err(TransferError::Protocol(
            "stream ended without a final chunk".into(),
        )),
        Ok(Ok(Some(c))) => Ok(c),
    }
}

/// Receiving side of a transfer: writes the files of one snapshot into an `incoming-*` dir.
/// Dropped before [`Incoming::finish`], it removes that dir.
pub struct Incoming {
    dir: PathBuf,
    header: TransferHeader,
    total: u64,
    received: u64,
    /// Index of the file being written, its open handle, bytes left in it and running CRC.
    file_idx: usize,
    file: Option<tokio::fs::File>,
    left: u64,
    crc: u32,
    crcs: Vec<u32>,
    finished: bool,
}

impl Incoming {
    /// Accept a header chunk; refuse unsafe names and snapshots over `cap` bytes.
    pub async fn begin(
        store: &SnapshotStore,
        first: &SnapshotChunk,
        cap: u64,
    ) -> Result<Self, TransferError> {
        if first.meta.is_empty() || !first.data.is_empty() || first.done {
            return Err(TransferError::Protocol(
                "first chunk must be a header".into(),
            ));
        }
        let header: TransferHeader = wire::decode(&first.meta)?;
        let mut total = 0u64;
        let mut seen = std::collections::BTreeSet::new();
        for f in &header.files {
            safe_relative_path(&f.name)?;
            if !seen.insert(f.name.as_str()) {
                return Err(TransferError::Protocol(format!(
                    "duplicate file {:?}",
                    f.name
                )));
            }
            total = total.saturating_add(f.size);
        }
        if total > cap {
            return Err(TransferError::TooLarge { size: total, cap });
        }
        if !seen.contains(RAFT_META_FILE) {
            return Err(TransferError::Protocol(format!(
                "snapshot has no {RAFT_META_FILE}"
            )));
        }
        let dir = store.new_incoming_dir()?;
        let mut me = Self {
            dir,
            header,
            total,
            received: 0,
            file_idx: 0,
            file: None,
            left: 0,
            crc: 0,
            crcs: vec![],
            finished: false,
        };
        me.open_next_files().await?;
        Ok(me)
    }

    pub fn header(&self) -> &TransferHeader {
        &self.header
    }

    /// Bytes announced by the header (sum of the file sizes).
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Close finished files and open the next non-empty one (empty files are just created).
    async fn open_next_files(&mut self) -> Result<(), TransferError> {
        while self.left == 0 {
            if let Some(mut f) = self.file.take() {
                f.flush().await?;
                f.sync_all().await?;
                self.crcs.push(self.crc);
                self.file_idx += 1;
            }
            let Some(entry) = self.header.files.get(self.file_idx) else {
                return Ok(());
            };
            let path = self.dir.join(safe_relative_path(&entry.name)?);
            if let Some(parent) = path.parent() {
                tokio::fs::create_dir_all(parent).await?;
            }
            self.file = Some(tokio::fs::File::create(&path).await?);
            self.left = entry.size;
            self.crc = 0;
        }
        Ok(())
    }

    /// Write one data chunk; it must start exactly where the previous one ended.
    pub async fn write(&mut self, chunk: &SnapshotChunk) -> Result<(), TransferError> {
        if chunk.offset != self.received {
            return Err(TransferError::Protocol(format!(
                "chunk at offset {} but {} bytes received so far",
                chunk.offset, self.received
            )));
        }
        let end = self.received.saturating_add(chunk.data.len() as u64);
        if end > self.total {
            return Err(TransferError::Protocol(format!(
                "data beyond the announced {} bytes",
                self.total
            )));
        }
        let mut data = chunk.data.as_slice();
        while !data.is_empty() {
            let n = (self.left.min(data.len() as u64)) as usize;
            let f = self
                .file
                .as_mut()
                .ok_or_else(|| TransferError::Protocol("no open file".into()))?;
            f.write_all(&data[..n]).await?;
            self.crc = crc32c::crc32c_append(self.crc, &data[..n]);
            self.left -= n as u64;
            self.received += n as u64;
            data = &data[n..];
            self.open_next_files().await?;
        }
        Ok(())
    }

    /// Check the trailer, fsync the directory tree and hand out the complete snapshot dir.
    pub async fn finish(
        mut self,
        last: &SnapshotChunk,
    ) -> Result<(Vote, SnapshotMeta, IncomingDir), TransferError> {
        if !last.done {
            return Err(TransferError::Protocol(
                "stream ended without a final chunk".into(),
            ));
        }
        if self.received != self.total || self.crcs.len() != self.header.files.len() {
            return Err(TransferError::Protocol(format!(
                "stream ended after {} of {} bytes",
                self.received, self.total
            )));
        }
        let trailer: TransferTrailer = wire::decode(&last.meta)?;
        if trailer.crc32c.len() != self.crcs.len() {
            return Err(TransferError::Protocol(
                "trailer checksum count differs from file count".into(),
            ));
        }
        for ((f, &sent), &got) in self
            .header
            .files
            .iter()
            .zip(&trailer.crc32c)
            .zip(&self.crcs)
        {
            if sent != got {
                return Err(TransferError::Checksum {
                    name: f.name.clone(),
                    sent,
                    got,
                });
            }
        }
        let dir = self.dir.clone();
        tokio::task::spawn_blocking({
            let dir = dir.clone();
            move || fsync_tree(&dir)
        })
        .await
        .map_err(io::Error::other)??;
        self.finished = true;
        Ok((
            self.header.vote,
            self.header.meta.clone(),
            IncomingDir { path: dir },
        ))
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if !self.finished {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// A received snapshot dir; removed on drop unless the state machine moved it into its store.
pub struct IncomingDir {
    pub path: PathBuf,
}

impl Drop for IncomingDir {
    fn drop(&mut self) {
        if self.path.exists() {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

#[cfg(test)]
mod tests;
