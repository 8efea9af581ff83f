//! A per-tenant quota on a 3-replica shard (issue 16): writers for two tenants race through
//! every replica; each tenant ends with exactly its limit on every replica, the refusals name
//! the tenant, and the payload-bytes usage agrees everywhere.

use std::sync::Arc;

use super::policies::{change, policies_converge, put};
use super::*;

const LIMIT: u64 = 40;

/// Writer `w` for `tenant`: single new points through node `w % 3` then round-robin on other
/// errors, `n` ids. Returns (acknowledged ids, refused by the quota).
fn spawn_tenant_writer(
    c: &Cluster,
    w: u64,
    tenant: &'static str,
    n: u64,
) -> tokio::task::JoinHandle<(Vec<String>, u64)> {
    let urls: Vec<String> = c.nodes.iter().map(Proc::grpc_url).collect();
    tokio::spawn(async move {
        let (mut acked, mut refused) = (Vec::new(), 0);
        for i in 0..n {
            let id = format!("{tenant}-{w}-{i}");
            let mut at = w as usize;
            for attempt in 0.. {
                assert!(attempt < 50, "{id} never answered");
                let mut client = PointsClient::new(
                    tonic::transport::Endpoint::from_shared(urls[at % urls.len()].clone())
                        .unwrap()
                        .connect_lazy(),
                );
                let mut req = tonic::Request::new(pb::UpsertRequest {
                    index: String::new(),
                    points: vec![pb::Point {
                        id: id.clone(),
                        vector: vec![w as f32, i as f32, 1.0, 2.0],
                        payload_json: Some(format!(r#"{{"tenant":"{tenant}"}}"#)),
                    }],
                });
                req.set_timeout(Duration::from_secs(10));
                match client.upsert(req).await {
                    Ok(_) => {
                        acked.push(id.clone());
                        break;
                    }
                    Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                        assert!(
                            s.message().contains(&format!("for tenant \"{tenant}\"")),
                            "the refusal names the tenant: {s:?}"
                        );
                        refused += 1;
                        break;
                    }
                    Err(_) => {
                        at += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
        (acked, refused)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_per_tenant_quota_holds_per_tenant_on_every_replica() {
    let _serial = serial().await;
    let c = cluster(3, 3, &[]);
    with_timeout(Duration::from_secs(180), async {
        wait_answering(&c, &[0, 1, 2]).await;
        initialize(&c, 0, &[0, 1, 2]).await;
        let leader = wait_leader(&c, None).await;
        let quota = format!(r#"{{"kind":"quota","tenantField":"tenant","maxVectors":{LIMIT}}}"#);
        change(&c, (leader + 1) % 3, put("per-tenant", &quota))
            .await
            .unwrap();
        // Four writers per tenant, 20 ids each: 80 tries for 40 places per tenant.
        let c = Arc::new(c);
        let writers: Vec<_> = (0..8)
            .map(|w| spawn_tenant_writer(&c, w, if w % 2 == 0 { "a" } else { "b" }, 20))
            .collect();
        let mut acked: Vec<String> = Vec::new();
        let mut refused = 0;
        for w in writers {
            let (a, r) = w.await.unwrap();
            acked.extend(a);
            refused += r;
        }
        for t in ["a", "b"] {
            let n = acked
                .iter()
                .filter(|id| id.starts_with(&format!("{t}-")))
                .count();
            assert_eq!(n as u64, LIMIT, "tenant {t}: acknowledged");
        }
        assert_eq!(refused, 160 - 2 * LIMIT);
        let leader = wait_leader(&c, None).await;
        let w = upsert(c.node(0, leader), batch("free", 0, 5))
            .await
            .unwrap();
        let store = policies_converge(&c, token_index(&w)).await;
        let counters = &store["policies"]["per-tenant"]["counters"];
        for id in c.running(0) {
            let p = c.node(0, id);
            assert_eq!(present(p, &acked).await, acked.len(), "node {id}");
            // Points without the tenant field are not counted: "free" went in.
            assert_eq!(
                p.status().await.unwrap().vectors_live,
                2 * LIMIT + 5,
                "node {id}"
            );
        }
        eprintln!(
            "per-tenant quota: {} acknowledged, {refused} refused; counters {counters}",
            acked.len()
        );
    })
    .await;
}
