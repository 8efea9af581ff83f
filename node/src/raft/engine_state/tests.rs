//! Retention in the state machine: stamps, prunes re-checked at apply, snapshots, and one log
//! applied by replicas that restart or install snapshots midway (leaders with clocks that
//! disagree: stamps go back and forth).

use proptest::prelude::*;

use super::*;
use crate::policy::Prune;
use crate::policy::Source;
use crate::policy::command::COMMAND_VERSION;
use kindex_common::Metric;
use kindex_common::Quantization;

fn state() -> EngineState {
    let structural = StructuralConfig {
        dimension: 2,
        metric: Metric::L2,
        m: 8,
        ef_construction: 32,
        shards: 1,
        quantization: Quantization::None,
    };
    let knobs = EngineKnobs {
        ef_search: 32,
        threads: 1,
        batch_size: 64,
        queue_capacity: 10_000,
        rescore: 3,
    };
    EngineState::new(structural, knobs, None)
}

fn log_id(index: u64) -> LogId {
    LogId::new(
        openraft::impls::leader_id_adv::LeaderId {
            term: 1,
            node_id: 0,
        },
        index,
    )
}

fn point(id: &str, x: f32, ts: Option<f64>) -> PointRecord {
    PointRecord {
        id: id.into(),
        vector: vec![x, 1.0],
        payload_json: ts.map(|t| format!("{{\"ts\":{t}}}")),
    }
}

fn policy(op: PolicyOp, body: Option<&str>, prune: Option<Prune>, stamp_ms: u64) -> Command {
    let cmd = PolicyCommand {
        v: COMMAND_VERSION,
        op,
        name: "keep".into(),
        policy: body.map(|b| crate::policy::command::parse_policy(b).unwrap()),
        restore: None,
        prune,
        expected_version: None,
        source: Source::Api,
        actor: "t".into(),
        stamp_ms,
    };
    Command::Policy { json: cmd.encode() }
}

fn prune(ids: &[&str], before_ms: u64, by_count: bool) -> Option<Prune> {
    Some(Prune {
        before_ms,
        field: None,
        by_count,
        ids: ids.iter().map(|s| s.to_string()).collect(),
    })
}

fn affected(s: &EngineState, index: u64, cmd: &Command) -> u64 {
    match s.apply(&log_id(index), cmd).unwrap() {
        ApplyOutcome::Applied { affected } => affected,
        ApplyOutcome::Rejected(r) => panic!("rejected: {}", r.message),
    }
}

fn stamp_of(s: &EngineState, id: &str) -> Option<u64> {
    let e = s.engine();
    e.slot_of(id).map(|slot| e.stamp(slot))
}

#[test]
fn stamps_take_the_highest_clock_and_unstamped_points_get_the_first_stamp() {
    let s = state();
    // Written before stamps existed.
    affected(
        &s,
        1,
        &Command::Upsert {
            points: vec![point("old", 1.0, None)],
        },
    );
    assert_eq!(stamp_of(&s, "old"), Some(0));
    let at = |stamp_ms, id: &str| Command::StampedUpsert {
        stamp_ms,
        points: vec![point(id, 2.0, None)],
    };
    affected(&s, 2, &at(5_000, "a"));
    // A new leader with a slower clock: time does not go back.
    affected(&s, 3, &at(4_000, "b"));
    assert_eq!(stamp_of(&s, "a"), Some(5_000));
    assert_eq!(stamp_of(&s, "b"), Some(5_000));
    // An unstamped upsert from an older leader gets the shard clock.
    affected(
        &s,
        4,
        &Command::Upsert {
            points: vec![point("c", 3.0, None)],
        },
    );
    assert_eq!(stamp_of(&s, "c"), Some(5_000));
    let p = s.policies();
    assert_eq!((p.clock_ms, p.unstamped_ms), (5_000, 5_000));
    // The unstamped point ages from the first stamp seen.
    let expiry = p.expiry_at(5_000);
    assert!(expiry.is_empty());
}

#[test]
fn a_prune_removes_only_points_still_expired_when_applied() {
    let s = state();
    let up = |stamp_ms, ids: &[&str]| Command::StampedUpsert {
        stamp_ms,
        points: ids.iter().map(|id| point(id, 1.0, None)).collect(),
    };
    affected(&s, 1, &up(1_000, &["a", "b", "c"]));
    affected(&s, 2, &up(9_000, &["d"]));
    // maxAge 5 s: at 10 s, a, b, c (stamp 1 s) are expired.
    affected(
        &s,
        3,
        &policy(
            PolicyOp::Put,
            Some(r#"{"kind":"retention","maxAgeSeconds":5}"#),
            None,
            10_000,
        ),
    );
    let hide = s.expiry_at(10_000);
    let e = s.engine();
    assert!(
        e.get_unexpired("a", &hide).is_none(),
        "hidden before any sweep"
    );
    assert!(e.get_unexpired("d", &hide).is_some());
    let hits = e
        .search_with(
            &[1.0, 1.0],
            10,
            crate::engine::SearchOpts {
                hide: Some(Arc::new(hide)),
                ..Default::default()
            },
            &Default::default(),
        )
        .unwrap();
    assert_eq!(
        hits.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(),
        ["d"]
    );
    // "b" is re-upserted after the sweep picked it: it survives. "d" was never expired: the
    // cutoff of the command (capped by the policy at its stamp) keeps it.
    affected(&s, 4, &up(10_500, &["b"]));
    let n = affected(
        &s,
        5,
        &policy(
            PolicyOp::Prune,
            None,
            prune(&["a", "b", "d", "zz"], 9_500, false),
            11_000,
        ),
    );
    assert_eq!(n, 1, "only a");
    let e = s.engine();
    assert!(e.get("a").is_none() && e.get("b").is_some() && e.get("d").is_some());
    assert!(e.get("c").is_some(), "not listed: left for the next prune");
    let c = &s.policies().policies["keep"].counters;
    assert_eq!((c.evaluated, c.pruned, c.last_fired_index), (4, 1, 5));
    // A prune asking for a later cutoff than the policy allows is capped: at 11 s the
    // policy's cutoff is 6 s, so "d" (9 s) stays.
    let n = affected(
        &s,
        6,
        &policy(
            PolicyOp::Prune,
            None,
            prune(&["c", "d"], 60_000, false),
            11_000,
        ),
    );
    assert_eq!(n, 1, "c only");
    assert!(s.engine().get("d").is_some());
}

#[test]
fn a_count_prune_removes_only_what_is_over_the_limit_then() {
    let s = state();
    for (i, id) in ["a", "b", "c", "d"].iter().enumerate() {
        let cmd = Command::StampedUpsert {
            stamp_ms: 1_000 * (i as u64 + 1),
            points: vec![point(id, 1.0, None)],
        };
        affected(&s, i as u64 + 1, &cmd);
    }
    affected(
        &s,
        5,
        &policy(
            PolicyOp::Put,
            Some(r#"{"kind":"retention","maxVectors":3}"#),
            None,
            5_000,
        ),
    );
    // The sweep picked a and b when the shard held 5; meanwhile "d" was deleted.
    affected(
        &s,
        6,
        &Command::Delete {
            ids: vec!["d".into()],
        },
    );
    let n = affected(
        &s,
        7,
        &policy(
            PolicyOp::Prune,
            None,
            prune(&["a", "b"], 2_001, true),
            6_000,
        ),
    );
    assert_eq!(n, 0, "3 points: none over the limit");
    affected(
        &s,
        8,
        &Command::StampedUpsert {
            stamp_ms: 7_000,
            points: vec![point("e", 1.0, None)],
        },
    );
    let n = affected(
        &s,
        9,
        &policy(
            PolicyOp::Prune,
            None,
            prune(&["a", "b"], 2_001, true),
            7_000,
        ),
    );
    assert_eq!(n, 1);
    assert!(s.engine().get("a").is_none() && s.engine().get("b").is_some());
    // A prune for a policy that is gone is refused and removes nothing.
    affected(&s, 10, &policy(PolicyOp::Delete, None, None, 8_000));
    let out = s
        .apply(
            &log_id(11),
            &policy(PolicyOp::Prune, None, prune(&["b"], 9_000, false), 9_000),
        )
        .unwrap();
    assert!(matches!(out, ApplyOutcome::Rejected(ref r) if r.kind == RefusalKind::NotFound));
    assert!(s.engine().get("b").is_some());
}

#[test]
fn stamps_and_the_clock_survive_a_snapshot() {
    let s = state();
    affected(
        &s,
        1,
        &Command::Upsert {
            points: vec![point("old", 1.0, None)],
        },
    );
    affected(
        &s,
        2,
        &Command::StampedUpsert {
            stamp_ms: 7_000,
            points: vec![point("a", 1.0, Some(3.0))],
        },
    );
    let dir = tempfile::tempdir().unwrap();
    s.begin_snapshot(Some(&log_id(2)))
        .unwrap()
        .write(dir.path())
        .unwrap();
    let m = crate::snapshot::read_manifest(dir.path()).unwrap();
    assert_eq!(m.format_version, 4);
    let t = state();
    t.load_snapshot(dir.path()).unwrap();
    assert_eq!(stamp_of(&t, "a"), Some(7_000));
    assert_eq!(stamp_of(&t, "old"), Some(0));
    assert_eq!(t.policies(), s.policies());
    assert_eq!(t.policies().clock_ms, 7_000);

    // Without stamps or policies the snapshot stays format 2 (older builds read it).
    let u = state();
    affected(
        &u,
        1,
        &Command::Upsert {
            points: vec![point("x", 1.0, None)],
        },
    );
    let dir = tempfile::tempdir().unwrap();
    u.begin_snapshot(Some(&log_id(1)))
        .unwrap()
        .write(dir.path())
        .unwrap();
    assert_eq!(
        crate::snapshot::read_manifest(dir.path())
            .unwrap()
            .format_version,
        2
    );
}

/// One generated log entry.
/// The data format a replica reports (Admin `Status`, for the operator's rollback refusal):
/// 2 while it holds only what v0.1.0 reads, 3 after a policy command, 4 after a stamped
/// upsert; a replica that loads a format-4 snapshot reports 4 before applying anything.
#[test]
fn the_reported_data_format_follows_what_the_data_holds() {
    let s = state();
    assert_eq!(s.data_format(), 2);
    affected(
        &s,
        1,
        &Command::Upsert {
            points: vec![point("old", 1.0, None)],
        },
    );
    assert_eq!(
        s.data_format(),
        2,
        "unstamped upserts are what v0.1.0 writes"
    );
    affected(
        &s,
        2,
        &policy(
            PolicyOp::Put,
            Some(r#"{"kind":"quota","maxVectors":10}"#),
            None,
            5,
        ),
    );
    assert_eq!(s.data_format(), 3);
    affected(
        &s,
        3,
        &Command::StampedUpsert {
            stamp_ms: 7_000,
            points: vec![point("a", 1.0, None)],
        },
    );
    assert_eq!(s.data_format(), 4);
    let dir = tempfile::tempdir().unwrap();
    s.begin_snapshot(Some(&log_id(3)))
        .unwrap()
        .write(dir.path())
        .unwrap();
    let t = state();
    t.load_snapshot(dir.path()).unwrap();
    assert_eq!(t.data_format(), 4, "the loaded snapshot's format");
}

fn arb_entry() -> impl Strategy<Value = Command> {
    let id = prop::sample::select(vec!["a", "b", "c", "d", "e", "f"]);
    let ids = prop::collection::vec(id.clone(), 1..4);
    prop_oneof![
        4 => (0..20_000u64, ids.clone(), prop::option::of(0..20u32)).prop_map(|(stamp, ids, ts)| {
            Command::StampedUpsert {
                stamp_ms: stamp,
                points: ids.iter().map(|id| point(id, 1.0, ts.map(f64::from))).collect(),
            }
        }),
        1 => ids.clone().prop_map(|ids| Command::Upsert {
            points: ids.iter().map(|id| point(id, 2.0, None)).collect(),
        }),
        1 => ids.clone().prop_map(|ids| Command::Delete {
            ids: ids.iter().map(|s| s.to_string()).collect(),
        }),
        1 => (0..20_000u64, 1..10u64, any::<bool>(), prop::option::of(1..6u64)).prop_map(
            |(stamp, age, field, count)| {
                let field = if field { r#","timestampField":"ts""# } else { "" };
                let count = count.map_or(String::new(), |c| format!(r#","maxVectors":{c}"#));
                let body = format!(r#"{{"kind":"retention","maxAgeSeconds":{age}{field}{count}}}"#);
                policy(PolicyOp::Put, Some(&body), None, stamp)
            }
        ),
        2 => (0..20_000u64, ids, 0..25_000u64, any::<bool>(), any::<bool>()).prop_map(
            |(stamp, ids, before, field, by_count)| {
                let p = Prune {
                    before_ms: before,
                    field: field.then(|| "ts".to_string()),
                    by_count,
                    ids: ids.iter().map(|s| s.to_string()).collect(),
                };
                policy(PolicyOp::Prune, None, Some(p), stamp)
            }
        ),
    ]
}

/// Everything a replica's retention state is made of: points with their stamps, the policy
/// store (clock, counters).
type Fingerprint = (Vec<(String, u64, Vec<f32>)>, u64, u64);

fn fingerprint(s: &EngineState) -> Fingerprint {
    let e = s.engine();
    let mut pts: Vec<(String, u64, Vec<f32>)> = ["a", "b", "c", "d", "e", "f"]
        .iter()
        .filter_map(|id| {
            let slot = e.slot_of(id)?;
            Some((id.to_string(), e.stamp(slot), e.vector(slot).to_vec()))
        })
        .collect();
    pts.sort_by(|x, y| x.0.cmp(&y.0));
    (pts, e.content_checksum(), s.policies().checksum())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// One log on three replicas: straight through, one restarted from its own snapshot every
    /// few entries, one that installs the first one's snapshot midway. Identical state, and the
    /// clock never goes back.
    #[test]
    fn replicas_applying_one_log_agree(log in prop::collection::vec(arb_entry(), 1..40), cut in 0..40usize) {
        let a = state();
        let mut b = state();
        let mut c = state();
        let mut clock = 0;
        for (i, cmd) in log.iter().enumerate() {
            let index = i as u64 + 1;
            for s in [&a, &b, &c] {
                s.apply(&log_id(index), cmd).unwrap();
            }
            let now = a.policies().clock_ms;
            prop_assert!(now >= clock);
            clock = now;
            let reload = |from: &EngineState| {
                let dir = tempfile::tempdir().unwrap();
                from.begin_snapshot(Some(&log_id(index))).unwrap().write(dir.path()).unwrap();
                let fresh = state();
                fresh.load_snapshot(dir.path()).unwrap();
                fresh
            };
            if i % 9 == 4 {
                b = reload(&b);
            }
            if i == cut {
                c = reload(&a);
            }
        }
        prop_assert_eq!(fingerprint(&a), fingerprint(&b));
        prop_assert_eq!(fingerprint(&a), fingerprint(&c));
    }
}

fn tenant_point(id: &str, tenant: &str) -> PointRecord {
    PointRecord {
        id: id.into(),
        vector: vec![1.0, 2.0],
        payload_json: Some(format!(r#"{{"tenant":"{tenant}"}}"#)),
    }
}

fn quota_put(name: &str, body: &str, stamp_ms: u64) -> Command {
    let cmd = PolicyCommand {
        v: COMMAND_VERSION,
        op: PolicyOp::Put,
        name: name.into(),
        policy: Some(crate::policy::command::parse_policy(body).unwrap()),
        restore: None,
        prune: None,
        expected_version: None,
        source: Source::Api,
        actor: "t".into(),
        stamp_ms,
    };
    Command::Policy { json: cmd.encode() }
}

/// The refusal of an upsert, if it is refused (also by the leader's pre-check, the same way).
fn refused(s: &EngineState, index: u64, points: Vec<PointRecord>) -> Option<String> {
    let pre = s.check_write(&points).err().map(|e| e.to_string());
    let cmd = Command::StampedUpsert {
        stamp_ms: 1,
        points,
    };
    let applied = match s.apply(&log_id(index), &cmd).unwrap() {
        ApplyOutcome::Applied { .. } => None,
        ApplyOutcome::Rejected(r) => {
            assert_eq!(r.kind, RefusalKind::Quota);
            Some(r.message)
        }
    };
    assert_eq!(pre, applied, "pre-check and apply disagree");
    applied
}

#[test]
fn a_per_tenant_quota_holds_per_tenant_also_after_a_snapshot_install() {
    let s = state();
    // Points stored before the quota count: the usage is scanned when it appears.
    affected(
        &s,
        1,
        &Command::StampedUpsert {
            stamp_ms: 1,
            points: vec![tenant_point("a1", "a")],
        },
    );
    affected(
        &s,
        2,
        &quota_put(
            "per-tenant",
            r#"{"kind":"quota","maxVectors":2,"tenantField":"tenant"}"#,
            2,
        ),
    );
    assert_eq!(refused(&s, 3, vec![tenant_point("a2", "a")]), None);
    let e = refused(&s, 4, vec![tenant_point("a3", "a")]).unwrap();
    assert!(
        e.contains(r#"tenant "a" (field "tenant")"#) && e.contains("at most 2 vectors"),
        "{e}"
    );
    // Other tenants are not held back; replacing a point adds nothing.
    assert_eq!(
        refused(
            &s,
            5,
            vec![tenant_point("b1", "b"), tenant_point("b2", "b")]
        ),
        None
    );
    assert_eq!(refused(&s, 6, vec![tenant_point("a2", "a")]), None);
    // A point moving from a to b frees a place in a and needs one in b (full).
    assert!(
        refused(&s, 7, vec![tenant_point("a2", "b")])
            .unwrap()
            .contains("\"b\"")
    );
    affected(
        &s,
        8,
        &Command::Delete {
            ids: vec!["a2".into()],
        },
    );
    assert_eq!(refused(&s, 9, vec![tenant_point("a3", "a")]), None);
    assert!(refused(&s, 10, vec![tenant_point("a4", "a")]).is_some());

    // A replica that installs a snapshot counts the same.
    let dir = tempfile::tempdir().unwrap();
    s.begin_snapshot(Some(&log_id(10)))
        .unwrap()
        .write(dir.path())
        .unwrap();
    let t = state();
    t.load_snapshot(dir.path()).unwrap();
    assert!(refused(&t, 11, vec![tenant_point("a4", "a")]).is_some());
    assert_eq!(refused(&t, 12, vec![tenant_point("c1", "c")]), None);
}

#[test]
fn a_payload_bytes_quota_counts_payloads_as_stored() {
    let s = state();
    // {"tenant":"a"} is 14 bytes as stored.
    affected(
        &s,
        1,
        &quota_put("bytes", r#"{"kind":"quota","maxPayloadBytes":30}"#, 1),
    );
    assert_eq!(
        refused(
            &s,
            2,
            vec![tenant_point("p1", "a"), tenant_point("p2", "b")]
        ),
        None
    );
    let e = refused(&s, 3, vec![tenant_point("p3", "c")]).unwrap();
    assert!(
        e.contains("at most 30 payload bytes in this shard; it holds 28 and the write adds 14"),
        "{e}"
    );
    // Same size replaced: nothing added. A point without a payload adds no bytes.
    assert_eq!(refused(&s, 4, vec![tenant_point("p1", "z")]), None);
    assert_eq!(refused(&s, 5, vec![point("p4", 1.0, None)]), None);
    affected(
        &s,
        6,
        &Command::Delete {
            ids: vec!["p2".into()],
        },
    );
    assert_eq!(refused(&s, 7, vec![tenant_point("p3", "c")]), None);
}
