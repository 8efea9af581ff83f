use proptest::prelude::*;

use super::*;

fn cmd(op: PolicyOp, name: &str, max: Option<u64>) -> PolicyCommand {
    PolicyCommand {
        v: super::super::COMMAND_VERSION,
        op,
        name: name.into(),
        policy: max.map(|m| PolicyBody::Quota(Quota::max_vectors(m))),
        restore: None,
        prune: None,
        expected_version: None,
        source: Source::Api,
        actor: "alice".into(),
        stamp_ms: 1_000,
    }
}

/// A shard-wide load: `live` points held, `adds` new ones.
fn shard(live: u64, adds: u64) -> impl Fn(&Quota) -> Vec<QuotaLoad> {
    move |_| {
        vec![QuotaLoad {
            points: live,
            add_points: adds,
            ..QuotaLoad::default()
        }]
    }
}

fn put(name: &str, max: u64) -> PolicyCommand {
    cmd(PolicyOp::Put, name, Some(max))
}

#[test]
fn twelve_updates_keep_versions_3_to_12_with_audit_fields() {
    let mut s = PolicyStore::default();
    for i in 1..=12u64 {
        let mut c = put("q", 100 + i);
        c.stamp_ms = 1_000 + i;
        assert_eq!(s.apply(&c, 40 + i), Ok(i));
    }
    let h = &s.policies["q"];
    let kept: Vec<u64> = h.versions.iter().map(|v| v.version).collect();
    assert_eq!(kept, (3..=12).collect::<Vec<_>>());
    let v12 = h.current().unwrap();
    assert_eq!(
        (v12.actor.as_str(), v12.stamp_ms, v12.log_index, v12.source),
        ("alice", 1_012, 52, Source::Api)
    );
    assert_eq!(
        h.active(),
        Some(&PolicyBody::Quota(Quota::max_vectors(112)))
    );
    assert_eq!(s.clock_ms, 1_012);
}

#[test]
fn delete_and_restore_make_versions_and_stale_versions_conflict() {
    let mut s = PolicyStore::default();
    assert_eq!(s.apply(&put("q", 10), 1), Ok(1));
    assert_eq!(s.apply(&put("q", 20), 2), Ok(2));
    assert_eq!(s.apply(&cmd(PolicyOp::Delete, "q", None), 3), Ok(3));
    assert!(!s.has_quota());
    assert!(matches!(
        s.apply(&cmd(PolicyOp::Delete, "q", None), 4),
        Err(PolicyRefusal::NotFound(_))
    ));
    let mut restore = cmd(PolicyOp::Restore, "q", None);
    restore.restore = Some(1);
    assert_eq!(s.apply(&restore, 5), Ok(4));
    let v4 = s.policies["q"].current().unwrap().clone();
    assert_eq!(v4.restored_from, Some(1));
    assert_eq!(v4.policy, Some(PolicyBody::Quota(Quota::max_vectors(10))));
    // Restoring a deletion, or a version that never was: nothing to restore.
    for v in [3, 99] {
        restore.restore = Some(v);
        assert!(matches!(
            s.apply(&restore, 6),
            Err(PolicyRefusal::NotFound(_))
        ));
    }
    // Compare-and-swap.
    let mut stale = put("q", 30);
    stale.expected_version = Some(3);
    assert!(matches!(
        s.apply(&stale, 7),
        Err(PolicyRefusal::Conflict(_))
    ));
    stale.expected_version = Some(4);
    assert_eq!(s.apply(&stale, 8), Ok(5));
    let mut create = put("new", 1);
    create.expected_version = Some(0);
    assert_eq!(s.apply(&create, 9), Ok(1));
    assert!(matches!(
        s.apply(&create, 10),
        Err(PolicyRefusal::Conflict(_))
    ));
}

#[test]
fn an_unchanged_put_makes_no_version() {
    let mut s = PolicyStore::default();
    assert_eq!(s.apply(&put("q", 10), 1), Ok(1));
    assert_eq!(s.apply(&put("q", 10), 2), Ok(1));
    assert_eq!(s.policies["q"].versions.len(), 1);
}

#[test]
fn the_resource_and_the_api_do_not_change_each_others_policies() {
    let mut s = PolicyStore::default();
    let mut from_cr = put("cr", 10);
    from_cr.source = Source::Resource;
    s.apply(&from_cr, 1).unwrap();
    let e = s.apply(&put("cr", 5), 2).unwrap_err();
    assert!(e.to_string().contains("managed by the VectorIndex"), "{e}");
    s.apply(&put("api", 10), 3).unwrap();
    let mut over = put("api", 3);
    over.source = Source::Resource;
    assert!(matches!(s.apply(&over, 4), Err(PolicyRefusal::Conflict(_))));
}

#[test]
fn quotas_count_every_write_they_check() {
    let mut s = PolicyStore::default();
    // No quota: nothing is counted.
    assert_eq!(s.admit(&shard(1_000, 5), 1), Ok(()));
    s.apply(&put("small", 10), 2).unwrap();
    s.apply(&put("big", 100), 3).unwrap();
    assert_eq!(s.admit(&shard(8, 2), 4), Ok(()));
    // Replacing points adds nothing: always allowed.
    assert_eq!(s.admit(&shard(10, 0), 5), Ok(()));
    let e = s.admit(&shard(10, 1), 6).unwrap_err();
    assert_eq!(
        (e.name.as_str(), e.limit, e.live, e.adds),
        ("small", 10, 10, 1)
    );
    assert!(e.to_string().contains("\"small\""), "{e}");
    let small = &s.policies["small"].counters;
    assert_eq!(
        (
            small.evaluated,
            small.allowed,
            small.rejected,
            small.last_fired_index
        ),
        (3, 2, 1, 6)
    );
    let big = &s.policies["big"].counters;
    assert_eq!((big.evaluated, big.allowed, big.rejected), (3, 2, 0));
}

#[test]
fn the_store_round_trips_through_its_snapshot_bytes() {
    let mut s = PolicyStore::default();
    s.apply(&put("q", 10), 1).unwrap();
    s.admit(&shard(9, 2), 2).unwrap_err();
    let back = PolicyStore::from_bytes(&s.to_bytes()).unwrap();
    assert_eq!(back, s);
    assert_eq!(back.checksum(), s.checksum());
    assert!(PolicyStore::from_bytes(b"{").is_err());
}

fn arb_command() -> impl Strategy<Value = (PolicyCommand, Option<(u64, u64)>)> {
    (
        0..4u8,
        prop::sample::select(vec!["a", "b", "c"]),
        1..50u64,
        prop::option::of(0..14u64),
        0..2_000u64,
        any::<bool>(),
        (0..60u64, 0..5u64),
    )
        .prop_map(|(op, name, max, expected, stamp, resource, write)| {
            let op = [
                PolicyOp::Put,
                PolicyOp::Delete,
                PolicyOp::Restore,
                PolicyOp::Put,
            ][op as usize];
            let mut c = cmd(op, name, (op == PolicyOp::Put).then_some(max));
            c.restore = (op == PolicyOp::Restore).then_some(max % 14);
            c.expected_version = expected.filter(|_| max % 3 == 0);
            // Leaders with clocks that disagree: stamps go back and forth.
            c.stamp_ms = stamp;
            c.source = if resource {
                Source::Resource
            } else {
                Source::Api
            };
            (c, (max % 4 == 0).then_some(write))
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// One log applied on three replicas: one straight through, one that restarts from its
    /// snapshot bytes every few entries, one that installs the first one's snapshot midway.
    /// All end identical, the clock never goes back, and the version invariants hold.
    #[test]
    fn replicas_applying_one_log_agree(log in prop::collection::vec(arb_command(), 1..80), cut in 0..80usize) {
        let mut a = PolicyStore::default();
        let mut b = PolicyStore::default();
        let mut c = PolicyStore::default();
        let mut max_stamp = 0;
        for (i, (cmd, write)) in log.iter().enumerate() {
            let index = i as u64 + 1;
            let clock_before = a.clock_ms;
            for s in [&mut a, &mut b, &mut c] {
                let r = s.apply(cmd, index);
                if let Some((live, adds)) = write {
                    let _ = s.admit(&shard(*live, *adds), index);
                }
                let _ = r;
            }
            max_stamp = max_stamp.max(cmd.stamp_ms);
            prop_assert!(a.clock_ms >= clock_before);
            prop_assert_eq!(a.clock_ms, max_stamp);
            if i % 7 == 3 {
                b = PolicyStore::from_bytes(&b.to_bytes()).unwrap();
            }
            if i == cut {
                c = PolicyStore::from_bytes(&a.to_bytes()).unwrap();
            }
        }
        prop_assert_eq!(a.checksum(), b.checksum());
        prop_assert_eq!(a.checksum(), c.checksum());
        prop_assert_eq!(&a, &b);
        for h in a.policies.values() {
            prop_assert!(h.versions.len() <= KEEP_VERSIONS && !h.versions.is_empty());
            prop_assert!(h.versions.windows(2).all(|w| w[0].version < w[1].version));
            prop_assert_eq!(h.current().map(|v| v.version), Some(h.latest));
        }
    }
}
