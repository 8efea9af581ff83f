//! Prometheus metrics of a node. Engine gauges are refreshed at scrape time.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntGauge, Registry, TextEncoder,
};

use crate::engine::Engine;

pub struct Metrics {
    registry: Registry,
    pub requests: HistogramVec,
    pub snapshot_duration: Histogram,
    pub snapshot_bytes: IntGauge,
    vectors_live: IntGauge,
    tombstones: IntGauge,
    queue_depth: IntGauge,
    queue_capacity: IntGauge,
    indexing_lag_ms: IntGauge,
    last_batch_ms: IntGauge,
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric name");
    r.register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = HistogramVec::new(
            HistogramOpts::new(
                "kindex_request_duration_seconds",
                "Request latency by API and method",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
                5.0,
            ]),
            &["api", "method", "code"],
        )
        .expect("valid histogram");
        registry
            .register(Box::new(requests.clone()))
            .expect("registered once");
        let snapshot_duration = Histogram::with_opts(
            HistogramOpts::new(
                "kindex_snapshot_duration_seconds",
                "Time to write a snapshot",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0]),
        )
        .expect("valid histogram");
        registry
            .register(Box::new(snapshot_duration.clone()))
            .expect("registered once");
        Metrics {
            snapshot_bytes: gauge(
                &registry,
                "kindex_snapshot_bytes",
                "Size of the last snapshot",
            ),
            vectors_live: gauge(&registry, "kindex_vectors", "Live vectors on this replica"),
            tombstones: gauge(
                &registry,
                "kindex_tombstones",
                "Deleted vectors still linked in the graph",
            ),
            queue_depth: gauge(
                &registry,
                "kindex_index_queue_depth",
                "Applied vectors waiting to be indexed",
            ),
            queue_capacity: gauge(
                &registry,
                "kindex_index_queue_capacity",
                "Queue capacity before writes wait",
            ),
            indexing_lag_ms: gauge(
                &registry,
                "kindex_indexing_lag_milliseconds",
                "Age of the oldest queued vector",
            ),
            last_batch_ms: gauge(
                &registry,
                "kindex_indexing_last_batch_milliseconds",
                "Duration of the last indexing batch",
            ),
            requests,
            snapshot_duration,
            registry,
        }
    }

    /// Prometheus text exposition, with engine gauges refreshed.
    pub fn render(&self, engine: &Engine) -> String {
        let s = engine.stats();
        self.vectors_live.set(s.live as i64);
        self.tombstones.set(s.tombstoned as i64);
        self.queue_depth.set(s.queued as i64);
        self.queue_capacity.set(s.queue_capacity as i64);
        self.indexing_lag_ms.set(s.indexing_lag_ms as i64);
        self.last_batch_ms.set(s.last_batch_ms as i64);
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}
