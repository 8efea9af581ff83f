//! Where the other shards' replicas are, and which of them leads.
//!
//! Each remote shard starts from seed gRPC addresses (`--shard-addrs`, or the rendered
//! `--shard-addr-template`: in Kubernetes the shard's headless Service, which resolves to its
//! pods). The coordinator learns the shard's members and leader from the Admin `Status` of
//! any replica that answers, refreshes that every few seconds and after failures, and takes
//! leader hints from write responses.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kindex_proto as pb;
use parking_lot::RwLock;
use tonic::transport::Channel;

use crate::channels::Channels;

use crate::node::member_grpc_addr;

/// Per shard: gRPC seed addresses of its replicas.
pub type ShardSeeds = BTreeMap<u32, Vec<String>>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    #[error("--shard-addrs: {0}")]
    Parse(String),
    #[error(
        "this index has {shards} shards but no address is known for shard(s) {missing:?}; \
         pass --shard-addrs or --shard-addr-template"
    )]
    Missing { shards: u32, missing: Vec<u32> },
    #[error("--shard-addrs names shard {shard}, but the index has only {shards} shards")]
    OutOfRange { shard: u32, shards: u32 },
}

/// `0=a:7070,b:7070;1=c:7070` → {0: [a, b], 1: [c]}.
pub fn parse_shard_addrs(s: &str) -> Result<ShardSeeds, TopologyError> {
    let err = |m: String| TopologyError::Parse(m);
    let mut out = ShardSeeds::new();
    for part in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (shard, addrs) = part
            .split_once('=')
            .ok_or_else(|| err(format!("{part:?} is not <shard>=<host:port>,...")))?;
        let shard: u32 = shard
            .trim()
            .parse()
            .map_err(|_| err(format!("shard {shard:?} is not a number")))?;
        let addrs: Vec<String> = addrs
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_string)
            .collect();
        if addrs.is_empty() {
            return Err(err(format!("shard {shard} has no address")));
        }
        if let Some(bad) = addrs.iter().find(|a| !a.contains(':')) {
            return Err(err(format!("shard {shard}: {bad:?} is not host:port")));
        }
        if out.insert(shard, addrs).is_some() {
            return Err(err(format!("shard {shard} is listed twice")));
        }
    }
    Ok(out)
}

/// One seed per shard from a template with `{shard}` (and `{index}`, `{namespace}`).
pub fn seeds_from_template(
    template: &str,
    shards: u32,
    index: &str,
    namespace: Option<&str>,
) -> Result<ShardSeeds, TopologyError> {
    if template.contains("{namespace}") && namespace.is_none() {
        return Err(TopologyError::Parse(
            "--shard-addr-template uses {namespace}; set --namespace".into(),
        ));
    }
    let seeds = (0..shards)
        .map(|s| {
            let a = template
                .replace("{shard}", &s.to_string())
                .replace("{index}", index)
                .replace("{namespace}", namespace.unwrap_or_default());
            (s, vec![a])
        })
        .collect::<ShardSeeds>();
    if let Some(a) = seeds.values().flatten().find(|a| a.contains('{')) {
        return Err(TopologyError::Parse(format!(
            "--shard-addr-template: unknown placeholder left in {a:?}"
        )));
    }
    Ok(seeds)
}

/// Checks that every shard other than `local` can be reached somehow.
pub fn check_complete(seeds: &ShardSeeds, shards: u32, local: u32) -> Result<(), TopologyError> {
    if let Some(&shard) = seeds.keys().find(|s| **s >= shards) {
        return Err(TopologyError::OutOfRange { shard, shards });
    }
    let missing: Vec<u32> = (0..shards)
        .filter(|s| *s != local && seeds.get(s).is_none_or(Vec::is_empty))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(TopologyError::Missing { shards, missing })
    }
}

#[derive(Debug, Clone, Default)]
struct Route {
    /// Replicas' gRPC addresses, learned from `Status` (empty until then).
    replicas: Vec<String>,
    leader: Option<String>,
    /// Rotates reads over replicas.
    cursor: usize,
}

/// The known shape of the other shards. Cheap to query; refreshed in the background.
pub struct Topology {
    seeds: ShardSeeds,
    routes: RwLock<BTreeMap<u32, Route>>,
    channels: Arc<Channels>,
    default_grpc_port: u16,
}

/// How long one `Status` probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

impl Topology {
    /// `channels`: the node's channel cache.
    pub fn new(seeds: ShardSeeds, default_grpc_port: u16, channels: Arc<Channels>) -> Topology {
        Topology {
            routes: RwLock::new(seeds.keys().map(|s| (*s, Route::default())).collect()),
            seeds,
            channels,
            default_grpc_port,
        }
    }

    pub fn shards(&self) -> impl Iterator<Item = u32> + '_ {
        self.seeds.keys().copied()
    }

    /// A lazily connecting, cached channel to `addr` (`host:port`).
    pub fn channel(&self, addr: &str) -> Result<Channel, tonic::Status> {
        self.channels
            .get(addr)
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))
    }

    /// Addresses to try for `shard`, best first: the leader (when `leader_first`) then the
    /// known replicas starting at a rotating position, then seeds not among them.
    pub fn candidates(&self, shard: u32, leader_first: bool) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut push = |a: &String| {
            if !out.contains(a) {
                out.push(a.clone());
            }
        };
        {
            let mut routes = self.routes.write();
            if let Some(r) = routes.get_mut(&shard) {
                if leader_first && let Some(l) = &r.leader {
                    push(l);
                }
                let n = r.replicas.len();
                if n > 0 {
                    r.cursor = r.cursor.wrapping_add(1);
                    for i in 0..n {
                        push(&r.replicas[(r.cursor + i) % n]);
                    }
                }
            }
        }
        for a in self.seeds.get(&shard).into_iter().flatten() {
            push(a);
        }
        out
    }

    pub fn leader(&self, shard: u32) -> Option<String> {
        self.routes
            .read()
            .get(&shard)
            .and_then(|r| r.leader.clone())
    }

    pub fn set_leader(&self, shard: u32, leader: Option<String>) {
        if let Some(r) = self.routes.write().get_mut(&shard) {
            r.leader = leader;
        }
    }

    /// Learns a shard's members and leader from one replica's `Status`.
    pub fn learn(&self, shard: u32, status: &pb::StatusResponse) {
        let addrs: BTreeMap<u64, String> = status
            .members
            .iter()
            .map(|m| (m.node_id, member_grpc_addr(&m.addr, self.default_grpc_port)))
            .collect();
        if let Some(r) = self.routes.write().get_mut(&shard) {
            if !addrs.is_empty() {
                r.replicas = addrs.values().cloned().collect();
            }
            r.leader = status.leader_id.and_then(|id| addrs.get(&id).cloned());
        }
    }

    /// Asks the shard's replicas (leader first) for `Status` until one answers with a leader.
    /// Returns whether anything was learned.
    pub async fn refresh(&self, shard: u32) -> bool {
        let mut learned = false;
        for addr in self.candidates(shard, true) {
            let Ok(channel) = self.channel(&addr) else {
                continue;
            };
            let mut client = pb::admin_client::AdminClient::new(channel);
            let mut req = tonic::Request::new(pb::StatusRequest {});
            req.set_timeout(PROBE_TIMEOUT);
            let Ok(Ok(resp)) = tokio::time::timeout(PROBE_TIMEOUT, client.status(req)).await else {
                continue;
            };
            let status = resp.into_inner();
            if status.shard != shard {
                tracing::warn!(
                    shard,
                    addr,
                    answered = status.shard,
                    "a replica listed for one shard serves another; check --shard-addrs"
                );
                continue;
            }
            self.learn(shard, &status);
            learned = true;
            if status.leader_id.is_some() {
                break;
            }
        }
        learned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_shard_addrs() {
        let s = parse_shard_addrs("0=a:1,b:2; 1=c:3").unwrap();
        assert_eq!(s[&0], ["a:1", "b:2"]);
        assert_eq!(s[&1], ["c:3"]);
        for bad in ["0", "x=a:1", "0=a", "0=", "0=a:1;0=b:1"] {
            assert!(parse_shard_addrs(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_complete(&s, 2, 0).is_ok());
        assert_eq!(
            check_complete(&s, 3, 0),
            Err(TopologyError::Missing {
                shards: 3,
                missing: vec![2]
            })
        );
        assert!(matches!(
            check_complete(&s, 1, 0),
            Err(TopologyError::OutOfRange { shard: 1, .. })
        ));
    }

    #[test]
    fn renders_the_template_per_shard() {
        let s = seeds_from_template(
            "{index}-s{shard}-headless.{namespace}.svc:7070",
            2,
            "docs",
            Some("ns"),
        )
        .unwrap();
        assert_eq!(s[&1], ["docs-s1-headless.ns.svc:7070"]);
        assert!(seeds_from_template("{index}-s{shard}.{namespace}:1", 2, "d", None).is_err());
        assert!(seeds_from_template("{pod}:1", 2, "d", None).is_err());
    }

    #[test]
    fn candidates_put_the_leader_first_and_rotate_replicas() {
        let t = Topology::new(
            ShardSeeds::from([(1, vec!["seed:7070".to_string()])]),
            7070,
            Arc::default(),
        );
        assert_eq!(t.candidates(1, true), ["seed:7070"]);
        t.learn(
            1,
            &pb::StatusResponse {
                shard: 1,
                leader_id: Some(2),
                members: (0..3)
                    .map(|i| pb::Member {
                        node_id: i,
                        addr: format!("h{i}:7071"),
                        voter: true,
                    })
                    .collect(),
                ..Default::default()
            },
        );
        assert_eq!(t.leader(1).as_deref(), Some("h2:7070"));
        let c = t.candidates(1, true);
        assert_eq!(c[0], "h2:7070");
        assert_eq!(c.len(), 4, "3 replicas + the seed: {c:?}");
        let first: Vec<String> = (0..3).map(|_| t.candidates(1, false)[0].clone()).collect();
        let distinct: std::collections::BTreeSet<_> = first.iter().collect();
        assert_eq!(distinct.len(), 3, "reads rotate over replicas: {first:?}");
        t.set_leader(1, None);
        assert!(t.leader(1).is_none());
        assert!(t.candidates(7, true).is_empty());
    }
}
