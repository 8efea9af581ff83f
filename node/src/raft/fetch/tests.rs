use openraft::LogState;
use openraft::storage::RaftLogStorageExt;

use super::*;
use crate::raft::Command;
use crate::raft::Entry;
use crate::raft::LogStoreConfig;
use crate::raft::Vote;

fn lid(term: u64, index: u64) -> LogId {
    LogId::new(
        openraft::impls::leader_id_adv::LeaderId { term, node_id: 1 },
        index,
    )
}

fn entries(term: u64, range: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
    range
        .map(|i| Entry {
            log_id: lid(term, i),
            payload: openraft::EntryPayload::Normal(Command::Delete {
                ids: vec![format!("p{i}")],
            }),
        })
        .collect()
}

/// A log with a vote of term 3 and entries 1..=10 of term 1.
async fn log_1_to_10(dir: &std::path::Path) -> LogStore {
    let mut log = LogStore::open(&LogStoreConfig::new(dir)).unwrap();
    log.save_vote(&Vote::new(3, 2)).await.unwrap();
    log.blocking_append(entries(1, 1..=10)).await.unwrap();
    log
}

async fn indexes(log: &mut LogStore) -> Vec<u64> {
    let v = log.try_get_log_entries(0..100).await.unwrap();
    v.iter().map(|e| e.log_id.index).collect()
}

async fn state(log: &mut LogStore) -> LogState<crate::raft::TypeConfig> {
    log.get_log_state().await.unwrap()
}

#[tokio::test]
async fn matching_snapshot_purges_up_to_it_and_keeps_the_entries_after_it() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let mut log = log_1_to_10(tmp.path()).await;
        align_log_with_snapshot(&mut log, lid(1, 6)).await.unwrap();
        assert_eq!(indexes(&mut log).await, vec![7, 8, 9, 10]);
    }
    // Durable, and the vote is untouched.
    let mut log = LogStore::open(&LogStoreConfig::new(tmp.path())).unwrap();
    let st = state(&mut log).await;
    assert_eq!(st.last_purged_log_id, Some(lid(1, 6)));
    assert_eq!(st.last_log_id, Some(lid(1, 10)));
    assert_eq!(indexes(&mut log).await, vec![7, 8, 9, 10]);
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 2)));
}

#[tokio::test]
async fn snapshot_beyond_the_log_purges_everything_up_to_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut log = log_1_to_10(tmp.path()).await;
    log.purge(lid(1, 4)).await.unwrap();
    align_log_with_snapshot(&mut log, lid(2, 15)).await.unwrap();
    let st = state(&mut log).await;
    assert_eq!(st.last_purged_log_id, Some(lid(2, 15)));
    assert_eq!(st.last_log_id, Some(lid(2, 15)));
    assert!(indexes(&mut log).await.is_empty());
    // The leader's next entries follow it.
    log.blocking_append(entries(2, 16..=17)).await.unwrap();
    assert_eq!(indexes(&mut log).await, vec![16, 17]);
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 2)));
}

#[tokio::test]
async fn conflicting_entry_at_the_snapshot_index_truncates_the_uncommitted_tail() {
    let tmp = tempfile::tempdir().unwrap();
    let mut log = log_1_to_10(tmp.path()).await;
    log.purge(lid(1, 2)).await.unwrap();
    log.save_committed(Some(lid(1, 4))).await.unwrap();
    // The cluster committed another entry (term 2) at index 6: ours from 6 on never were.
    align_log_with_snapshot(&mut log, lid(2, 6)).await.unwrap();
    let st = state(&mut log).await;
    assert_eq!(st.last_purged_log_id, Some(lid(2, 6)));
    assert_eq!(st.last_log_id, Some(lid(2, 6)));
    assert!(indexes(&mut log).await.is_empty());
}

#[tokio::test]
async fn a_conflict_below_the_commit_point_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut log = log_1_to_10(tmp.path()).await;
    log.save_committed(Some(lid(1, 8))).await.unwrap();
    assert!(align_log_with_snapshot(&mut log, lid(2, 6)).await.is_err());
    assert_eq!(indexes(&mut log).await, (1..=10).collect::<Vec<_>>());
}

#[tokio::test]
async fn log_already_purged_past_the_snapshot_is_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let mut log = log_1_to_10(tmp.path()).await;
    log.purge(lid(1, 8)).await.unwrap();
    align_log_with_snapshot(&mut log, lid(1, 6)).await.unwrap();
    align_log_with_snapshot(&mut log, lid(1, 8)).await.unwrap();
    assert!(align_log_with_snapshot(&mut log, lid(2, 8)).await.is_err());
    assert_eq!(state(&mut log).await.last_purged_log_id, Some(lid(1, 8)));
    assert_eq!(indexes(&mut log).await, vec![9, 10]);
}

#[tokio::test]
async fn the_vote_is_raised_to_the_snapshot_term_never_lowered() {
    let tmp = tempfile::tempdir().unwrap();
    let mut log = log_1_to_10(tmp.path()).await;
    // Vote term 3 is above the snapshot's term 1: unchanged.
    raise_vote_to(&mut log, lid(1, 6)).await.unwrap();
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 2)));
    // A snapshot written in term 7 (by node 1): the vote goes to term 7, for its leader.
    align_log_with_snapshot(&mut log, lid(7, 20)).await.unwrap();
    raise_vote_to(&mut log, lid(7, 20)).await.unwrap();
    drop(log);
    let mut log = LogStore::open(&LogStoreConfig::new(tmp.path())).unwrap();
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(7, 1)));
    assert_eq!(state(&mut log).await.last_log_id, Some(lid(7, 20)));
}
