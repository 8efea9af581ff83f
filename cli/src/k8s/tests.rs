use super::*;

fn pod(name: &str, shard: u32, phase: &str, ready: bool) -> PodInfo {
    PodInfo {
        name: name.into(),
        shard: Some(shard),
        ordinal: ordinal_of(name),
        phase: phase.into(),
        ready,
        terminating: false,
        grpc_port: GRPC_PORT,
        admin_port: ADMIN_PORT,
    }
}

#[test]
fn ordinals_and_selector() {
    assert_eq!(ordinal_of("demo-s0-2"), Some(2));
    assert_eq!(ordinal_of("my-index-s12-10"), Some(10));
    assert_eq!(ordinal_of("demo"), None);
    assert_eq!(
        pod_selector("demo"),
        "app.kubernetes.io/name=kindex,app.kubernetes.io/instance=demo"
    );
    assert_eq!(
        local_url("127.0.0.1:40123".parse().unwrap()),
        "http://127.0.0.1:40123"
    );
}

#[test]
fn pod_info_reads_ready_condition_port_and_shard() {
    let p: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "demo-s1-2", "labels": {LABEL_SHARD: "1"}},
        "spec": {"containers": [{"name": "node", "ports": [
            {"name": "http", "containerPort": 7080},
            {"name": "grpc", "containerPort": 7171},
            {"name": "admin", "containerPort": 7173}
        ]}]},
        "status": {"phase": "Running", "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Ready", "status": "True"}
        ]}
    }))
    .unwrap();
    let i = PodInfo::from_pod(&p);
    assert_eq!(
        (i.shard, i.ordinal, i.grpc_port, i.ready, i.usable()),
        (Some(1), Some(2), 7171, true, true)
    );
    assert_eq!((i.port(Plane::Data), i.port(Plane::Admin)), (7171, 7173));
    let p: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "demo-s0-0", "deletionTimestamp": "2025-01-01T00:00:00Z"},
        "spec": {"containers": [{"name": "node"}]},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}]}
    }))
    .unwrap();
    let i = PodInfo::from_pod(&p);
    assert_eq!(i.grpc_port, GRPC_PORT, "default port");
    assert_eq!(i.admin_port, ADMIN_PORT, "default admin port");
    assert!(!i.ready && i.terminating && !i.usable() && !i.running());
    assert_eq!(i.state(), "Running, terminating");
    let empty = PodInfo::from_pod(&Pod::default());
    assert_eq!(empty.phase, "Unknown");
    assert!(!empty.usable());
}

#[test]
fn selection_prefers_ready_pods_spread_over_shards() {
    let pods = vec![
        pod("demo-s1-1", 1, "Running", true),
        pod("demo-s0-1", 0, "Running", true),
        pod("demo-s0-0", 0, "Running", false),
        pod("demo-s1-0", 1, "Running", true),
        pod("demo-s0-2", 0, "Pending", false),
    ];
    let names = |v: Vec<PodInfo>| v.into_iter().map(|p| p.name).collect::<Vec<_>>();
    let ready = select_pods("demo", "ns", None, &pods, Want::Ready).unwrap();
    assert_eq!(names(ready), ["demo-s1-0", "demo-s0-1", "demo-s1-1"]);
    let every = select_pods("demo", "ns", None, &pods, Want::Every).unwrap();
    assert_eq!(
        names(every),
        [
            "demo-s0-0",
            "demo-s1-0",
            "demo-s0-1",
            "demo-s1-1",
            "demo-s0-2"
        ]
    );
}

#[test]
fn no_ready_pod_names_each_pods_state() {
    let pods = vec![
        pod("demo-s0-1", 0, "Running", false),
        pod("demo-s0-0", 0, "Pending", false),
    ];
    let e = select_pods("demo", "prod", None, &pods, Want::Ready)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "no ready pod of index \"demo\" in namespace \"prod\": \
         demo-s0-0 Pending, demo-s0-1 Running, not ready"
    );
    // `status` still gets them (and reports them unreachable).
    assert_eq!(
        select_pods("demo", "prod", None, &pods, Want::Every)
            .unwrap()
            .len(),
        2
    );
    let e = select_pods("demo", "prod", Some("Creating"), &[], Want::Every)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("has no pods in namespace \"prod\" yet (phase Creating)")
            && e.contains("app.kubernetes.io/instance=demo"),
        "{e}"
    );
}

#[test]
fn forbidden_names_verb_and_resource() {
    let status: kube::core::Status = serde_json::from_value(serde_json::json!({
        "status": "Failure",
        "code": 403,
        "reason": "Forbidden",
        "message": "pods \"demo-s0-0\" is forbidden: User \"bob\" cannot create resource \"pods/portforward\""
    }))
    .unwrap();
    let e = api_error(
        kube::Error::Api(Box::new(status)),
        "create",
        "pods/portforward",
        "prod",
        "https://k:6443",
    )
    .to_string();
    assert!(
        e.starts_with("forbidden: you may not create pods/portforward in namespace \"prod\"")
            && e.contains("User \"bob\""),
        "{e}"
    );
    let status: kube::core::Status = serde_json::from_value(serde_json::json!({
        "status": "Failure", "code": 400, "reason": "BadRequest",
        "message": "pod demo-s0-0 does not have a host assigned"
    }))
    .unwrap();
    let e = api_error(
        kube::Error::Api(Box::new(status)),
        "create",
        "pods/portforward",
        "prod",
        "https://k:6443",
    )
    .to_string();
    assert!(e.contains("does not have a host assigned (400)"), "{e}");
}
