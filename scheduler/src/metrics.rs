//! Prometheus metrics, all prefixed `drover_`, units in the names, no pod or node
//! names as labels (bounded cardinality).

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The scheduler's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Scheduling attempts by result (`scheduled`, `unschedulable`, `error`).
    pub attempts: IntCounterVec,
    /// Time to decide one pod (filter + score over the snapshot).
    pub decision_seconds: Histogram,
    /// Pod creation to a successful bind.
    pub e2e_seconds: Histogram,
    /// Bind calls that failed, by kind (`conflict`, `other`).
    pub bind_errors: IntCounterVec,
    /// Pods waiting, by queue state (`active`, `backoff`, `unschedulable`, `in_flight`).
    pub pending: IntGaugeVec,
    /// Nodes in the cache.
    pub nodes: IntGauge,
    /// Generation of the newest published snapshot.
    pub snapshot_generation: IntGauge,
    /// Objects skipped because they could not be converted.
    pub malformed_objects: IntCounter,
    /// Events and status writes dropped because too many were waiting.
    pub status_writes_dropped: IntCounter,
    /// Gangs with pending members that are not yet placed.
    pub gangs_waiting: IntGauge,
    /// Gangs placed all together.
    pub gangs_placed: IntCounter,
    /// Time from a gang's first attempt to its placement.
    pub gang_wait_seconds: Histogram,
    /// Gang members placed again after their bind failed.
    pub gang_repairs: IntCounter,
    /// 1 while this replica leads.
    pub leader: IntGauge,
    /// Per fair-share queue and resource: allocated, guaranteed, max, fair share.
    pub queue_resources: GaugeVec,
    /// Pending pods per fair-share queue.
    pub queue_pending_pods: IntGaugeVec,
    /// Pods evicted by drover, by reason (`reclaim`, `preemption`).
    pub evictions: IntCounterVec,
    /// Seconds since the scheduler last published a snapshot.
    pub snapshot_age_seconds: Gauge,
    /// Gangs with at least minMember members placed.
    pub gangs_running: IntGauge,
    /// How long the longest-waiting gang has waited since its first attempt.
    pub gang_oldest_wait_seconds: Gauge,
    /// Memory left unused on nodes that run workload pods.
    pub wasted_memory_bytes: IntGauge,
    /// Free GPUs by where they are: on GPU nodes with no GPU in use (`whole_node`), or
    /// on nodes already partly used (`partly_used_node`: fragmented, unusable by
    /// whole-node jobs).
    pub gpus_free: IntGaugeVec,
    /// Price per hour of the unused share of nodes that run workload pods (with a
    /// price table in the config).
    pub wasted_cost: Gauge,
}

impl Metrics {
    /// Registers every metric in a new registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let buckets = prometheus::exponential_buckets(0.000_01, 2.0, 22).expect("valid buckets");
        let m = Metrics {
            attempts: IntCounterVec::new(
                Opts::new(
                    "drover_schedule_attempts_total",
                    "Scheduling attempts by result.",
                ),
                &["result"],
            )
            .expect("metric"),
            decision_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "drover_scheduling_decision_duration_seconds",
                    "Time to filter and score every node for one pod.",
                )
                .buckets(buckets.clone()),
            )
            .expect("metric"),
            e2e_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "drover_pod_scheduling_duration_seconds",
                    "Time from pod creation to a successful bind.",
                )
                .buckets(prometheus::exponential_buckets(0.01, 2.0, 16).expect("valid buckets")),
            )
            .expect("metric"),
            bind_errors: IntCounterVec::new(
                Opts::new(
                    "drover_binding_errors_total",
                    "Bind calls that failed, by kind.",
                ),
                &["kind"],
            )
            .expect("metric"),
            pending: IntGaugeVec::new(
                Opts::new(
                    "drover_pending_pods",
                    "Pods waiting to be scheduled, by queue state.",
                ),
                &["state"],
            )
            .expect("metric"),
            nodes: IntGauge::new("drover_cache_nodes", "Nodes in the scheduler's cache.")
                .expect("metric"),
            snapshot_generation: IntGauge::new(
                "drover_snapshot_generation",
                "Generation of the newest published snapshot.",
            )
            .expect("metric"),
            malformed_objects: IntCounter::new(
                "drover_malformed_objects_total",
                "Pods and nodes skipped because they could not be read.",
            )
            .expect("metric"),
            status_writes_dropped: IntCounter::new(
                "drover_status_writes_dropped_total",
                "Events and status writes dropped because too many were waiting.",
            )
            .expect("metric"),
            gangs_waiting: IntGauge::new(
                "drover_gangs_waiting",
                "Gangs whose members are not yet placed.",
            )
            .expect("metric"),
            gangs_placed: IntCounter::new(
                "drover_gangs_placed_total",
                "Gangs placed all together.",
            )
            .expect("metric"),
            gang_wait_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "drover_gang_wait_duration_seconds",
                    "Time from a gang's first scheduling attempt to its placement.",
                )
                .buckets(prometheus::exponential_buckets(0.01, 2.0, 20).expect("valid buckets")),
            )
            .expect("metric"),
            gang_repairs: IntCounter::new(
                "drover_gang_repairs_total",
                "Gang members placed again after their bind failed.",
            )
            .expect("metric"),
            snapshot_age_seconds: Gauge::new(
                "drover_snapshot_age_seconds",
                "Seconds since the scheduler last published a snapshot of the cluster.",
            )
            .expect("metric"),
            gangs_running: IntGauge::new(
                "drover_gangs_running",
                "Gangs with at least minMember members placed.",
            )
            .expect("metric"),
            gang_oldest_wait_seconds: Gauge::new(
                "drover_gang_oldest_wait_seconds",
                "How long the longest-waiting gang has waited since its first attempt.",
            )
            .expect("metric"),
            queue_resources: GaugeVec::new(
                Opts::new(
                    "drover_queue_resource",
                    "Per fair-share queue and resource (cpu in cores, memory in bytes, others in units): allocated, guaranteed, max and fair share.",
                ),
                &["queue", "resource", "kind"],
            )
            .expect("metric"),
            queue_pending_pods: IntGaugeVec::new(
                Opts::new(
                    "drover_queue_pending_pods",
                    "Pods waiting in each fair-share queue.",
                ),
                &["queue"],
            )
            .expect("metric"),
            evictions: IntCounterVec::new(
                Opts::new(
                    "drover_evictions_total",
                    "Pods evicted by drover: reclaim (a queue takes back its guarantee) or preemption (a higher-priority pod of the same queue).",
                ),
                &["reason"],
            )
            .expect("metric"),
            leader: IntGauge::new(
                "drover_leader",
                "1 while this replica holds the leader Lease (or runs without leader election).",
            )
            .expect("metric"),
            gpus_free: IntGaugeVec::new(
                Opts::new(
                    "drover_gpus_free",
                    "Free GPUs on GPU nodes with none in use (whole_node) or on partly used nodes (partly_used_node).",
                ),
                &["where"],
            )
            .expect("metric"),
            wasted_memory_bytes: IntGauge::new(
                "drover_wasted_memory_bytes",
                "Memory left unused on nodes that run workload pods.",
            )
            .expect("metric"),
            wasted_cost: Gauge::new(
                "drover_wasted_cost_per_hour",
                "Price per hour of the unused share of nodes that run workload pods (needs packing.prices).",
            )
            .expect("metric"),
            registry,
        };
        for c in [
            Box::new(m.attempts.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.decision_seconds.clone()),
            Box::new(m.e2e_seconds.clone()),
            Box::new(m.bind_errors.clone()),
            Box::new(m.pending.clone()),
            Box::new(m.nodes.clone()),
            Box::new(m.snapshot_generation.clone()),
            Box::new(m.malformed_objects.clone()),
            Box::new(m.status_writes_dropped.clone()),
            Box::new(m.gangs_waiting.clone()),
            Box::new(m.gangs_placed.clone()),
            Box::new(m.gang_wait_seconds.clone()),
            Box::new(m.gang_repairs.clone()),
            Box::new(m.leader.clone()),
            Box::new(m.queue_resources.clone()),
            Box::new(m.queue_pending_pods.clone()),
            Box::new(m.evictions.clone()),
            Box::new(m.snapshot_age_seconds.clone()),
            Box::new(m.gangs_running.clone()),
            Box::new(m.gang_oldest_wait_seconds.clone()),
            Box::new(m.wasted_memory_bytes.clone()),
            Box::new(m.wasted_cost.clone()),
            Box::new(m.gpus_free.clone()),
        ] {
            m.registry.register(c).expect("unique metric names");
        }
        m
    }

    /// The name of every metric family drover exports (whether or not it has a
    /// sample yet).
    pub fn names(&self) -> Vec<String> {
        let collectors: Vec<&dyn prometheus::core::Collector> = vec![
            &self.attempts,
            &self.decision_seconds,
            &self.e2e_seconds,
            &self.bind_errors,
            &self.pending,
            &self.nodes,
            &self.snapshot_generation,
            &self.malformed_objects,
            &self.status_writes_dropped,
            &self.gangs_waiting,
            &self.gangs_placed,
            &self.gang_wait_seconds,
            &self.gang_repairs,
            &self.leader,
            &self.queue_resources,
            &self.queue_pending_pods,
            &self.evictions,
            &self.snapshot_age_seconds,
            &self.gangs_running,
            &self.gang_oldest_wait_seconds,
            &self.wasted_memory_bytes,
            &self.wasted_cost,
            &self.gpus_free,
        ];
        let mut v: Vec<String> = collectors
            .iter()
            .flat_map(|c| c.desc())
            .map(|d| d.fq_name.clone())
            .collect();
        v.sort();
        v
    }

    /// The registry, for adding more collectors.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Everything in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
