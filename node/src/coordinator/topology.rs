//! Where the other shards' replicas are, and which of them leads.
//!
//! Each remote shard starts from seed gRPC addresses (`--shard-addrs`, or the rendered
//! `--shard-addr-template`: in Kubernetes the shard's headless Service, which resolves to its
//! pods). The coordinator learns the shard's members and leader from the Admin `Status` of
//! any replica that answers, refreshes that every few seconds and after failures, and takes
//! leader hints from write responses.
//!
//! `Status` is asked on the replicas' Admin port (7072), not on the data port: the data port
//! answers clients only (and, with API keys on, only clients holding a key, which this
//! background task has none of), and the Admin port is the internal one that mTLS will guard
//! (issue 18). A replica's admin address is the one its member address names
//! (`raft|grpc|admin`), else its host with this node's `--admin-port` (every replica of an
//! index listens on the same ports); a seed may name it as `grpc_host:port|admin_host:port`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kindex_proto as pb;
use parking_lot::RwLock;
use tonic::transport::Channel;

use crate::channels::Channels;

use crate::node::member_admin_addr;
use crate::node::member_grpc_addr;
use crate::node::with_port;

/// Per shard: gRPC seed addresses of its replicas (`host:port`, or `host:port|admin_host:port`
/// when the admin endpoint is not the same host with this node's admin port).
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
        if let Some(bad) = addrs
            .iter()
            .find(|a| a.split('|').count() > 2 || !a.split('|').all(|p| p.contains(':')))
        {
            return Err(err(format!(
                "shard {shard}: {bad:?} is not host:port (or grpc_host:port|admin_host:port)"
            )));
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

/// A seed `grpc` or `grpc|admin` as (gRPC address, Admin address).
fn split_seed(seed: &str, admin_port: u16) -> (String, String) {
    match seed.split_once('|') {
        Some((grpc, admin)) => (grpc.to_string(), admin.to_string()),
        None => (seed.to_string(), with_port(seed, admin_port)),
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
    /// gRPC addresses only (the admin part of a seed is in `admin_of`).
    seeds: ShardSeeds,
    routes: RwLock<BTreeMap<u32, Route>>,
    /// gRPC address of a replica → its Admin address (from seeds and learned members).
    admin_of: RwLock<BTreeMap<String, String>>,
    channels: Arc<Channels>,
    default_grpc_port: u16,
    default_admin_port: u16,
}

/// How long one `Status` probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

impl Topology {
    /// `channels`: the node's channel cache; `ports`: (gRPC, Admin) ports of replicas whose
    /// member address names neither.
    pub fn new(seeds: ShardSeeds, ports: (u16, u16), channels: Arc<Channels>) -> Topology {
        let (default_grpc_port, default_admin_port) = ports;
        let mut admin_of = BTreeMap::new();
        let seeds: ShardSeeds = seeds
            .into_iter()
            .map(|(shard, addrs)| {
                let grpc = addrs
                    .iter()
                    .map(|a| {
                        let (grpc, admin) = split_seed(a, default_admin_port);
                        admin_of.insert(grpc.clone(), admin);
                        grpc
                    })
                    .collect();
                (shard, grpc)
            })
            .collect();
        Topology {
            routes: RwLock::new(seeds.keys().map(|s| (*s, Route::default())).collect()),
            seeds,
            admin_of: RwLock::new(admin_of),
            channels,
            default_grpc_port,
            default_admin_port,
        }
    }

    /// The Admin address of a replica known by its gRPC address.
    pub fn admin_addr(&self, grpc: &str) -> String {
        self.admin_of
            .read()
            .get(grpc)
            .cloned()
            .unwrap_or_else(|| with_port(grpc, self.default_admin_port))
    }

    pub fn shards(&self) -> impl Iterator<Item = u32> + '_ {
        self.seeds.keys().copied()
    }

    /// A channel for `Points` calls to the replica whose client address is `grpc`: that
    /// address, or with peer mTLS on its internal (admin) port (see [`crate::tls`]).
    pub fn points_channel(&self, grpc: &str) -> Result<Channel, tonic::Status> {
        if self.channels.peer_tls() {
            self.channel(&self.admin_addr(grpc))
        } else {
            self.channel(grpc)
        }
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
        {
            let mut admin_of = self.admin_of.write();
            for m in &status.members {
                admin_of.insert(
                    member_grpc_addr(&m.addr, self.default_grpc_port),
                    member_admin_addr(&m.addr, self.default_admin_port),
                );
            }
        }
        if let Some(r) = self.routes.write().get_mut(&shard) {
            if !addrs.is_empty() {
                r.replicas = addrs.values().cloned().collect();
            }
            r.leader = status.leader_id.and_then(|id| addrs.get(&id).cloned());
        }
    }

    /// One `Status` call to `addr`, bounded by [`PROBE_TIMEOUT`].
    async fn status_at(&self, addr: &str) -> Option<pb::StatusResponse> {
        let channel = self.channel(addr).ok()?;
        let mut client = pb::admin_client::AdminClient::new(channel);
        let mut req = tonic::Request::new(pb::StatusRequest {});
        req.set_timeout(PROBE_TIMEOUT);
        match tokio::time::timeout(PROBE_TIMEOUT, client.status(req)).await {
            Ok(Ok(resp)) => Some(resp.into_inner()),
            _ => None,
        }
    }

    /// Asks the shard's replicas (leader first) for `Status`, on their Admin port, until one
    /// answers with a leader. Returns whether anything was learned.
    pub async fn refresh(&self, shard: u32) -> bool {
        let mut learned = false;
        for grpc in self.candidates(shard, true) {
            let addr = self.admin_addr(&grpc);
            let status = match self.status_at(&addr).await {
                Some(st) => st,
                // A replica of a release from before the admin port (v0.1.0, during a rolling
                // upgrade) serves Admin on its data port; never with peer mTLS (it has none).
                None if !self.channels.peer_tls() && addr != grpc => {
                    match self.status_at(&grpc).await {
                        Some(st) => st,
                        None => continue,
                    }
                }
                None => continue,
            };
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
        let s2 = parse_shard_addrs("1=h:17000|h:17002").unwrap();
        let t = Topology::new(s2, (7070, 7072), Arc::default());
        assert_eq!(t.candidates(1, false), ["h:17000"]);
        assert_eq!(t.admin_addr("h:17000"), "h:17002");
        for bad in [
            "0",
            "x=a:1",
            "0=a",
            "0=",
            "0=a:1;0=b:1",
            "0=a:1|b",
            "0=a:1|b:2|c:3",
        ] {
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
            (7070, 7072),
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
        // Status is asked on the admin port, derived or named by the member address.
        assert_eq!(t.admin_addr("seed:7070"), "seed:7072");
        assert_eq!(t.admin_addr("h1:7070"), "h1:7072");
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
