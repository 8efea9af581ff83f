use openraft::RaftSnapshotBuilder;
use openraft::storage::RaftStateMachine;

use super::*;
use crate::raft::PointRecord;
use crate::raft::Refusal;
use crate::raft::RefusalKind;
use memory::MemState;

#[path = "../../../tests/support/mem_state.rs"]
mod memory;

fn ent(index: u64) -> Entry {
    Entry {
        log_id: LogId::new(
            openraft::impls::leader_id_adv::LeaderId {
                term: 1,
                node_id: 0,
            },
            index,
        ),
        payload: openraft::EntryPayload::Normal(Command::Upsert {
            points: vec![PointRecord {
                id: format!("p{index}"),
                vector: vec![1.0; 4],
                payload_json: None,
            }],
        }),
    }
}

async fn apply(sm: &mut ShardStateMachine<MemState>, range: std::ops::RangeInclusive<u64>) {
    let items: Vec<io::Result<EntryResponder<TypeConfig>>> =
        range.map(|i| Ok((ent(i), None))).collect();
    sm.apply(futures::stream::iter(items)).await.unwrap();
}

async fn open(root: &Path) -> ShardStateMachine<MemState> {
    ShardStateMachine::open(
        root,
        Arc::new(MemState::new()),
        StateMachineConfig {
            keep_snapshots: 2,
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn reopen_loads_newest_snapshot_and_skips_a_corrupt_one() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("snapshots");
    {
        let mut sm = open(&root).await;
        for (to, n) in [(10, 1), (20, 2), (30, 3)] {
            apply(&mut sm, (to - 9)..=to).await;
            let snap = sm
                .get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap();
            assert_eq!(snap.meta.last_log_id.map(|l| l.index), Some(to));
            // keep_snapshots = 2
            assert_eq!(sm.snapshot_store().list().unwrap().len(), n.min(2));
        }
        apply(&mut sm, 31..=35).await; // not in any snapshot: openraft replays it from the log
    }
    let sm = open(&root).await;
    assert_eq!(sm.last_applied().map(|l| l.index), Some(30));
    assert_eq!(sm.state().len(), 30);

    // Damage the newest: the previous one is used and the damaged one set aside.
    let newest = sm.snapshot_store().list().unwrap()[0].clone();
    drop(sm);
    std::fs::write(newest.join("points.json"), b"{not json").unwrap();
    let mut sm = open(&root).await;
    assert_eq!(sm.last_applied().map(|l| l.index), Some(20));
    assert_eq!(sm.state().len(), 20);
    let cur = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(cur.meta.last_log_id.map(|l| l.index), Some(20));
    let names: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().any(|n| n.starts_with("corrupt-snap-")),
        "{names:?}"
    );
}

#[tokio::test]
async fn install_replaces_state_and_other_snapshots() {
    let t = tempfile::tempdir().unwrap();
    let mut leader = open(&t.path().join("a")).await;
    apply(&mut leader, 1..=50).await;
    let snap = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();

    let mut follower = open(&t.path().join("b")).await;
    apply(&mut follower, 1..=5).await;
    follower
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    follower
        .install_snapshot(&snap.meta, snap.snapshot.clone())
        .await
        .unwrap();
    assert_eq!(follower.state().len(), 50);
    assert_eq!(
        follower.applied_state().await.unwrap().0,
        snap.meta.last_log_id
    );
    // The leader's dir was copied, not taken; the follower keeps only the installed one.
    assert!(snap.snapshot.path.exists());
    assert_eq!(follower.snapshot_store().list().unwrap().len(), 1);
    let cur = follower.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(cur.meta, snap.meta);
}

#[tokio::test]
async fn rejected_commands_change_nothing() {
    let t = tempfile::tempdir().unwrap();
    let mut sm = open(t.path()).await;
    let s = sm.state().clone();
    assert_eq!(
        s.apply(
            &ent(1).log_id,
            &Command::Policy {
                json: r#"{"max_points":1}"#.into()
            }
        )
        .unwrap(),
        ApplyOutcome::Applied { affected: 0 }
    );
    apply(&mut sm, 2..=3).await;
    assert_eq!(s.len(), 1);
    assert_eq!(sm.last_applied().map(|l| l.index), Some(3));
}
