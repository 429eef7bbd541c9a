//! The extender's own metrics, in a registry of its own, served on `/metrics` after
//! drover's (the cache's `drover_*` metrics).

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry, TextEncoder,
};

use crate::verbs::Verb;

/// Per-verb latency and errors.
#[derive(Clone)]
pub struct ExtenderMetrics {
    registry: Registry,
    gangs_planned: IntCounter,
    /// `drover_extender_request_duration_seconds{verb}`: from the request's arrival to
    /// its answer, body reading included.
    pub duration: HistogramVec,
    /// `drover_extender_errors_total{verb,kind}`: calls answered with an error.
    pub errors: IntCounterVec,
}

impl ExtenderMetrics {
    /// Fresh metrics; `gangs_planned` is registered alongside.
    pub fn new(gangs_planned: IntCounter) -> Self {
        let registry = Registry::new();
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "drover_extender_request_duration_seconds",
                "Time to answer one kube-scheduler extender call, by verb",
            )
            .buckets(vec![
                0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                2.5, 5.0,
            ]),
            &["verb"],
        )
        .expect("valid metric");
        let errors = IntCounterVec::new(
            Opts::new(
                "drover_extender_errors_total",
                "Extender calls answered with an error, by verb and kind (malformed, missing_field, bad_object, unknown_nodes, too_large, timeout, read, not_ready, disabled, bind, internal)",
            ),
            &["verb", "kind"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(duration.clone()))
            .expect("registered once");
        registry
            .register(Box::new(errors.clone()))
            .expect("registered once");
        registry
            .register(Box::new(gangs_planned.clone()))
            .expect("registered once");
        // Every verb shows up from the start, so dashboards need no absent() guards.
        for v in Verb::ALL {
            duration.with_label_values(&[v.as_str()]);
        }
        ExtenderMetrics {
            registry,
            gangs_planned,
            duration,
            errors,
        }
    }

    /// The names of the extender's own metrics (for checks of dashboards and alerts).
    pub fn names(&self) -> Vec<String> {
        use prometheus::core::Collector;
        let collectors: [&dyn Collector; 3] = [&self.duration, &self.errors, &self.gangs_planned];
        collectors
            .iter()
            .flat_map(|c| c.desc())
            .map(|d| d.fq_name.clone())
            .collect()
    }

    /// The extender's metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}
