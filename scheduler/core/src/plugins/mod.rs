//! Filter and score plugins, at parity with kube-scheduler's default profile.
//!
//! Each plugin lives in its own file with a `filter` and/or `score` function over a
//! [`PodInfo`] and a [`NodeInfo`]. The [`Filter`] and [`Score`] enums are the registry:
//! a profile is a list of them, dispatched by `match` so the hot path pays no virtual
//! call. Every mode (scheduler, extender, simulator, benchmarks) runs these same
//! functions through `framework`.

pub mod devices;
pub mod exclusive;
pub mod fit;
pub mod gpu_memory;
pub mod interpod;
pub mod node_affinity;
pub mod node_name;
pub mod numa;
pub mod packing;
pub mod ports;
pub mod spread;
pub mod taints;
pub mod unschedulable;
pub mod volume;
pub mod waste;

use std::fmt;
use std::sync::Arc;

use crate::model::{NodeInfo, PodInfo, ResourceKind, Taint};

/// Why a node was rejected for a pod, worded as kube-scheduler words it so that
/// `kubectl describe pod` reads the same with either scheduler.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Not enough of a resource is free.
    Insufficient(ResourceKind),
    /// The node holds its maximum number of pods.
    TooManyPods,
    /// The node has a NoSchedule/NoExecute taint the pod does not tolerate.
    UntoleratedTaint(Taint),
    /// The node does not match the pod's nodeSelector or required node affinity.
    NodeAffinity,
    /// The node is cordoned (`spec.unschedulable`).
    Unschedulable,
    /// A host port the pod asks for is in use.
    HostPorts,
    /// The pod names another node.
    NodeName,
    /// What is free is held for a waiting gang (backfill would delay it).
    ReservedForGang,
    /// The node runs a pod that asked for it exclusively.
    HeldExclusively,
    /// The pod asks for a node to itself and this one runs other pods.
    NotEmpty,
    /// single-numa-node policy and no zone holds the pod's CPUs and GPUs.
    NumaZone,
    /// The node's GPUs have less memory than the pod asks for (or none is known).
    GpuMemory,
    /// A required pod affinity term has no matching pod in the node's domain.
    PodAffinity,
    /// A required pod anti-affinity term has a matching pod in the node's domain.
    PodAntiAffinity,
    /// An existing pod's required anti-affinity keeps the pod out of the node's domain.
    ExistingAntiAffinity,
    /// A `DoNotSchedule` spread constraint would be skewed past its `maxSkew`.
    Spread,
    /// The node lacks the topology key of a `DoNotSchedule` spread constraint.
    SpreadMissingLabel,
    /// A claim the pod mounts does not exist.
    ClaimNotFound(Arc<str>),
    /// A claim the pod mounts is being deleted.
    ClaimDeleting(Arc<str>),
    /// A claim of a class that does not exist.
    ClassNotFound(Arc<str>),
    /// A claim is unbound and its class binds immediately (or it has no class): the
    /// pod waits until it binds.
    UnboundImmediateClaims,
    /// A bound claim names a volume that does not exist.
    VolumeNotFound,
    /// A bound claim's volume cannot be reached from the node (its node affinity).
    VolumeNodeAffinity,
    /// A bound claim's volume is in another zone (its legacy zone labels).
    VolumeZone,
    /// No free volume fits a waiting claim on the node and its class cannot provision
    /// there.
    VolumeBindConflict,
    /// The node's CSI driver would attach more volumes than its CSINode allows.
    VolumeLimit,
    /// A `ReadWriteOncePod` claim is mounted by another pod.
    ReadWriteOncePod,
    /// A resource claim from a template that the resourceclaim controller has not
    /// created yet.
    DeviceClaimNotCreated(Arc<str>),
    /// A resource claim the pod names does not exist.
    DeviceClaimNotFound(Arc<str>),
    /// A resource claim the pod names is being deleted.
    DeviceClaimDeleting(Arc<str>),
    /// A resource claim is not allocated, and drover does not allocate devices.
    DeviceClaimNotAllocated(Arc<str>),
    /// A resource claim's devices were allocated where this node cannot reach them.
    DeviceClaimElsewhere,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Insufficient(r) => write!(f, "Insufficient {r}"),
            Reason::TooManyPods => f.write_str("Too many pods"),
            Reason::UntoleratedTaint(t) => write!(
                f,
                "node(s) had untolerated taint {{{}: {}}}",
                t.key, t.value
            ),
            Reason::NodeAffinity => {
                f.write_str("node(s) didn't match Pod's node affinity/selector")
            }
            Reason::Unschedulable => f.write_str("node(s) were unschedulable"),
            Reason::HostPorts => {
                f.write_str("node(s) didn't have free ports for the requested pod ports")
            }
            Reason::NodeName => f.write_str("node(s) didn't match the requested node name"),
            Reason::GpuMemory => f.write_str(
                "node(s) had GPUs with less memory than drover.dev/gpu-memory-min (or no nvidia.com/gpu.memory label)",
            ),
            Reason::NumaZone => f.write_str(
                "node(s) had no single NUMA zone with enough cpu and nvidia.com/gpu (single-numa-node policy)",
            ),
            Reason::HeldExclusively => f.write_str("node(s) were held by an exclusive pod"),
            Reason::NotEmpty => {
                f.write_str("node(s) already ran other pods (the pod asks for a node to itself)")
            }
            Reason::ReservedForGang => {
                f.write_str("node(s) had free capacity held for a waiting gang")
            }
            Reason::PodAffinity => f.write_str("node(s) didn't match pod affinity rules"),
            Reason::PodAntiAffinity => {
                f.write_str("node(s) didn't match pod anti-affinity rules")
            }
            Reason::ExistingAntiAffinity => {
                f.write_str("node(s) didn't satisfy existing pods anti-affinity rules")
            }
            Reason::Spread => f.write_str("node(s) didn't match pod topology spread constraints"),
            Reason::SpreadMissingLabel => f.write_str(
                "node(s) didn't match pod topology spread constraints (missing required label)",
            ),
            Reason::ClaimNotFound(c) => write!(f, "persistentvolumeclaim \"{c}\" not found"),
            Reason::ClaimDeleting(c) => {
                write!(f, "persistentvolumeclaim \"{c}\" is being deleted")
            }
            Reason::ClassNotFound(c) => write!(f, "storageclass.storage.k8s.io \"{c}\" not found"),
            Reason::UnboundImmediateClaims => {
                f.write_str("pod has unbound immediate PersistentVolumeClaims")
            }
            Reason::VolumeNotFound => f.write_str(
                "node(s) unavailable due to one or more pvc(s) bound to non-existent pv(s)",
            ),
            Reason::VolumeNodeAffinity => f.write_str("node(s) had volume node affinity conflict"),
            Reason::VolumeZone => f.write_str("node(s) had no available volume zone"),
            Reason::VolumeBindConflict => {
                f.write_str("node(s) didn't find available persistent volumes to bind")
            }
            Reason::VolumeLimit => f.write_str("node(s) exceed max volume count"),
            Reason::DeviceClaimNotCreated(c) => write!(
                f,
                "pod's resourceClaims entry \"{c}\": its ResourceClaim is not created yet"
            ),
            Reason::DeviceClaimNotFound(c) => write!(f, "resourceclaim \"{c}\" not found"),
            Reason::DeviceClaimDeleting(c) => {
                write!(f, "resourceclaim \"{c}\" is being deleted")
            }
            Reason::DeviceClaimNotAllocated(c) => write!(
                f,
                "resourceclaim \"{c}\" is not allocated (drover places pods whose DRA claims are allocated; it does not allocate devices yet)"
            ),
            Reason::DeviceClaimElsewhere => f.write_str("resourceclaim not available on the node"),
            Reason::ReadWriteOncePod => f.write_str(
                "node has pod using PersistentVolumeClaim with the same name and ReadWriteOncePod access mode",
            ),
        }
    }
}

/// A filter plugin. `filter` returns true when the node can take the pod; otherwise
/// it reports each reason through `why` (called only on rejection, so the hot path
/// pays nothing for diagnostics).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Filter {
    /// Cordoned nodes (`NodeUnschedulable`).
    Unschedulable,
    /// `spec.nodeName` (`NodeName`).
    NodeName,
    /// Taints and tolerations (`TaintToleration`).
    Taints,
    /// nodeSelector and required node affinity (`NodeAffinity`).
    NodeAffinity,
    /// Host ports (`NodePorts`).
    Ports,
    /// Resources and pod count (`NodeResourcesFit`).
    Fit,
    /// Per-NUMA-zone fit under the single-numa-node policy (`NUMATopology`).
    Numa,
    /// Minimum GPU memory (`GPUMemory`).
    GpuMemory,
    /// Exclusive pods (`NodeExclusive`).
    Exclusive {
        /// DaemonSet and static pods keep exclusive pods off a node too.
        system_pods_count: bool,
    },
    /// Required inter-pod affinity and anti-affinity (`InterPodAffinity`).
    InterPodAffinity,
    /// `DoNotSchedule` topology spread constraints (`PodTopologySpread`).
    TopologySpread,
    /// Persistent volume claims: binding, node affinity, zones, CSI attach limits and
    /// `ReadWriteOncePod` (`VolumeBinding`, `VolumeZone`, `NodeVolumeLimits`,
    /// `VolumeRestrictions`).
    Volumes,
    /// Dynamic Resource Allocation claims: allocated, and reachable from the node
    /// (`DynamicResources`).
    DynamicResources,
}

/// What one cycle counted over every node for one pod, for the plugins whose verdict
/// on a node depends on the pods of other nodes (kube-scheduler's `CycleState`).
/// Empty — nothing counted, nothing to read — for most pods.
#[derive(Clone, Debug, Default)]
pub struct CycleState {
    /// `InterPodAffinity`'s counts, when the pod or some existing pod has terms.
    pub inter_pod: Option<Arc<interpod::State>>,
    /// `PodTopologySpread`'s counts, when the pod has spread constraints (its own or
    /// the profile's defaults).
    pub spread: Option<Arc<spread::State>>,
    /// The pod's claims sorted over the volumes, when it mounts any.
    pub volumes: Option<Arc<volume::State>>,
    /// The pod's resource claims, when it has any.
    pub devices: Option<Arc<devices::State>>,
}

impl CycleState {
    /// Counts what `profile`'s plugins need for `pod` over `nodes`.
    pub fn new<N: crate::framework::NodeSource + ?Sized>(
        profile: &crate::framework::Profile,
        pod: &PodInfo,
        nodes: &N,
    ) -> Self {
        let filters = |f: Filter| profile.filters.contains(&f);
        let scores = |score: Score| profile.scores.iter().any(|(s, w)| *w != 0 && *s == score);
        CycleState {
            inter_pod: interpod::State::new(
                pod,
                nodes,
                filters(Filter::InterPodAffinity),
                scores(Score::InterPodAffinity),
            )
            .map(Arc::new),
            spread: spread::State::new(
                pod,
                nodes,
                &profile.spread_defaults,
                filters(Filter::TopologySpread),
                scores(Score::TopologySpread),
            )
            .map(Arc::new),
            volumes: if filters(Filter::Volumes) {
                volume::State::new(pod, nodes.volumes(), &mut |claim| {
                    mounted_elsewhere(nodes, pod, claim)
                })
                .map(Arc::new)
            } else {
                None
            },
            devices: if filters(Filter::DynamicResources) {
                devices::State::new(pod, nodes.volumes()).map(Arc::new)
            } else {
                None
            },
        }
    }

    /// True when a node's verdict depends on other pods: placing a pod anywhere may
    /// change it, so what was worked out over the nodes must be worked out again.
    pub fn reads_other_pods(&self) -> bool {
        self.inter_pod.is_some() || self.spread.is_some()
    }
}

/// True when a placed pod other than `pod` mounts `claim` (kube-scheduler counts the
/// pods of every node, bound or assumed).
fn mounted_elsewhere<N: crate::framework::NodeSource + ?Sized>(
    nodes: &N,
    pod: &PodInfo,
    claim: &crate::model::ClaimKey,
) -> bool {
    let mut found = false;
    nodes.visit_all(&mut |n, _| {
        found = found
            || n.pods.iter().any(|p| {
                p.key != pod.key
                    && p.key.namespace == claim.namespace
                    && p.claims.as_ref().is_some_and(|c| c.contains(&claim.name))
            });
    });
    found
}

impl Filter {
    /// The filters of the default profile, cheapest first.
    pub const DEFAULT: [Filter; 13] = [
        Filter::Unschedulable,
        Filter::NodeName,
        Filter::Taints,
        Filter::NodeAffinity,
        Filter::Ports,
        Filter::Exclusive {
            system_pods_count: false,
        },
        Filter::GpuMemory,
        Filter::Fit,
        Filter::Numa,
        Filter::Volumes,
        Filter::DynamicResources,
        Filter::InterPodAffinity,
        Filter::TopologySpread,
    ];

    /// The plugin's name, as in kube-scheduler.
    pub fn name(&self) -> &'static str {
        match self {
            Filter::Unschedulable => "NodeUnschedulable",
            Filter::NodeName => "NodeName",
            Filter::Taints => "TaintToleration",
            Filter::NodeAffinity => "NodeAffinity",
            Filter::Ports => "NodePorts",
            Filter::Fit => "NodeResourcesFit",
            Filter::Exclusive { .. } => "NodeExclusive",
            Filter::Numa => "NUMATopology",
            Filter::GpuMemory => "GPUMemory",
            Filter::InterPodAffinity => "InterPodAffinity",
            Filter::TopologySpread => "PodTopologySpread",
            Filter::Volumes => "VolumeBinding",
            Filter::DynamicResources => "DynamicResources",
        }
    }

    /// True when the filter's answer for `pod` depends only on what a node's class
    /// holds (see [`crate::classes`]), so one node of each class answers for all.
    pub fn class_wide(&self, pod: &PodInfo) -> bool {
        match self {
            Filter::Unschedulable | Filter::Taints | Filter::GpuMemory => true,
            Filter::NodeAffinity => crate::classes::required_affinity_is_class_wide(pod),
            Filter::NodeName
            | Filter::Ports
            | Filter::Fit
            | Filter::Numa
            | Filter::Exclusive { .. }
            | Filter::InterPodAffinity
            | Filter::TopologySpread
            | Filter::Volumes
            | Filter::DynamicResources => false,
        }
    }

    /// True when the filter passes every node for `pod`, whatever the node: the pod
    /// names no node, asks for no host port, or is a system pod (which goes anywhere);
    /// no inter-pod term constrains it.
    pub fn passes_everywhere(&self, pod: &PodInfo, cx: &CycleState) -> bool {
        match self {
            Filter::InterPodAffinity => cx.inter_pod.as_ref().is_none_or(|s| !s.filters()),
            Filter::TopologySpread => cx.spread.as_ref().is_none_or(|s| !s.filters()),
            Filter::Volumes => cx.volumes.is_none(),
            Filter::DynamicResources => cx.devices.is_none(),
            Filter::NodeName => pod.node_name.is_none(),
            Filter::Ports => pod.host_ports.is_empty(),
            Filter::Exclusive { .. } => pod.daemonset,
            Filter::GpuMemory => pod.gpu_memory_min_mib.is_none(),
            Filter::NodeAffinity => !pod.has_node_constraints(),
            Filter::Unschedulable | Filter::Taints | Filter::Fit | Filter::Numa => false,
        }
    }

    /// Runs the filter; `cx` is what the cycle counted for `pod`.
    #[inline]
    pub fn filter(
        &self,
        cx: &CycleState,
        pod: &PodInfo,
        node: &NodeInfo,
        why: &mut dyn FnMut(Reason),
    ) -> bool {
        match self {
            Filter::InterPodAffinity => cx.inter_pod.as_ref().is_none_or(|s| s.filter(node, why)),
            Filter::TopologySpread => cx.spread.as_ref().is_none_or(|s| s.filter(node, why)),
            Filter::Volumes => cx.volumes.as_ref().is_none_or(|s| s.filter(pod, node, why)),
            Filter::DynamicResources => cx.devices.as_ref().is_none_or(|s| s.filter(node, why)),
            Filter::Unschedulable => unschedulable::filter(pod, node, why),
            Filter::NodeName => node_name::filter(pod, node, why),
            Filter::Taints => taints::filter(pod, node, why),
            Filter::NodeAffinity => node_affinity::filter(pod, node, why),
            Filter::Ports => ports::filter(pod, node, why),
            Filter::Fit => fit::filter(pod, node, why),
            Filter::Numa => numa::filter(pod, node, why),
            Filter::GpuMemory => gpu_memory::filter(pod, node, why),
            Filter::Exclusive { system_pods_count } => {
                exclusive::filter(pod, node, *system_pods_count, why)
            }
        }
    }
}

/// A score plugin. `score` gives a raw score; `normalize` maps the raw scores of all
/// feasible nodes to 0..=[`MAX_SCORE`].
#[derive(Clone, Debug, PartialEq)]
pub enum Score {
    /// Packing or spreading by requested/allocatable (`NodeResourcesFit` scoring).
    Packing(packing::Packing),
    /// Preferred node affinity (`NodeAffinity` scoring).
    NodeAffinity,
    /// Fewer untolerated PreferNoSchedule taints (`TaintToleration` scoring).
    Taints,
    /// Least absolute unused capacity (or its price) left on the node.
    LeastWaste(waste::Waste),
    /// Fewest NUMA zones spanned (`NUMATopology` scoring).
    Numa,
    /// Preferred inter-pod affinity and anti-affinity, and existing pods' terms about
    /// the pod (`InterPodAffinity` scoring).
    InterPodAffinity,
    /// `ScheduleAnyway` topology spread constraints (`PodTopologySpread` scoring).
    /// Its normalization reads the feasible nodes' domains, so the cycle works it out
    /// once they are known and it keeps no raw-score column (list it last).
    TopologySpread,
}

/// A score plugin prepared for one pod (see [`Score::prepare`]).
#[derive(Clone, Debug, PartialEq)]
pub enum ScoreFor {
    /// See [`Score::Packing`].
    Packing(packing::PackingFor),
    /// See [`Score::NodeAffinity`].
    NodeAffinity,
    /// See [`Score::Taints`].
    Taints,
    /// See [`Score::LeastWaste`].
    LeastWaste(waste::WasteFor),
    /// See [`Score::Numa`].
    Numa,
    /// See [`Score::InterPodAffinity`]; `None`: nothing scores the pod.
    InterPodAffinity(Option<Arc<interpod::State>>),
    /// See [`Score::TopologySpread`]: scored after filtering, 0 here.
    TopologySpread,
}

impl ScoreFor {
    /// The raw score of `node` for the pod it was prepared for.
    #[inline]
    pub fn score(&self, pod: &PodInfo, node: &NodeInfo) -> i64 {
        match self {
            ScoreFor::Packing(p) => p.score(node),
            ScoreFor::NodeAffinity => node_affinity::score(pod, node),
            ScoreFor::Taints => taints::score(pod, node),
            ScoreFor::LeastWaste(w) => w.waste(node),
            ScoreFor::Numa => numa::score(pod, node),
            ScoreFor::InterPodAffinity(s) => s.as_ref().map_or(0, |s| s.score(node)),
            ScoreFor::TopologySpread => 0,
        }
    }
}

/// Weights per resource prepared for one pod, laid out for scoring many nodes: the
/// built-in resources in fixed places ([`ResourceKind::builtin`] order; 0: not weighed;
/// a resource listed twice counts with both weights), the extended ones listed.
#[derive(Clone, Debug, PartialEq)]
pub struct Weighed {
    /// The weight of each built-in resource.
    pub weights: [i64; 4],
    /// The pod's request of each built-in resource.
    pub wants: [i64; 4],
    /// Extended resource, weight, the pod's request.
    pub extended: Vec<(std::sync::Arc<str>, i64, i64)>,
}

impl Weighed {
    /// `weights` (resource, weight) laid out, with the pod's `requests`.
    pub fn new<'a>(
        weights: impl IntoIterator<Item = (&'a ResourceKind, i64)>,
        requests: &crate::model::Resources,
    ) -> Self {
        let mut w = Weighed {
            weights: [0; 4],
            wants: requests.builtins(),
            extended: Vec::new(),
        };
        for (kind, weight) in weights {
            match (kind, kind.builtin()) {
                (ResourceKind::Extended(name), _) => {
                    w.extended
                        .push((name.clone(), weight, requests.extended_amount(name)));
                }
                (_, Some(i)) => w.weights[i] += weight,
                (_, None) => unreachable!("every kind but an extended one is built in"),
            }
        }
        w
    }
}

/// The highest score a plugin gives a node, as in kube-scheduler.
pub const MAX_SCORE: i64 = 100;

impl Score {
    /// The plugin's name.
    pub fn name(&self) -> &'static str {
        match self {
            Score::Packing(_) => "Packing",
            Score::NodeAffinity => "NodeAffinity",
            Score::Taints => "TaintToleration",
            Score::LeastWaste(_) => "LeastWaste",
            Score::Numa => "NUMATopology",
            Score::InterPodAffinity => "InterPodAffinity",
            Score::TopologySpread => "PodTopologySpread",
        }
    }

    /// The raw score of `node` for `pod` (with what the cycle counted, `cx`).
    #[inline]
    pub fn score(&self, cx: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64 {
        self.prepare(cx, pod).score(pod, node)
    }

    /// The score prepared for `pod`: what does not depend on the node is worked out
    /// once, for a cycle that scores many nodes.
    pub fn prepare(&self, cx: &CycleState, pod: &PodInfo) -> ScoreFor {
        match self {
            Score::InterPodAffinity => ScoreFor::InterPodAffinity(cx.inter_pod.clone()),
            Score::TopologySpread => ScoreFor::TopologySpread,
            Score::Packing(p) => ScoreFor::Packing(p.prepare(pod)),
            Score::NodeAffinity => ScoreFor::NodeAffinity,
            Score::Taints => ScoreFor::Taints,
            Score::LeastWaste(w) => ScoreFor::LeastWaste(w.prepare(pod)),
            Score::Numa => ScoreFor::Numa,
        }
    }

    /// True when the score of `pod` depends only on what a node's class holds (see
    /// [`crate::classes`]), so one node of each class answers for all.
    pub fn class_wide(&self, pod: &PodInfo) -> bool {
        match self {
            Score::Taints => true,
            Score::NodeAffinity => crate::classes::preferred_affinity_is_class_wide(pod),
            Score::Packing(_)
            | Score::LeastWaste(_)
            | Score::Numa
            | Score::InterPodAffinity
            | Score::TopologySpread => false,
        }
    }

    /// True when the plugin cannot tell nodes apart for this pod, so its scores can be
    /// skipped.
    pub fn is_flat_for(&self, pod: &PodInfo, cx: &CycleState) -> bool {
        match self {
            Score::InterPodAffinity => cx.inter_pod.as_ref().is_none_or(|s| !s.scores()),
            Score::TopologySpread => cx.spread.as_ref().is_none_or(|s| !s.scores()),
            Score::Packing(_) => false,
            Score::NodeAffinity => pod.preferred_affinity.is_empty(),
            Score::Taints => false,
            Score::LeastWaste(_) => false,
            Score::Numa => pod.requests.cpu <= 0 && pod.requests.gpu <= 0,
        }
    }

    /// Maps the raw scores in place to 0..=MAX_SCORE.
    pub fn normalize(&self, raw: &mut [i64]) {
        let (min, max) = range(raw.iter().copied());
        let norm = self.norm(min, max);
        for s in raw.iter_mut() {
            *s = norm.apply(*s);
        }
    }

    /// The normalization of raw scores whose least is `min` and greatest `max` (both 0
    /// when there are none): lets a cycle normalize each node's score on its own once
    /// the range is known, with no column of scores to rewrite.
    pub fn norm(&self, min: i64, max: i64) -> Norm {
        match self {
            // Already 0..=MAX_SCORE.
            Score::Packing(_) => Norm::Identity,
            Score::NodeAffinity => Norm::Max {
                max,
                reverse: false,
            },
            Score::Taints => Norm::Max { max, reverse: true },
            Score::LeastWaste(_) => Norm::Waste { min, max },
            Score::Numa => Norm::Numa { min, max },
            Score::InterPodAffinity => Norm::MinMax { min, max },
            // Normalized when worked out.
            Score::TopologySpread => Norm::Identity,
        }
    }
}

/// The least and greatest of `raw`, `(0, 0)` when it is empty.
pub fn range(raw: impl Iterator<Item = i64>) -> (i64, i64) {
    raw.fold(None, |acc: Option<(i64, i64)>, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
    .unwrap_or((0, 0))
}

/// A score plugin's normalization over one set of feasible nodes (see [`Score::norm`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Norm {
    /// The raw score is already 0..=MAX_SCORE.
    Identity,
    /// kube-scheduler's `DefaultNormalizeScore` with the greatest raw score `max`.
    Max {
        /// The greatest raw score.
        max: i64,
        /// "More is worse".
        reverse: bool,
    },
    /// Least waste (see [`waste::normalized`]).
    Waste {
        /// The least raw score.
        min: i64,
        /// The greatest raw score.
        max: i64,
    },
    /// `MAX_SCORE * (raw - min) / (max - min)` (see [`interpod::normalized`]).
    MinMax {
        /// The least raw score.
        min: i64,
        /// The greatest raw score.
        max: i64,
    },
    /// Fewest NUMA zones (see [`numa::normalized`]).
    Numa {
        /// The least raw score.
        min: i64,
        /// The greatest raw score.
        max: i64,
    },
}

impl Norm {
    /// The normalized score of `raw`.
    #[inline]
    pub fn apply(self, raw: i64) -> i64 {
        match self {
            Norm::Identity => raw,
            Norm::Max { max: 0, reverse } => {
                if reverse {
                    MAX_SCORE
                } else {
                    raw
                }
            }
            Norm::Max { max, reverse } => {
                let s = raw * MAX_SCORE / max;
                if reverse { MAX_SCORE - s } else { s }
            }
            Norm::Waste { min, max } => waste::normalized(raw, min, max),
            Norm::Numa { min, max } => numa::normalized(raw, min, max),
            Norm::MinMax { min, max } => interpod::normalized(raw, min, max),
        }
    }
}

/// kube-scheduler's `DefaultNormalizeScore`: scale so the highest raw score becomes
/// MAX_SCORE; `reverse` turns "more is worse" into "more is better".
pub fn normalize_max(raw: &mut [i64], reverse: bool) {
    let max = raw.iter().copied().max().unwrap_or(0);
    let norm = Norm::Max { max, reverse };
    for s in raw.iter_mut() {
        *s = norm.apply(*s);
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Builders for plugin tests.
    use crate::model::*;

    /// A pod with a CPU and memory request.
    pub fn pod(cpu: i64, mem: i64) -> PodInfo {
        PodInfo {
            key: PodKey::new("ns", "p"),
            uid: "uid".into(),
            requests: Resources::cpu_mem(cpu, mem),
            declares_requests: cpu > 0 || mem > 0,
            ..Default::default()
        }
    }

    /// A node with CPU and memory allocatable.
    pub fn node(name: &str, cpu: i64, mem: i64) -> NodeInfo {
        NodeInfo::new(name, Resources::cpu_mem(cpu, mem), 110)
    }

    /// Resource kinds for property tests: the built-in ones and two extended ones.
    pub fn kind(i: u8) -> ResourceKind {
        match i % 6 {
            0 => ResourceKind::Cpu,
            1 => ResourceKind::Memory,
            2 => ResourceKind::EphemeralStorage,
            3 => ResourceKind::Gpu,
            4 => ResourceKind::Extended("example.com/fpga".into()),
            _ => ResourceKind::Extended("hugepages-2Mi".into()),
        }
    }

    /// Amounts of the kinds of [`kind`], in that order (memory, storage and hugepages
    /// in units of 16 MiB).
    pub fn amounts(v: &[i64]) -> Resources {
        let mut r = Resources::default();
        for (i, a) in v.iter().enumerate() {
            // Bytes for memory and storage, small counts for the rest.
            let scale = if matches!(i, 1 | 2 | 5) { 1 << 24 } else { 1 };
            r.set(&kind(i as u8), a * scale);
        }
        r
    }

    /// The names of the nodes of `snap` that pass every filter of the default profile
    /// for `pod`, with what its cycle counts.
    pub fn feasible_names(pod: &PodInfo, snap: &crate::snapshot::Snapshot) -> Vec<String> {
        let profile = crate::framework::Profile::default();
        let cx = super::CycleState::new(&profile, pod, snap);
        snap.nodes()
            .filter(|(_, n)| crate::framework::feasible(&profile, &cx, pod, n))
            .map(|(_, n)| n.name.to_string())
            .collect()
    }

    /// Collects a filter's verdict and reasons.
    pub fn run(f: &super::Filter, p: &PodInfo, n: &NodeInfo) -> (bool, Vec<String>) {
        let mut reasons = Vec::new();
        let ok = f.filter(&super::CycleState::default(), p, n, &mut |r| {
            reasons.push(r.to_string())
        });
        (ok, reasons)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_table() {
        let cases: [(&[i64], bool, &[i64]); 4] = [
            (&[0, 5, 10], false, &[0, 50, 100]),
            (&[0, 5, 10], true, &[100, 50, 0]),
            (&[0, 0], false, &[0, 0]),
            (&[0, 0], true, &[100, 100]),
        ];
        for (raw, rev, want) in cases {
            let mut v = raw.to_vec();
            normalize_max(&mut v, rev);
            assert_eq!(v, want, "normalize_max({raw:?}, {rev})");
        }
    }
}
