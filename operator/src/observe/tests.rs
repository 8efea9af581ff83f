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

#[test]
fn crash_loops_are_described() {
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    };
    let terminated = |code: i32, message: &str| ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code: code,
            reason: Some("Error".into()),
            message: Some(message.into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut c = ContainerStatus {
        name: "node".into(),
        restart_count: 2,
        state: Some(ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some("CrashLoopBackOff".into()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        last_state: Some(terminated(1, "line one\nbad image\n")),
        ..Default::default()
    };
    assert_eq!(
        crash(&c, false).as_deref(),
        Some("CrashLoopBackOff, 2 restarts, last exit code 1 (Error): line one | bad image")
    );
    // Started again between back-offs, not ready: still crash-looping.
    c.state = Some(ContainerState {
        running: Some(ContainerStateRunning::default()),
        ..Default::default()
    });
    assert_eq!(
        crash(&c, false).as_deref(),
        Some("2 restarts, last exit code 1 (Error): line one | bad image")
    );
    // Ready again, or never restarted, or the last run ended cleanly: not a crash loop.
    assert_eq!(crash(&c, true), None);
    c.last_state = Some(terminated(0, ""));
    assert_eq!(crash(&c, false), None);
    // A long message keeps its end.
    c.last_state = Some(terminated(1, &format!("{}END", "x".repeat(1000))));
    let d = crash(&c, false).unwrap();
    assert!(
        d.ends_with("xxEND") && d.contains(": ...x") && d.len() < 400,
        "{d}"
    );
}

#[test]
fn drift_sentence_is_cut_out_of_the_log_tail() {
    let tail = "{\"level\":\"INFO\",\"fields\":{\"message\":\"opening /data\"}}\n\
                Error: opening the node\n\nCaused by:\n    structural config drift: the data in \
                /data was built with dimension=8; the node is configured with dimension=16. \
                Structural fields cannot change on existing data: restore the original values \
                or create a new index\n";
    assert_eq!(
        drift_sentence(tail).as_deref(),
        Some(
            "structural config drift: the data in /data was built with dimension=8; the node is \
             configured with dimension=16. Structural fields cannot change on existing data: \
             restore the original values or create a new index"
        )
    );
    let json = "{\"fields\":{\"error\":\"structural config drift: the data in /data was built \
                with m=16; the node is configured with m=32\"}}";
    assert_eq!(
        drift_sentence(json).as_deref(),
        Some(
            "structural config drift: the data in /data was built with m=16; the node is \
             configured with m=32"
        )
    );
    assert_eq!(drift_sentence("Error: bind: address in use"), None);
}
