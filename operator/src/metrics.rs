//! Prometheus metrics of the operator, served on `/metrics`.

use prometheus::{Encoder, Histogram, HistogramOpts, IntCounterVec, Opts, Registry, TextEncoder};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Reconciles by result (`ok`, `error`; an invalid spec is reported in status, `ok`).
    pub reconciles: IntCounterVec,
    /// Reconcile errors by step and variant (`ReconcileError::{step, variant}`).
    pub errors: IntCounterVec,
    pub duration: Histogram,
    /// Membership and rollout steps by action and result.
    pub actions: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new(
                "kindex_operator_reconciles_total",
                "Reconciles of VectorIndex objects, by result.",
            ),
            &["result"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "kindex_operator_reconcile_errors_total",
                "Failed reconciles, by pipeline step and error variant.",
            ),
            &["step", "error"],
        )?;
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "kindex_operator_reconcile_duration_seconds",
                "Time spent in one reconcile.",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
        )?;
        let actions = IntCounterVec::new(
            Opts::new(
                "kindex_operator_actions_total",
                "Membership and rollout steps taken, by action and result.",
            ),
            &["action", "result"],
        )?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(actions.clone()))?;
        Ok(Self {
            registry,
            reconciles,
            errors,
            duration,
            actions,
        })
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render() {
        let m = Metrics::new().unwrap();
        m.reconciles.with_label_values(&["ok"]).inc();
        m.duration.observe(0.2);
        let text = m.render();
        assert!(text.contains("kindex_operator_reconciles_total{result=\"ok\"} 1"));
        assert!(text.contains("kindex_operator_reconcile_duration_seconds_bucket"));
    }
}
