//! The configuration file: scoring weights, packing, queue timing. Parsed and validated
//! into a typed [`Config`] before any I/O; a bad file is refused at start with a message
//! that names the field.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::framework::Profile;
use crate::model::ResourceKind;
use crate::plugins::packing::{Packing, Strategy};
use crate::plugins::waste::Waste;
use crate::plugins::{Filter, Score};
use crate::queue::QueueConfig;

/// A configuration that could not be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read (the drivers read it; the core only parses).
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid YAML of the expected shape.
    #[error("config file {path}: {source}")]
    Parse {
        /// The path.
        path: String,
        /// The parser's error (names the field and line).
        source: serde_yaml_ng::Error,
    },
    /// A field has a value drover cannot use.
    #[error("config field `{field}`: {problem}")]
    Invalid {
        /// The field's path, e.g. `packing.resources[2].weight`.
        field: String,
        /// What is wrong and what to do.
        problem: String,
    },
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        problem: problem.into(),
    }
}

/// One resource of the packing score and its weight.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceWeight {
    /// A Kubernetes resource name: `cpu`, `memory`, `nvidia.com/gpu`, ...
    pub name: String,
    /// Its weight (≥ 1).
    pub weight: i64,
}

/// The packing score's settings in the file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct PackingConfig {
    /// `MostAllocated` (pack, default) or `LeastAllocated` (spread).
    pub strategy: Strategy,
    /// Resources the score looks at, with weights.
    pub resources: Vec<ResourceWeight>,
    /// Weights of the least-waste score per resource, per GiB (memory, storage), per
    /// core (cpu), or per unit (GPUs, other resources).
    pub waste: Vec<ResourceWeight>,
    /// Price per hour by `node.kubernetes.io/instance-type`; when set, the least-waste
    /// score minimises the price of what stays unused.
    pub prices: std::collections::BTreeMap<String, f64>,
}

impl Default for PackingConfig {
    fn default() -> Self {
        let d = Packing::default();
        PackingConfig {
            strategy: d.strategy,
            resources: d
                .resources
                .iter()
                .map(|(k, w)| ResourceWeight {
                    name: k.name().to_string(),
                    weight: *w,
                })
                .collect(),
            waste: Waste::default()
                .weights
                .iter()
                .map(|(k, w)| ResourceWeight {
                    name: k.name().to_string(),
                    weight: *w,
                })
                .collect(),
            prices: Default::default(),
        }
    }
}

/// Weights of the score plugins (0 turns one off).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct ScoreWeights {
    /// The packing score.
    pub packing: i64,
    /// Preferred node affinity.
    pub node_affinity: i64,
    /// Untolerated PreferNoSchedule taints.
    pub taint_toleration: i64,
    /// Least absolute waste (the smallest node that fits). Default: 2 when packing
    /// is MostAllocated, 0 when it spreads (LeastAllocated).
    pub least_waste: Option<i64>,
    /// Fewest NUMA zones spanned (nodes with a NodeResourceTopology).
    pub numa: i64,
    /// Preferred inter-pod affinity and anti-affinity (kube-scheduler's weight, 2).
    pub inter_pod_affinity: i64,
    /// `ScheduleAnyway` topology spread constraints (kube-scheduler's weight, 2).
    pub pod_topology_spread: i64,
}

impl Default for ScoreWeights {
    fn default() -> Self {
        ScoreWeights {
            packing: 1,
            node_affinity: 4,
            taint_toleration: 3,
            least_waste: None,
            numa: 1,
            inter_pod_affinity: 2,
            pod_topology_spread: 2,
        }
    }
}

/// Queue timing in the file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct QueueTiming {
    /// Backoff after the first failed attempt.
    pub initial_backoff_seconds: f64,
    /// Longest backoff.
    pub max_backoff_seconds: f64,
    /// Retry unschedulable pods at least this often, even with no cluster event.
    pub max_unschedulable_seconds: f64,
}

impl Default for QueueTiming {
    fn default() -> Self {
        QueueTiming {
            initial_backoff_seconds: 1.0,
            max_backoff_seconds: 10.0,
            max_unschedulable_seconds: 300.0,
        }
    }
}

/// Binding settings in the file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct BindingConfig {
    /// Binds in flight at once.
    pub concurrency: usize,
    /// How long a successful bind may wait for the watch to confirm it before the
    /// assumption expires.
    pub confirm_timeout_seconds: u64,
    /// How long a pod's bind waits for the claims drover bound or asked a provisioner
    /// for to show bound, before drover undoes its choice and decides the pod again
    /// (kube-scheduler's `bindTimeoutSeconds`).
    pub volume_bind_timeout_seconds: u64,
}

impl Default for BindingConfig {
    fn default() -> Self {
        BindingConfig {
            concurrency: 64,
            confirm_timeout_seconds: 30,
            volume_bind_timeout_seconds: 600,
        }
    }
}

/// Exclusive-node settings in the file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct ExclusiveConfig {
    /// Every pod in these namespaces gets a node to itself.
    pub namespaces: Vec<String>,
    /// DaemonSet and static pods on a node keep exclusive pods off it too.
    pub system_pods_count: bool,
}

/// Topology settings in the file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct TopologyConfig {
    /// Node label keys that name topology levels, widest first.
    pub levels: Vec<String>,
}

impl Default for TopologyConfig {
    fn default() -> Self {
        TopologyConfig {
            levels: crate::topology::DEFAULT_LEVELS
                .iter()
                .map(|l| l.to_string())
                .collect(),
        }
    }
}

/// Fair-share queue settings in the file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct QuotaConfig {
    /// How long a pod that eviction could make room for waits before drover evicts
    /// (reclaim from borrowers, or priority preemption inside its queue).
    pub reclaim_grace_seconds: f64,
    /// Pods that have run less than this are never evicted by drover.
    pub min_runtime_seconds: f64,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        QuotaConfig {
            reclaim_grace_seconds: 30.0,
            min_runtime_seconds: 60.0,
        }
    }
}

/// Gang settings in the file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct GangConfig {
    /// Hold capacity for the first gang that does not fit, so that a stream of small
    /// pods cannot starve it; small pods backfill only what the gang does not need.
    pub reserve: bool,
    /// How many gangs may hold a reservation at once, each on nodes of its own (a
    /// reservation leaves capacity idle while its nodes drain, so their number is
    /// bounded).
    pub max_reservations: usize,
    /// How long one reservation holds before it is planned afresh (so a gang
    /// waiting for nodes that never drain does not hold them forever).
    pub reservation_seconds: f64,
    /// How long a gang may have some but fewer than minMember members placed (after
    /// a failed bind, a lost node or a deleted member) before drover evicts the
    /// placed ones, so that the gang starts again whole rather than holding half its
    /// room forever.
    pub repair_seconds: f64,
}

impl Default for GangConfig {
    fn default() -> Self {
        GangConfig {
            reserve: true,
            max_reservations: 4,
            reservation_seconds: 300.0,
            repair_seconds: 30.0,
        }
    }
}

/// The whole file. Every field is optional; see docs/configuration.md.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct FileConfig {
    /// The packing score.
    pub packing: PackingConfig,
    /// Score weights.
    pub weights: ScoreWeights,
    /// Queue timing.
    pub queue: QueueTiming,
    /// Binding.
    pub binding: BindingConfig,
    /// Gangs.
    pub gangs: GangConfig,
    /// Exclusive nodes.
    pub exclusive: ExclusiveConfig,
    /// Topology levels.
    pub topology: TopologyConfig,
    /// Fair-share queues.
    pub quota: QuotaConfig,
    /// Topology spread.
    pub topology_spread: TopologySpreadConfig,
}

/// One cluster default spread constraint, as in kube-scheduler's
/// `PodTopologySpreadArgs.defaultConstraints` (no `labelSelector`: it counts the pods
/// of the pod's own controller).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DefaultSpreadConstraint {
    /// `maxSkew` (≥ 1).
    pub max_skew: i32,
    /// `topologyKey`: a node label key.
    pub topology_key: String,
    /// `DoNotSchedule` or `ScheduleAnyway`.
    pub when_unsatisfiable: String,
}

/// Topology spread settings in the file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct TopologySpreadConfig {
    /// Constraints for pods that have none of their own and belong to a controller.
    /// Empty by default: drover packs; a pod's own constraints always hold.
    pub default_constraints: Vec<DefaultSpreadConstraint>,
}

/// The validated configuration the scheduler runs with.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The scheduling profile.
    pub profile: Profile,
    /// Queue timing.
    pub queue: QueueConfig,
    /// Binds in flight at once.
    pub bind_concurrency: usize,
    /// Milliseconds an assumed, bound pod may wait for the watch's confirmation.
    pub confirm_timeout_ms: i64,
    /// Milliseconds a bind waits for the pod's claims to bind.
    pub volume_bind_timeout_ms: i64,
    /// How long a gang reservation holds (ms); `None` turns reservations off.
    pub gang_reservation_ms: Option<i64>,
    /// How many gangs hold reservations at once.
    pub max_reservations: usize,
    /// How long a gang may stay partly placed before its placed members are
    /// evicted (ms).
    pub gang_repair_ms: i64,
    /// Namespaces whose pods are all exclusive.
    pub exclusive_namespaces: Vec<String>,
    /// Topology levels (node label keys), widest first.
    pub topology_levels: Vec<std::sync::Arc<str>>,
    /// Wait before evicting for a pod (ms).
    pub reclaim_grace_ms: i64,
    /// Minimum runtime of an eviction victim (ms).
    pub min_runtime_ms: i64,
}

impl Default for Config {
    fn default() -> Self {
        FileConfig::default()
            .validate()
            .expect("the default config is valid")
    }
}

impl FileConfig {
    /// Parses YAML text (`origin` names it in errors).
    pub fn parse(text: &str, origin: &str) -> Result<FileConfig, ConfigError> {
        if text.trim().is_empty() {
            return Ok(FileConfig::default());
        }
        serde_yaml_ng::from_str(text).map_err(|source| ConfigError::Parse {
            path: origin.into(),
            source,
        })
    }

    /// Checks every field and builds the typed configuration.
    pub fn validate(&self) -> Result<Config, ConfigError> {
        let w = &self.weights;
        let least_waste = w.least_waste.unwrap_or(match self.packing.strategy {
            Strategy::MostAllocated => 2,
            Strategy::LeastAllocated => 0,
        });
        for (name, v) in [
            ("weights.packing", w.packing),
            ("weights.nodeAffinity", w.node_affinity),
            ("weights.taintToleration", w.taint_toleration),
            ("weights.leastWaste", least_waste),
            ("weights.numa", w.numa),
            ("weights.interPodAffinity", w.inter_pod_affinity),
            ("weights.podTopologySpread", w.pod_topology_spread),
        ] {
            if !(0..=100).contains(&v) {
                return Err(invalid(name, format!("{v} is outside 0..=100")));
            }
        }
        if self.packing.resources.is_empty() {
            return Err(invalid(
                "packing.resources",
                "list at least one resource, e.g. `- {name: memory, weight: 1}`",
            ));
        }
        let mut resources = Vec::new();
        for (i, r) in self.packing.resources.iter().enumerate() {
            if r.name.trim().is_empty() {
                return Err(invalid(
                    format!("packing.resources[{i}].name"),
                    "is empty; name a resource such as cpu, memory or nvidia.com/gpu",
                ));
            }
            if !(1..=100).contains(&r.weight) {
                return Err(invalid(
                    format!("packing.resources[{i}].weight"),
                    format!("{} is outside 1..=100", r.weight),
                ));
            }
            let kind = ResourceKind::from_name(&r.name);
            if resources.iter().any(|(k, _)| *k == kind) {
                return Err(invalid(
                    format!("packing.resources[{i}].name"),
                    format!("{} is listed twice", r.name),
                ));
            }
            resources.push((kind, r.weight));
        }
        let q = &self.queue;
        for (name, v) in [
            ("queue.initialBackoffSeconds", q.initial_backoff_seconds),
            ("queue.maxBackoffSeconds", q.max_backoff_seconds),
            ("queue.maxUnschedulableSeconds", q.max_unschedulable_seconds),
        ] {
            if !v.is_finite() || v <= 0.0 {
                return Err(invalid(
                    name,
                    format!("{v} must be a positive number of seconds"),
                ));
            }
        }
        if q.max_backoff_seconds < q.initial_backoff_seconds {
            return Err(invalid(
                "queue.maxBackoffSeconds",
                "must be at least queue.initialBackoffSeconds",
            ));
        }
        if self.binding.concurrency == 0 {
            return Err(invalid("binding.concurrency", "must be at least 1"));
        }
        if self.binding.confirm_timeout_seconds == 0 {
            return Err(invalid(
                "binding.confirmTimeoutSeconds",
                "must be at least 1",
            ));
        }
        if self.binding.volume_bind_timeout_seconds == 0 {
            return Err(invalid(
                "binding.volumeBindTimeoutSeconds",
                "must be at least 1",
            ));
        }
        let g = &self.gangs;
        if g.max_reservations == 0 {
            return Err(invalid(
                "gangs.maxReservations",
                "must be at least 1 (set gangs.reserve: false to turn reservations off)",
            ));
        }
        if !g.reservation_seconds.is_finite() || g.reservation_seconds <= 0.0 {
            return Err(invalid(
                "gangs.reservationSeconds",
                format!(
                    "{} must be a positive number of seconds (set gangs.reserve: false to turn reservations off)",
                    g.reservation_seconds
                ),
            ));
        }
        if !g.repair_seconds.is_finite() || g.repair_seconds <= 0.0 {
            return Err(invalid(
                "gangs.repairSeconds",
                format!("{} must be a positive number of seconds", g.repair_seconds),
            ));
        }
        let mut waste = Vec::new();
        for (i, r) in self.packing.waste.iter().enumerate() {
            let kind = ResourceKind::from_name(&r.name);
            if r.name.trim().is_empty() || waste.iter().any(|(k, _)| *k == kind) {
                return Err(invalid(
                    format!("packing.waste[{i}].name"),
                    format!("{:?} is empty or listed twice", r.name),
                ));
            }
            if !(0..=100_000).contains(&r.weight) {
                return Err(invalid(
                    format!("packing.waste[{i}].weight"),
                    format!("{} is outside 0..=100000", r.weight),
                ));
            }
            waste.push((kind, r.weight));
        }
        for (t, p) in &self.packing.prices {
            if !p.is_finite() || *p < 0.0 {
                return Err(invalid(
                    format!("packing.prices[{t}]"),
                    format!("{p} must be a price per hour of at least 0"),
                ));
            }
        }
        for (name, v) in [
            (
                "quota.reclaimGraceSeconds",
                self.quota.reclaim_grace_seconds,
            ),
            ("quota.minRuntimeSeconds", self.quota.min_runtime_seconds),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(invalid(
                    name,
                    format!("{v} must be a number of seconds, 0 or more"),
                ));
            }
        }
        for (i, l) in self.topology.levels.iter().enumerate() {
            if l.trim().is_empty() || self.topology.levels[..i].contains(l) {
                return Err(invalid(
                    format!("topology.levels[{i}]"),
                    format!(
                        "{l:?} is empty or listed twice; name a node label key such as topology.kubernetes.io/zone"
                    ),
                ));
            }
        }
        for (i, ns) in self.exclusive.namespaces.iter().enumerate() {
            if ns.trim().is_empty() {
                return Err(invalid(
                    format!("exclusive.namespaces[{i}]"),
                    "is empty; name a namespace",
                ));
            }
        }
        let mut spread_defaults: Vec<crate::model::SpreadConstraint> = Vec::new();
        for (i, d) in self.topology_spread.default_constraints.iter().enumerate() {
            let field = |f: &str| format!("topologySpread.defaultConstraints[{i}].{f}");
            if d.max_skew < 1 {
                return Err(invalid(
                    field("maxSkew"),
                    format!("{} must be at least 1", d.max_skew),
                ));
            }
            if d.topology_key.trim().is_empty() {
                return Err(invalid(
                    field("topologyKey"),
                    "is empty; name a node label key such as topology.kubernetes.io/zone",
                ));
            }
            let hard = match d.when_unsatisfiable.as_str() {
                "DoNotSchedule" => true,
                "ScheduleAnyway" => false,
                other => {
                    return Err(invalid(
                        field("whenUnsatisfiable"),
                        format!("{other:?} is neither DoNotSchedule nor ScheduleAnyway"),
                    ));
                }
            };
            let key = d.topology_key.trim();
            if spread_defaults
                .iter()
                .any(|c| &*c.topology_key == key && c.hard == hard)
            {
                return Err(invalid(
                    field("topologyKey"),
                    format!("{key} is listed twice with {}", d.when_unsatisfiable),
                ));
            }
            spread_defaults.push(crate::model::SpreadConstraint::new(
                d.max_skew,
                key,
                hard,
                crate::model::SpreadSelector::Nothing,
            ));
        }
        let packing = Packing {
            strategy: self.packing.strategy,
            resources,
        };
        let filters = Filter::DEFAULT
            .iter()
            .map(|f| match f {
                Filter::Exclusive { .. } => Filter::Exclusive {
                    system_pods_count: self.exclusive.system_pods_count,
                },
                f => f.clone(),
            })
            .collect();
        let profile = Profile {
            filters,
            scores: vec![
                (Score::Packing(packing), w.packing),
                (Score::NodeAffinity, w.node_affinity),
                (Score::Taints, w.taint_toleration),
                (
                    Score::LeastWaste(Waste {
                        weights: waste,
                        prices: std::sync::Arc::new(self.packing.prices.clone()),
                    }),
                    least_waste,
                ),
                (Score::Numa, w.numa),
                (Score::InterPodAffinity, w.inter_pod_affinity),
                (Score::TopologySpread, w.pod_topology_spread),
            ],
            spread_defaults,
        };
        let ms = |s: f64| (s * 1000.0).round() as i64;
        Ok(Config {
            profile,
            queue: QueueConfig {
                initial_backoff_ms: ms(q.initial_backoff_seconds),
                max_backoff_ms: ms(q.max_backoff_seconds),
                max_unschedulable_ms: ms(q.max_unschedulable_seconds),
            },
            bind_concurrency: self.binding.concurrency,
            confirm_timeout_ms: (self.binding.confirm_timeout_seconds * 1000) as i64,
            volume_bind_timeout_ms: (self.binding.volume_bind_timeout_seconds * 1000) as i64,
            gang_reservation_ms: g.reserve.then(|| ms(g.reservation_seconds)),
            max_reservations: g.max_reservations,
            gang_repair_ms: ms(g.repair_seconds),
            exclusive_namespaces: self.exclusive.namespaces.clone(),
            reclaim_grace_ms: ms(self.quota.reclaim_grace_seconds),
            min_runtime_ms: ms(self.quota.min_runtime_seconds),
            topology_levels: self
                .topology
                .levels
                .iter()
                .map(|l| l.trim().into())
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(yaml: &str) -> Result<Config, String> {
        FileConfig::parse(yaml, "test.yaml")
            .and_then(|f| f.validate())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn spread_defaults_and_the_pod_term_weights() {
        let c = Config::default();
        assert!(c.profile.spread_defaults.is_empty(), "off by default");
        assert!(c.profile.scores.contains(&(Score::InterPodAffinity, 2)));
        assert!(c.profile.scores.contains(&(Score::TopologySpread, 2)));
        let c = check(
            "topologySpread:\n  defaultConstraints:\n  - {maxSkew: 3, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: ScheduleAnyway}\n",
        )
        .unwrap();
        let d = &c.profile.spread_defaults[0];
        assert_eq!(
            (d.max_skew, &*d.topology_key, d.hard),
            (3, "kubernetes.io/hostname", false)
        );
        for (yaml, want) in [
            (
                "- {maxSkew: 0, topologyKey: a, whenUnsatisfiable: ScheduleAnyway}",
                "defaultConstraints[0].maxSkew",
            ),
            (
                "- {maxSkew: 1, topologyKey: ' ', whenUnsatisfiable: ScheduleAnyway}",
                "defaultConstraints[0].topologyKey",
            ),
            (
                "- {maxSkew: 1, topologyKey: a, whenUnsatisfiable: Maybe}",
                "neither DoNotSchedule nor ScheduleAnyway",
            ),
            (
                "- {maxSkew: 1, topologyKey: a, whenUnsatisfiable: DoNotSchedule}\n  - {maxSkew: 2, topologyKey: a, whenUnsatisfiable: DoNotSchedule}",
                "listed twice",
            ),
        ] {
            let e = check(&format!(
                "topologySpread:\n  defaultConstraints:\n  {yaml}\n"
            ))
            .unwrap_err();
            assert!(e.contains(want), "{yaml}: {e}");
        }
    }

    #[test]
    fn empty_and_full_files() {
        assert_eq!(check("").unwrap(), Config::default());
        let c = check(
            "packing:\n  strategy: LeastAllocated\n  resources:\n  - {name: memory, weight: 3}\n  - {name: cpu, weight: 1}\nweights:\n  packing: 5\nqueue:\n  initialBackoffSeconds: 0.5\n",
        )
        .unwrap();
        let Score::Packing(p) = &c.profile.scores[0].0 else {
            panic!()
        };
        assert_eq!(p.strategy, Strategy::LeastAllocated);
        assert_eq!(
            p.resources,
            vec![(ResourceKind::Memory, 3), (ResourceKind::Cpu, 1)]
        );
        assert_eq!(c.profile.scores[0].1, 5);
        assert_eq!(c.queue.initial_backoff_ms, 500);
    }

    #[test]
    fn bad_files_name_the_field() {
        let cases = [
            ("weights:\n  packing: -1\n", "weights.packing"),
            ("weights:\n  pakcing: 1\n", "unknown field `pakcing`"),
            ("packing:\n  strategy: Spread\n", "unknown variant `Spread`"),
            ("packing:\n  resources: []\n", "packing.resources"),
            (
                "packing:\n  resources:\n  - {name: cpu, weight: 0}\n",
                "packing.resources[0].weight",
            ),
            (
                "packing:\n  resources:\n  - {name: cpu, weight: 1}\n  - {name: cpu, weight: 2}\n",
                "packing.resources[1].name",
            ),
            (
                "queue:\n  initialBackoffSeconds: 5\n  maxBackoffSeconds: 1\n",
                "queue.maxBackoffSeconds",
            ),
            (
                "queue:\n  maxUnschedulableSeconds: 0\n",
                "queue.maxUnschedulableSeconds",
            ),
            ("binding:\n  concurrency: 0\n", "binding.concurrency"),
            ("[1, 2]", "test.yaml"),
        ];
        for (yaml, want) in cases {
            let err = check(yaml).expect_err(yaml);
            assert!(
                err.contains(want),
                "{yaml:?}: {err:?} should mention {want:?}"
            );
        }
    }

    #[test]
    fn packing_waste_exclusive_and_gang_fields() {
        let c = check(
            "packing:\n  waste:\n  - {name: memory, weight: 8}\n  prices:\n    m6i.large: 0.096\nexclusive:\n  namespaces: [notebooks]\n  systemPodsCount: true\ngangs:\n  reserve: false\n",
        )
        .unwrap();
        let Score::LeastWaste(w) = &c.profile.scores[3].0 else {
            panic!()
        };
        assert_eq!(w.weights, vec![(ResourceKind::Memory, 8)]);
        assert_eq!(w.prices.get("m6i.large"), Some(&0.096));
        assert_eq!(c.profile.scores[3].1, 2, "packs by default");
        assert!(c.profile.filters.contains(&Filter::Exclusive {
            system_pods_count: true
        }));
        assert_eq!(c.exclusive_namespaces, vec!["notebooks".to_string()]);
        assert_eq!(c.gang_reservation_ms, None);
        // Spreading leaves least waste out unless asked for.
        let spread = check("packing: {strategy: LeastAllocated}\n").unwrap();
        assert_eq!(spread.profile.scores[3].1, 0);
        for (yaml, field) in [
            ("packing: {prices: {x: -1}}", "packing.prices[x]"),
            (
                "packing: {waste: [{name: cpu, weight: 1}, {name: cpu, weight: 2}]}",
                "packing.waste[1].name",
            ),
            ("exclusive: {namespaces: ['']}", "exclusive.namespaces[0]"),
            ("gangs: {reservationSeconds: 0}", "gangs.reservationSeconds"),
            ("gangs: {maxReservations: 0}", "gangs.maxReservations"),
            ("weights: {leastWaste: 101}", "weights.leastWaste"),
        ] {
            let err = check(yaml).unwrap_err();
            assert!(err.contains(field), "{yaml}: {err}");
        }
    }
}
