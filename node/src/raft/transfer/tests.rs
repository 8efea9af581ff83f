use super::*;
use crate::raft::digest::ApplyDigest;
use crate::raft::snapshot::commit;
use crate::raft::snapshot::read_raft_meta;
use crate::raft::snapshot::write_raft_meta;

#[test]
fn unsafe_names_are_refused() {
    for bad in ["", "/etc/passwd", "../x", "a/../../x", "./a"] {
        assert!(safe_relative_path(bad).is_err(), "{bad}");
    }
    for ok in ["a", "a/b.bin", "RAFT_META"] {
        assert!(safe_relative_path(ok).is_ok(), "{ok}");
    }
}

fn meta() -> SnapshotMeta {
    let lid = crate::raft::LogId::new(
        openraft::impls::leader_id_adv::LeaderId {
            term: 2,
            node_id: 1,
        },
        42,
    );
    SnapshotMeta {
        last_log_id: Some(lid),
        last_membership: Default::default(),
    }
}

/// A snapshot dir with files of awkward sizes around the chunk size.
fn make_snapshot(root: &Path) -> PathBuf {
    let dir = root.join("src");
    fs::create_dir_all(dir.join("graph")).unwrap();
    fs::write(dir.join("empty"), b"").unwrap();
    fs::write(
        dir.join("vectors.bin"),
        (0..10_000u32)
            .flat_map(|i| i.to_le_bytes())
            .collect::<Vec<_>>(),
    )
    .unwrap();
    fs::write(dir.join("graph/layer0"), vec![7u8; 4096 * 3 + 5]).unwrap();
    write_raft_meta(&dir, &meta(), &ApplyDigest::default()).unwrap();
    dir
}

async fn chunks_of(dir: &Path, chunk: usize) -> Vec<SnapshotChunk> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(1000);
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || read_chunks(&dir, Vote::new(2, 1), meta(), chunk, tx))
        .await
        .unwrap()
        .unwrap();
    let mut v = vec![];
    while let Some(c) = rx.recv().await {
        v.push(c);
    }
    v
}

async fn receive(
    store: &SnapshotStore,
    chunks: &[SnapshotChunk],
    cap: u64,
) -> Result<IncomingDir, TransferError> {
    let mut inc = Incoming::begin(store, &chunks[0], cap).await?;
    for c in &chunks[1..] {
        if c.done {
            return inc.finish(c).await.map(|(_, _, d)| d);
        }
        inc.write(c).await?;
    }
    Err(TransferError::Protocol("no final chunk".into()))
}

#[tokio::test]
async fn transfer_round_trip() {
    let t = tempfile::tempdir().unwrap();
    let src = make_snapshot(t.path());
    let chunks = chunks_of(&src, 4096).await;
    assert!(chunks.len() > 5 && chunks.last().unwrap().done);
    let store = SnapshotStore::open(t.path().join("snapshots")).unwrap();
    let got = receive(&store, &chunks, 1 << 20).await.unwrap();
    assert_eq!(list_files(&got.path).unwrap(), list_files(&src).unwrap());
    for f in list_files(&src).unwrap() {
        assert_eq!(
            fs::read(got.path.join(&f.name)).unwrap(),
            fs::read(src.join(&f.name)).unwrap()
        );
    }
    // Install-side: commit checks RAFT_META against the header's meta, then renames.
    let dest = commit(&store, &got.path, &meta(), None).unwrap();
    assert!(
        dest.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("snap-00000000000000000042-")
    );
    assert_eq!(read_raft_meta(&dest).unwrap().meta, meta());
    assert_eq!(store.list().unwrap(), vec![dest]);
    drop(got); // already moved: nothing to remove
}

#[tokio::test]
async fn transfer_refuses_bad_streams_and_cleans_up() {
    let t = tempfile::tempdir().unwrap();
    let src = make_snapshot(t.path());
    let chunks = chunks_of(&src, 4096).await;
    let store = SnapshotStore::open(t.path().join("snapshots")).unwrap();

    let err = receive(&store, &chunks, 1000).await.err().unwrap();
    assert!(matches!(err, TransferError::TooLarge { .. }), "{err}");

    let mut gap = chunks.clone();
    gap.remove(2);
    let err = receive(&store, &gap, 1 << 20).await.err().unwrap();
    assert!(matches!(err, TransferError::Protocol(_)), "{err}");

    let mut flipped = chunks.clone();
    flipped[3].data[10] ^= 1;
    let err = receive(&store, &flipped, 1 << 20).await.err().unwrap();
    assert!(matches!(err, TransferError::Checksum { .. }), "{err}");

    let mut truncated = chunks.clone();
    truncated.pop();
    assert!(receive(&store, &truncated, 1 << 20).await.is_err());

    let mut evil = chunks.clone();
    let mut header: TransferHeader = wire::decode(&evil[0].meta).unwrap();
    header.files[0].name = "../escape".into();
    evil[0].meta = wire::encode(&header).unwrap();
    assert!(receive(&store, &evil, 1 << 20).await.is_err());

    // Every failed transfer removed its incoming dir.
    assert_eq!(fs::read_dir(store.root()).unwrap().count(), 0);
}

#[test]
fn list_files_is_recursive_and_sorted() {
    let t = tempfile::tempdir().unwrap();
    fs::create_dir(t.path().join("sub")).unwrap();
    fs::write(t.path().join("b"), b"12").unwrap();
    fs::write(t.path().join("sub/a"), b"1").unwrap();
    fs::write(t.path().join("a"), b"").unwrap();
    let names: Vec<_> = list_files(t.path())
        .unwrap()
        .into_iter()
        .map(|f| (f.name, f.size))
        .collect();
    assert_eq!(
        names,
        vec![("a".into(), 0), ("b".into(), 2), ("sub/a".into(), 1)]
    );
}
