use super::*;

#[test]
fn pod_names_parse() {
    assert_eq!(parse_pod_name("idx", "idx-s2-10"), Some((2, 10)));
    assert_eq!(parse_pod_name("idx", "idx-s-1"), None);
    assert_eq!(parse_pod_name("idx", "other-s0-0"), None);
    // "idx-s1" is a prefix of "idx-s1-s0-0" pods of an index named "idx-s1".
    assert_eq!(parse_pod_name("idx", "idx-s1-s0-0"), None);
}

#[test]
fn cluster_dns_addresses() {
    let r = PodRef {
        namespace: "prod".into(),
        index: "products".into(),
        shard: 1,
        ordinal: 2,
    };
    assert_eq!(
        ClusterDns.admin_endpoint(&r),
        "http://products-s1-2.products-s1-headless.prod.svc:7072"
    );
    assert_eq!(
        ClusterDns.raft_addr(&r),
        "products-s1-2.products-s1-headless.prod.svc:7071"
    );
    // Only for nodes from before the admin port (an upgrade in progress).
    assert_eq!(
        ClusterDns.pre_admin_port_endpoint(&r).as_deref(),
        Some("http://products-s1-2.products-s1-headless.prod.svc:7070")
    );
}

#[test]
fn tracker_forgets_old_deletions() {
    let t = DeletionTracker::default();
    let now = Timestamp::from_second(1_000_000).unwrap();
    t.record("ns", "a", now);
    t.record("ns", "b", Timestamp::from_second(10).unwrap());
    t.record("other", "c", now);
    let since = Timestamp::from_second(999_000).unwrap();
    assert_eq!(t.since("ns", since), BTreeSet::from(["a".to_owned()]));
}
