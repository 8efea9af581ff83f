use std::fs;
use std::fs::OpenOptions;
use std::io::Read;
use std::io::Seek;
use std::io::SeekFrom;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;

use openraft::RaftLogReader;
use openraft::storage::RaftLogStorage;
use openraft::storage::RaftLogStorageExt;

use super::*;
use crate::raft::Command;
use crate::raft::PointRecord;

fn lid(term: u64, index: u64) -> LogId {
    LogId::new(
        openraft::impls::leader_id_adv::LeaderId { term, node_id: 1 },
        index,
    )
}

fn ent(term: u64, index: u64) -> Entry {
    Entry {
        log_id: lid(term, index),
        payload: openraft::EntryPayload::Normal(Command::Upsert {
            points: vec![PointRecord {
                id: format!("p{index}"),
                vector: vec![index as f32; 32],
                payload_json: None,
            }],
        }),
    }
}

fn open(dir: &Path) -> LogStore {
    LogStore::open(&LogStoreConfig::new(dir)).unwrap()
}

/// WAL chunk files, oldest first.
fn chunks(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    v.sort();
    v
}

async fn append(store: &mut LogStore, entries: Vec<Entry>) {
    store.blocking_append(entries).await.unwrap();
}

async fn indexes(store: &mut LogStore, range: std::ops::Range<u64>) -> Vec<u64> {
    store
        .try_get_log_entries(range)
        .await
        .unwrap()
        .iter()
        .map(|e| e.log_id.index)
        .collect()
}

#[tokio::test]
async fn round_trip_and_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let mut s = open(tmp.path());
        assert_eq!(s.get_log_state().await.unwrap(), LogState::default());
        assert_eq!(s.read_vote().await.unwrap(), None);

        s.save_vote(&Vote::new(1, 1)).await.unwrap();
        append(&mut s, (1..=5).map(|i| ent(1, i)).collect()).await;
        s.save_vote(&Vote::new_committed(2, 1)).await.unwrap();
        append(&mut s, (6..=10).map(|i| ent(2, i)).collect()).await;
        s.save_committed(Some(lid(2, 8))).await.unwrap();

        let got = s.try_get_log_entries(3..7).await.unwrap();
        assert_eq!(got, vec![ent(1, 3), ent(1, 4), ent(1, 5), ent(2, 6)]);
        assert_eq!(
            s.get_log_state().await.unwrap().last_log_id,
            Some(lid(2, 10))
        );
        // The append that follows persists `committed` too.
        append(&mut s, vec![ent(2, 11)]).await;
    }
    let mut s = open(tmp.path());
    let st = s.get_log_state().await.unwrap();
    assert_eq!(st.last_log_id, Some(lid(2, 11)));
    assert_eq!(st.last_purged_log_id, None);
    assert_eq!(
        s.read_vote().await.unwrap(),
        Some(Vote::new_committed(2, 1))
    );
    assert_eq!(s.read_committed().await.unwrap(), Some(lid(2, 8)));
    assert_eq!(indexes(&mut s, 0..100).await, (1..=11).collect::<Vec<_>>());
    assert_eq!(
        s.try_get_log_entries(11..12).await.unwrap(),
        vec![ent(2, 11)]
    );
}

#[tokio::test]
async fn committed_never_moves_back_nor_past_last() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = open(tmp.path());
    append(&mut s, (1..=3).map(|i| ent(1, i)).collect()).await;
    s.save_committed(Some(lid(1, 2))).await.unwrap();
    s.save_committed(Some(lid(1, 1))).await.unwrap();
    s.save_committed(Some(lid(1, 9))).await.unwrap();
    s.save_committed(None).await.unwrap();
    assert_eq!(s.read_committed().await.unwrap(), Some(lid(1, 2)));
}

/// Sizes of the open chunk after each of `n` single-entry appends.
async fn append_one_by_one(s: &mut LogStore, dir: &Path, n: u64) -> Vec<u64> {
    let mut sizes = vec![];
    for i in 1..=n {
        append(s, vec![ent(1, i)]).await;
        let last = chunks(dir).pop().unwrap();
        sizes.push(fs::metadata(&last).unwrap().len());
    }
    sizes
}

#[tokio::test]
async fn torn_tail_is_cut_at_last_good_record() {
    let tmp = tempfile::tempdir().unwrap();
    let sizes = {
        let mut s = open(tmp.path());
        append_one_by_one(&mut s, tmp.path(), 10).await
    };
    let chunk = chunks(tmp.path()).pop().unwrap();
    // Cut the last record in half, as a crash in the middle of the write would.
    let mid = sizes[8] + (sizes[9] - sizes[8]) / 2;
    OpenOptions::new()
        .write(true)
        .open(&chunk)
        .unwrap()
        .set_len(mid)
        .unwrap();

    let mut s = open(tmp.path());
    assert_eq!(
        s.get_log_state().await.unwrap().last_log_id,
        Some(lid(1, 9))
    );
    assert_eq!(indexes(&mut s, 0..100).await, (1..=9).collect::<Vec<_>>());
    // The log goes on from the cut.
    append(&mut s, vec![ent(2, 10)]).await;
    drop(s);
    let mut s = open(tmp.path());
    assert_eq!(
        s.try_get_log_entries(10..11).await.unwrap(),
        vec![ent(2, 10)]
    );
}

#[tokio::test]
async fn zero_filled_tail_is_cut() {
    let tmp = tempfile::tempdir().unwrap();
    let sizes = {
        let mut s = open(tmp.path());
        append_one_by_one(&mut s, tmp.path(), 5).await
    };
    let chunk = chunks(tmp.path()).pop().unwrap();
    // A crash on a filesystem that grew the file before writing its data leaves zeros.
    let mut f = OpenOptions::new().write(true).open(&chunk).unwrap();
    f.seek(SeekFrom::Start(sizes[3])).unwrap();
    f.write_all(&vec![0u8; (sizes[4] - sizes[3]) as usize + 100])
        .unwrap();
    drop(f);

    let mut s = open(tmp.path());
    assert_eq!(
        s.get_log_state().await.unwrap().last_log_id,
        Some(lid(1, 4))
    );
}

#[tokio::test]
async fn damaged_complete_last_record_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let sizes = {
        let mut s = open(tmp.path());
        append_one_by_one(&mut s, tmp.path(), 5).await
    };
    let chunk = chunks(tmp.path()).pop().unwrap();
    // Flip a byte inside the vector data of the last record (length fields intact): the record
    // is complete, so this is damage, not a torn write. Cutting it could drop an acknowledged
    // entry or vote, so the store refuses to open and says where.
    let at = sizes[3] + (sizes[4] - sizes[3]) / 2;
    let mut bytes = Vec::new();
    fs::File::open(&chunk)
        .unwrap()
        .read_to_end(&mut bytes)
        .unwrap();
    bytes[at as usize] ^= 0x5a;
    fs::write(&chunk, &bytes).unwrap();

    let err = LogStore::open(&LogStoreConfig::new(tmp.path()))
        .err()
        .unwrap();
    assert!(matches!(err, LogStoreError::Open { .. }), "{err}");
    eprintln!("refused as expected: {err}");
}

#[tokio::test]
async fn truncate_after_is_durable() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let mut s = open(tmp.path());
        append(&mut s, (1..=10).map(|i| ent(1, i)).collect()).await;
        s.truncate_after(Some(lid(1, 6))).await.unwrap();
        assert_eq!(
            s.get_log_state().await.unwrap().last_log_id,
            Some(lid(1, 6))
        );
        assert_eq!(indexes(&mut s, 0..100).await, (1..=6).collect::<Vec<_>>());
        // No-op when nothing is after it.
        s.truncate_after(Some(lid(1, 6))).await.unwrap();
        append(&mut s, vec![ent(3, 7)]).await;
    }
    let mut s = open(tmp.path());
    assert_eq!(
        s.get_log_state().await.unwrap().last_log_id,
        Some(lid(3, 7))
    );
    assert_eq!(s.try_get_log_entries(7..8).await.unwrap(), vec![ent(3, 7)]);
    s.truncate_after(None).await.unwrap();
    assert_eq!(s.get_log_state().await.unwrap().last_log_id, None);
}

#[tokio::test]
async fn purge_deletes_whole_chunks_and_persists_purged_id() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = LogStoreConfig::new(tmp.path());
    cfg.chunk_max_bytes = 4096;
    {
        let mut s = LogStore::open(&cfg).unwrap();
        for i in 1..=200 {
            append(&mut s, vec![ent(1, i)]).await;
        }
        let before = chunks(tmp.path()).len();
        assert!(before > 5, "expected many chunks, got {before}");

        s.purge(lid(1, 150)).await.unwrap();
        let st = s.get_log_state().await.unwrap();
        assert_eq!(st.last_purged_log_id, Some(lid(1, 150)));
        assert_eq!(st.last_log_id, Some(lid(1, 200)));
        assert!(indexes(&mut s, 0..151).await.is_empty());
        assert_eq!(
            indexes(&mut s, 0..300).await,
            (151..=200).collect::<Vec<_>>()
        );

        // Chunk files are removed by the flush thread right after the purge record is synced.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while chunks(tmp.path()).len() >= before - 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "purged chunks not deleted"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    let mut s = LogStore::open(&cfg).unwrap();
    let st = s.get_log_state().await.unwrap();
    assert_eq!(st.last_purged_log_id, Some(lid(1, 150)));
    assert_eq!(
        indexes(&mut s, 0..300).await,
        (151..=200).collect::<Vec<_>>()
    );

    // Purging past the end (a snapshot install on a lagging follower) empties the log.
    s.purge(lid(2, 500)).await.unwrap();
    let st = s.get_log_state().await.unwrap();
    assert_eq!(st.last_purged_log_id, Some(lid(2, 500)));
    assert_eq!(st.last_log_id, Some(lid(2, 500)));
    append(&mut s, vec![ent(2, 501)]).await;
    assert_eq!(indexes(&mut s, 0..1000).await, vec![501]);
}

#[tokio::test]
async fn append_batches_are_bounded_by_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = LogStoreConfig::new(tmp.path());
    cfg.append_batch_bytes = 1000; // each test entry is ~150 bytes
    let mut s = LogStore::open(&cfg).unwrap();
    append(&mut s, (1..=50).map(|i| ent(1, i)).collect()).await;
    let got = s.limited_get_log_entries(1, 51).await.unwrap();
    assert!(!got.is_empty() && got.len() < 10, "{}", got.len());
    assert_eq!(got[0].log_id.index, 1);
}

#[tokio::test]
async fn directory_is_locked_while_open() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path());
    let clone = s.clone();
    let release = s.release_tracker();
    assert!(LogStore::open(&LogStoreConfig::new(tmp.path())).is_err());
    drop(s);
    assert!(!release.is_released(), "a clone still holds the WAL");
    drop(clone);
    assert!(release.is_released());
    open(tmp.path());
}
