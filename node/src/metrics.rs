//! Prometheus metrics of a node. Engine and Raft gauges are refreshed at scrape time; counters
//! (requests, applied entries, leader changes) as things happen.

use std::collections::BTreeMap;

use prometheus::Encoder;
use prometheus::Histogram;
use prometheus::HistogramOpts;
use prometheus::HistogramVec;
use prometheus::IntCounter;
use prometheus::IntCounterVec;
use prometheus::IntGauge;
use prometheus::IntGaugeVec;
use prometheus::Opts;
use prometheus::Registry;
use prometheus::TextEncoder;

use crate::engine::Engine;

/// The Raft state a scrape reports (taken from openraft's metrics by the node).
#[derive(Debug, Clone, Default)]
pub struct RaftGauges {
    /// See [`role_code`].
    pub role: i64,
    pub term: u64,
    pub leader: Option<u64>,
    pub last_log_index: u64,
    pub committed_index: u64,
    pub applied_index: u64,
    pub snapshot_index: u64,
    pub purged_index: u64,
    /// Leader only: entries each follower/learner is behind the leader's last log entry.
    pub replication_lag: BTreeMap<u64, u64>,
    /// Bytes of the Raft log (WAL chunk files) on disk.
    pub log_bytes: u64,
    /// Seconds since the newest snapshot was taken (None: no snapshot).
    pub snapshot_age_secs: Option<u64>,
    /// Bytes of the newest snapshot on disk (None: no snapshot).
    pub snapshot_bytes: Option<u64>,
    /// Snapshots that failed to load and were set aside (`corrupt-*` dirs on disk).
    pub snapshots_set_aside: u64,
    /// The data volume (None: it could not be asked).
    pub volume: Option<crate::volume::Sample>,
}

/// `kindex_raft_role` values.
pub fn role_code(role: &str) -> i64 {
    match role {
        "learner" => 0,
        "follower" => 1,
        "candidate" => 2,
        "leader" => 3,
        _ => 4, // shutdown
    }
}

pub struct Metrics {
    registry: Registry,
    pub requests: HistogramVec,
    /// Coordinator calls to another shard's replicas, by shard, operation and outcome: `ok`;
    /// `retried`: that replica failed transiently (another, or a retry, follows); `error`: a
    /// definite error; `failed`: no replica of the shard answered, the request reports it.
    pub shard_calls: IntCounterVec,
    pub snapshot_duration: Histogram,
    pub snapshot_bytes: IntGauge,
    snapshot_age: IntGauge,
    snapshots_set_aside: IntGauge,
    /// Snapshots fetched from a peer at start (the local log was purged past the newest
    /// snapshot that loads).
    pub snapshots_fetched: IntCounter,
    vectors_live: IntGauge,
    tombstones: IntGauge,
    search_exact_fallbacks: IntCounter,
    /// Points reads here did not return because a retention policy expired them (node-local;
    /// the replicated `pruned` counter is in `kindex_policy`).
    retention_hidden: IntCounter,
    queue_depth: IntGauge,
    queue_capacity: IntGauge,
    indexing_lag_ms: IntGauge,
    last_batch_ms: IntGauge,
    /// Normal (write) entries applied to the engine.
    pub raft_applied_entries: IntCounter,
    /// Times this node saw a new leader.
    pub raft_leader_changes: IntCounter,
    raft_role: IntGauge,
    raft_term: IntGauge,
    raft_has_leader: IntGauge,
    raft_last_log_index: IntGauge,
    raft_committed_index: IntGauge,
    raft_applied_index: IntGauge,
    raft_snapshot_index: IntGauge,
    raft_purged_index: IntGauge,
    raft_replication_lag: IntGaugeVec,
    raft_log_bytes: IntGauge,
    volume_free_bytes: IntGauge,
    volume_reserve_bytes: IntGauge,
    volume_full: IntGauge,
    /// Divergence guard: comparisons of this replica's apply digest with the leader's, by
    /// outcome (`equal`, `diverged`, `incomparable`, `error`).
    pub digest_checks: IntCounterVec,
    /// 1 once this replica found it applied something else than the leader (not ready then).
    pub diverged: IntGauge,
    /// Writes this node refused before proposing them because a schema or quota policy
    /// refuses them (node-local).
    pub policy_precheck_rejections: IntCounter,
    /// Searches this node refused because of a searchDefaults policy (node-local).
    pub policy_search_refusals: IntCounter,
    /// The replicated counters of each policy (`evaluated`, `allowed`, `rejected`) and its
    /// newest version (`version`), as applied by this replica.
    policy_state: IntGaugeVec,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    r.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    register(r, IntGauge::new(name, help).expect("valid metric name"))
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    register(r, IntCounter::new(name, help).expect("valid metric name"))
}

/// Peer mTLS counters (`crate::tls`): process-wide, because TLS is set up before any node
/// (and its registry) exists; every node's registry exports them.
struct PeerTlsCounters {
    reloads: IntCounter,
    refused: IntCounter,
    handshake_failures: IntCounter,
}

static PEER_TLS: std::sync::LazyLock<PeerTlsCounters> = std::sync::LazyLock::new(|| {
    let c = |name: &str, help: &str| IntCounter::new(name, help).expect("valid metric name");
    PeerTlsCounters {
        reloads: c(
            "kindex_peer_tls_reloads_total",
            "Times a changed peer TLS directory (certificate, key, CAs) was loaded without a restart",
        ),
        refused: c(
            "kindex_peer_tls_refused_certificates_total",
            "Peer client certificates refused (not from a trusted CA, expired, malformed)",
        ),
        handshake_failures: c(
            "kindex_peer_tls_handshake_failures_total",
            "Incoming peer TLS handshakes that failed or timed out (no, or a refused, client certificate; not TLS)",
        ),
    }
});

pub fn peer_tls_reloads() -> &'static IntCounter {
    &PEER_TLS.reloads
}

pub fn peer_tls_refused() -> &'static IntCounter {
    &PEER_TLS.refused
}

pub fn peer_tls_handshake_failures() -> &'static IntCounter {
    &PEER_TLS.handshake_failures
}

/// Client TLS counters (`--client-tls-dir`), process-wide like [`PeerTlsCounters`].
struct ClientTlsCounters {
    reloads: IntCounter,
    handshake_failures: IntCounter,
}

static CLIENT_TLS: std::sync::LazyLock<ClientTlsCounters> = std::sync::LazyLock::new(|| {
    let c = |name: &str, help: &str| IntCounter::new(name, help).expect("valid metric name");
    ClientTlsCounters {
        reloads: c(
            "kindex_client_tls_reloads_total",
            "Times a changed client TLS directory (certificate, key) was loaded without a restart",
        ),
        handshake_failures: c(
            "kindex_client_tls_handshake_failures_total",
            "Incoming TLS handshakes on the client ports (gRPC, HTTP) that failed or timed out (e.g. a plaintext client)",
        ),
    }
});

pub fn client_tls_reloads() -> &'static IntCounter {
    &CLIENT_TLS.reloads
}

pub fn client_tls_handshake_failures() -> &'static IntCounter {
    &CLIENT_TLS.handshake_failures
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let r = &registry;
        register(r, PEER_TLS.reloads.clone());
        register(r, PEER_TLS.refused.clone());
        register(r, PEER_TLS.handshake_failures.clone());
        register(r, CLIENT_TLS.reloads.clone());
        register(r, CLIENT_TLS.handshake_failures.clone());
        let requests = register(
            r,
            HistogramVec::new(
                HistogramOpts::new(
                    "kindex_request_duration_seconds",
                    "Request latency by API and method",
                )
                .buckets(vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    1.0, 5.0,
                ]),
                &["api", "method", "code"],
            )
            .expect("valid histogram"),
        );
        let shard_calls = register(
            r,
            IntCounterVec::new(
                Opts::new(
                    "kindex_coordinator_shard_calls_total",
                    "Calls the coordinator made to other shards, by outcome",
                ),
                &["shard", "op", "outcome"],
            )
            .expect("valid counter"),
        );
        let snapshot_duration = register(
            r,
            Histogram::with_opts(
                HistogramOpts::new(
                    "kindex_snapshot_duration_seconds",
                    "Time to write a snapshot",
                )
                .buckets(vec![0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0]),
            )
            .expect("valid histogram"),
        );
        let raft_replication_lag = register(
            r,
            IntGaugeVec::new(
                Opts::new(
                    "kindex_raft_replication_lag_entries",
                    "Leader only: log entries each follower is behind the leader",
                ),
                &["follower"],
            )
            .expect("valid gauge vec"),
        );
        let digest_checks = register(
            r,
            IntCounterVec::new(
                Opts::new(
                    "kindex_raft_digest_checks_total",
                    "Comparisons of this replica's apply digest with the leader's, by outcome",
                ),
                &["outcome"],
            )
            .expect("valid counter"),
        );
        let policy_state = register(
            r,
            IntGaugeVec::new(
                Opts::new(
                    "kindex_policy",
                    "Replicated policy counters (evaluated, allowed, rejected writes; pruned points) and newest version, by policy",
                ),
                &["policy", "value"],
            )
            .expect("valid gauge vec"),
        );
        Metrics {
            digest_checks,
            policy_state,
            policy_precheck_rejections: counter(
                r,
                "kindex_policy_precheck_rejections_total",
                "Writes refused by this node before proposing them because a schema or quota policy refuses them",
            ),
            policy_search_refusals: counter(
                r,
                "kindex_policy_search_refusals_total",
                "Searches this node refused because of a searchDefaults policy (k over its cap, a required filter field missing)",
            ),
            diverged: gauge(
                r,
                "kindex_raft_diverged",
                "1 if this replica applied something else than the leader at some log index",
            ),
            shard_calls,
            snapshot_bytes: gauge(r, "kindex_snapshot_bytes", "Size of the last snapshot"),
            snapshot_age: gauge(
                r,
                "kindex_snapshot_age_seconds",
                "Seconds since the newest snapshot was taken (-1: none)",
            ),
            snapshots_set_aside: gauge(
                r,
                "kindex_snapshots_set_aside",
                "Snapshots that failed to load and were set aside as corrupt-* (remove them once inspected)",
            ),
            snapshots_fetched: counter(
                r,
                "kindex_snapshots_fetched_total",
                "Snapshots fetched from a peer at start because the local log was purged past the newest snapshot that loads",
            ),
            vectors_live: gauge(r, "kindex_vectors", "Live vectors on this replica"),
            retention_hidden: counter(
                r,
                "kindex_retention_hidden_total",
                "Points reads on this node did not return (search candidates, gets) because a retention policy expired them; the sweep removes them",
            ),
            search_exact_fallbacks: counter(
                r,
                "kindex_search_exact_fallbacks_total",
                "Searches answered by an exact scan because the graph found fewer than k matches (selective filters)",
            ),
            tombstones: gauge(
                r,
                "kindex_tombstones",
                "Deleted vectors still linked in the graph",
            ),
            queue_depth: gauge(
                r,
                "kindex_index_queue_depth",
                "Applied vectors waiting to be indexed",
            ),
            queue_capacity: gauge(
                r,
                "kindex_index_queue_capacity",
                "Queue capacity before writes wait",
            ),
            indexing_lag_ms: gauge(
                r,
                "kindex_indexing_lag_milliseconds",
                "Age of the oldest queued vector",
            ),
            last_batch_ms: gauge(
                r,
                "kindex_indexing_last_batch_milliseconds",
                "Duration of the last indexing batch",
            ),
            raft_applied_entries: counter(
                r,
                "kindex_raft_applied_entries_total",
                "Write entries applied to the engine (rate = apply rate)",
            ),
            raft_leader_changes: counter(
                r,
                "kindex_raft_leader_changes_total",
                "Times this node saw a new leader",
            ),
            raft_role: gauge(
                r,
                "kindex_raft_role",
                "Raft role: 0 learner, 1 follower, 2 candidate, 3 leader, 4 shutdown",
            ),
            raft_term: gauge(r, "kindex_raft_term", "Current Raft term"),
            raft_has_leader: gauge(r, "kindex_raft_has_leader", "1 if this node knows a leader"),
            raft_last_log_index: gauge(
                r,
                "kindex_raft_last_log_index",
                "Index of the last entry in the local log",
            ),
            raft_committed_index: gauge(
                r,
                "kindex_raft_committed_index",
                "Highest log index known committed",
            ),
            raft_applied_index: gauge(r, "kindex_raft_applied_index", "Highest log index applied"),
            raft_snapshot_index: gauge(
                r,
                "kindex_raft_snapshot_index",
                "Log index of the newest snapshot",
            ),
            raft_purged_index: gauge(
                r,
                "kindex_raft_purged_index",
                "Highest log index purged from the log",
            ),
            raft_log_bytes: gauge(r, "kindex_raft_log_bytes", "Bytes of the Raft log on disk"),
            volume_free_bytes: gauge(
                r,
                "kindex_volume_free_bytes",
                "Bytes still free on the data volume (statvfs f_bavail)",
            ),
            volume_reserve_bytes: gauge(
                r,
                "kindex_volume_reserve_bytes",
                "Free space the node keeps on its data volume (--volume-reserve-bytes)",
            ),
            volume_full: gauge(
                r,
                "kindex_volume_full",
                "1 while the data volume is below its reserve: writes, appends and snapshots refused",
            ),
            raft_replication_lag,
            requests,
            snapshot_duration,
            registry,
        }
    }

    /// Sets the policy gauges from the store this replica applied.
    pub fn set_policies(&self, store: &crate::policy::PolicyStore) {
        self.policy_state.reset();
        for (name, h) in &store.policies {
            let c = &h.counters;
            for (value, n) in [
                ("evaluated", c.evaluated),
                ("allowed", c.allowed),
                ("rejected", c.rejected),
                ("pruned", c.pruned),
                ("version", h.latest),
                ("active", u64::from(h.active().is_some())),
            ] {
                self.policy_state
                    .with_label_values(&[name.as_str(), value])
                    .set(n as i64);
            }
        }
    }

    /// Prometheus text exposition, with engine (and Raft) gauges refreshed.
    pub fn render(&self, engine: &Engine, raft: Option<&RaftGauges>) -> String {
        let s = engine.stats();
        self.vectors_live.set(s.live as i64);
        self.tombstones.set(s.tombstoned as i64);
        // The engine keeps the total; the counter catches up to it.
        let seen = self.retention_hidden.get();
        self.retention_hidden.inc_by(s.hidden.saturating_sub(seen));
        let seen = self.search_exact_fallbacks.get();
        self.search_exact_fallbacks
            .inc_by(s.exact_fallbacks.saturating_sub(seen));
        self.queue_depth.set(s.queued as i64);
        self.queue_capacity.set(s.queue_capacity as i64);
        self.indexing_lag_ms.set(s.indexing_lag_ms as i64);
        self.last_batch_ms.set(s.last_batch_ms as i64);
        if let Some(r) = raft {
            self.raft_role.set(r.role);
            self.raft_term.set(r.term as i64);
            self.raft_has_leader.set(i64::from(r.leader.is_some()));
            self.raft_last_log_index.set(r.last_log_index as i64);
            self.raft_committed_index.set(r.committed_index as i64);
            self.raft_applied_index.set(r.applied_index as i64);
            self.raft_snapshot_index.set(r.snapshot_index as i64);
            self.raft_purged_index.set(r.purged_index as i64);
            self.raft_log_bytes.set(r.log_bytes as i64);
            self.snapshot_age
                .set(r.snapshot_age_secs.map_or(-1, |a| a as i64));
            if let Some(b) = r.snapshot_bytes {
                self.snapshot_bytes.set(b as i64);
            }
            self.snapshots_set_aside.set(r.snapshots_set_aside as i64);
            if let Some(v) = r.volume {
                self.volume_free_bytes.set(v.free as i64);
                self.volume_reserve_bytes.set(v.reserve as i64);
                self.volume_full.set(i64::from(v.full()));
            }
            // Only current followers: a removed member's series disappears.
            self.raft_replication_lag.reset();
            for (id, lag) in &r.replication_lag {
                self.raft_replication_lag
                    .with_label_values(&[&id.to_string()])
                    .set(*lag as i64);
            }
        }
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}
