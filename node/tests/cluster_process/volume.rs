//! A replica whose data volume fills up (issue 15 scenario 9): node 0's data dir is a
//! size-limited tmpfs, mounted in a mount namespace of its own process (`unshare --mount`;
//! gone with the process, never visible to the machine), filled and freed through
//! `/proc/<pid>/root`. Needs root: the test fails (it does not skip) without it.
//!
//! - leader full: writes are refused at once with RESOURCE_EXHAUSTED "volume full on node 0",
//!   through the leader and through a follower; reads keep working; Admin `Status` reports it;
//!   the process never stops; freeing space lets writes through again, without a Raft step;
//! - follower full: the shard keeps committing on the other two; the full replica takes no
//!   entries (its log stops growing) and catches up once space is freed;
//! - every acknowledged write is on every replica at the end.

use std::path::PathBuf;
use std::time::Duration;

use fs2::FileExt;

use super::*;

/// Size of node 0's tmpfs.
const TMPFS_SIZE: &str = "32m";
/// `--volume-reserve-bytes` of every node.
const RESERVE: u64 = 4 << 20;

/// Runs node `p` with its data dir on a `size` tmpfs in a private mount namespace.
fn on_tmpfs(p: &mut Proc, size: &str) {
    let bin = p.binary.clone().unwrap_or_else(procs::node_binary);
    let mut args: Vec<String> = vec![
        "--mount".into(),
        "--propagation".into(),
        "private".into(),
        "sh".into(),
        "-c".into(),
        r#"mkdir -p "$1" && mount -t tmpfs -o size="$2" kindex-test-volume "$1" && shift 2 && exec "$@""#
            .into(),
        "sh".into(),
        p.dir.display().to_string(),
        size.into(),
        bin.display().to_string(),
    ];
    args.extend(p.args.iter().cloned());
    p.args = args;
    p.binary = Some(PathBuf::from("unshare"));
}

/// Node `p`'s data dir as its own mount namespace sees it.
fn volume_of(p: &Proc) -> PathBuf {
    let pid = p.pid().expect("node is running");
    PathBuf::from(format!("/proc/{pid}/root{}", p.dir.display()))
}

/// Fills the volume to `RESERVE / 2` free with a file `filler` (fallocated: tmpfs pages
/// are taken at once). Returns its size.
fn fill(vol: &std::path::Path) -> u64 {
    let free = fs2::available_space(vol).unwrap();
    let size = free.saturating_sub(RESERVE / 2);
    let f = std::fs::File::create(vol.join("filler")).unwrap();
    f.allocate(size).unwrap();
    f.sync_all().unwrap();
    size
}

fn free(vol: &std::path::Path) {
    std::fs::remove_file(vol.join("filler")).unwrap();
}

/// Upserts one new point through `p` (the leader, or forwarded to it) with a short deadline.
async fn probe(p: &Proc, n: u64) -> Result<pb::WriteResponse, tonic::Status> {
    let mut req = tonic::Request::new(pb::UpsertRequest {
        index: String::new(),
        points: batch("probe", n, 1),
    });
    req.set_timeout(Duration::from_secs(5));
    p.points().upsert(req).await.map(|r| r.into_inner())
}

fn assert_volume_full(e: &tonic::Status) {
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().contains("volume full on node 0") && e.message().contains("below the reserve"),
        "{e:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_volume_refuses_writes_keeps_reads_and_recovers_when_freed() {
    assert!(
        nix_root(),
        "this test mounts a tmpfs in a private mount namespace and needs root (it does not skip)"
    );
    let _serial = serial().await;
    let reserve = RESERVE.to_string();
    let mut c = cluster(3, 0, &["--volume-reserve-bytes", &reserve]);
    on_tmpfs(c.node_mut(0, 0), TMPFS_SIZE);
    for id in 0..3 {
        c.restart(0, id);
    }
    with_timeout(Duration::from_secs(240), async {
        wait_answering(&c, &[0, 1, 2]).await;
        // Node 0 really is on its small tmpfs (statvfs through its own mount namespace).
        let total = fs2::total_space(volume_of(c.node(0, 0))).unwrap();
        assert!(total <= 32 << 20, "node 0's data dir is not on the tmpfs: {total} bytes");
        initialize(&c, 0, &[0, 1, 2]).await;
        let mut leader = wait_leader(&c, None).await;
        if leader != 0 {
            c.node(0, leader)
                .admin()
                .transfer_leader(pb::TransferLeaderRequest { to: 0 })
                .await
                .unwrap();
            leader = wait_leader(&c, None).await;
        }
        assert_eq!(leader, 0);
        let pid = c.node(0, 0).pid();

        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let urls = c.nodes.iter().map(Proc::grpc_url).collect();
        let writer = spawn_writer(urls, stop.clone(), acked.clone());
        wait_for("writes flowing", WAIT, || async {
            (acked.lock().len() >= 100).then_some(())
        })
        .await;

        // --- The leader's volume fills up.
        let vol = volume_of(c.node(0, 0));
        let filled = fill(&vol);
        let t = Instant::now();
        let mut n = 0;
        let refused = wait_for("a write refused for the full volume", WAIT, || {
            n += 1;
            let n = n;
            let c = &c;
            async move {
                match probe(c.node(0, 1), n).await {
                    Err(e) if e.code() == tonic::Code::ResourceExhausted => Some(e),
                    _ => None,
                }
            }
        })
        .await;
        let refusal = t.elapsed();
        assert_volume_full(&refused);
        // Straight to the leader too, and again: refused, not queued.
        assert_volume_full(&probe(c.node(0, 0), 1_000_000).await.unwrap_err());
        // Reads keep working, on the full replica itself.
        let seen = acked.lock().clone();
        assert_eq!(present(c.node(0, 0), &seen).await, seen.len());
        let s = c.node(0, 0).status().await.unwrap();
        let v = s.volume.clone().expect("Status reports the volume");
        assert!(v.full && v.free_bytes < v.reserve_bytes, "{v:?}");
        assert!(v.message.contains("volume full on node 0"), "{v:?}");
        assert_eq!(v.reserve_bytes, RESERVE);
        // Give the writer time to hit the refusal, then free the space.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before_free = acked.lock().len();
        free(&vol);
        let t = Instant::now();
        wait_for("writes accepted again", WAIT, || async {
            (acked.lock().len() >= before_free + 20).then_some(())
        })
        .await;
        let recovery = t.elapsed();
        assert!(!c.node(0, 0).status().await.unwrap().volume.unwrap().full);
        assert_eq!(c.node(0, 0).pid(), pid, "node 0 restarted");
        eprintln!(
            "leader volume filled ({filled} bytes): refused after {refusal:?} ({}); writes \
             acknowledged again {recovery:?} after freeing",
            refused.message()
        );

        // --- A follower's volume fills up: the other two keep the shard writable.
        c.node(0, 0)
            .admin()
            .transfer_leader(pb::TransferLeaderRequest { to: 1 })
            .await
            .unwrap();
        let leader = wait_leader(&c, Some(0)).await;
        fill(&vol);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let stuck = c.node(0, 0).status().await.unwrap().last_log_index;
        let before = acked.lock().len();
        wait_for("writes acknowledged without the full follower", WAIT, || async {
            (acked.lock().len() >= before + 100).then_some(())
        })
        .await;
        let s0 = c.node(0, 0).status().await.unwrap();
        let sl = c.node(0, leader).status().await.unwrap();
        assert!(s0.volume.as_ref().unwrap().full, "{s0:?}");
        assert!(
            s0.last_log_index <= stuck + 1 && sl.last_log_index > stuck + 10,
            "the full follower kept appending: {} (was {stuck}), leader {}",
            s0.last_log_index,
            sl.last_log_index
        );
        free(&vol);
        let t = Instant::now();
        stop.store(true, Ordering::Relaxed);
        let (ok, failed) = writer.await.unwrap();
        let last = c.node(0, leader).status().await.unwrap().applied.unwrap().index;
        converge(&c, last).await;
        let caught_up = t.elapsed();
        assert_eq!(c.node(0, 0).pid(), pid, "node 0 restarted");
        let acked = acked.lock().clone();
        for id in 0..3 {
            assert_eq!(
                present(c.node(0, id), &acked).await,
                acked.len(),
                "node {id} lost acknowledged writes"
            );
        }
        eprintln!(
            "follower volume full: its log stayed at {stuck} while the leader reached {}; caught up \
             {caught_up:?} after freeing; writer: {ok} batches acknowledged, {failed} refused; {} \
             acknowledged points on all 3 replicas",
            sl.last_log_index,
            acked.len()
        );
    })
    .await;
}

/// Whether this process runs as root (`/proc/self/status` Uid line; no libc call).
fn nix_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}
