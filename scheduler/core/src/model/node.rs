//! A node as the scheduler sees it, with the pods on it and their sums.

use std::sync::Arc;

use super::labels::{Labels, Taint};
use super::pod::{HostPort, PodInfo, PodKey};
use super::resources::Resources;
use crate::classes::ClassId;

/// A node and what is placed on it. Immutable once published in a snapshot: the cache
/// replaces a changed node with a new `Arc<NodeInfo>`.
#[derive(Clone, Debug, Default)]
pub struct NodeInfo {
    /// The node's name.
    pub name: Arc<str>,
    /// False for a placeholder: pods name a node the cache has not seen yet.
    pub known: bool,
    /// Labels.
    pub labels: Labels,
    /// Taints.
    pub taints: Vec<Taint>,
    /// `spec.unschedulable` (cordoned or draining).
    pub unschedulable: bool,
    /// `status.allocatable` (or capacity when allocatable is absent).
    pub allocatable: Resources,
    /// Allocatable pod count.
    pub max_pods: i64,
    /// Memory per GPU in MiB, from GPU Feature Discovery's `nvidia.com/gpu.memory`.
    pub gpu_memory_mib: Option<i64>,
    /// Sum of the requests of the pods on the node.
    pub requested: Resources,
    /// The pods on the node: bound, assumed, or bound by another scheduler.
    pub pods: Vec<Arc<PodInfo>>,
    /// Host ports in use.
    pub used_ports: Vec<HostPort>,
    /// How many of the pods are system pods (DaemonSet, static).
    pub system_pods: i64,
    /// How many of the pods asked for the node to themselves.
    pub exclusive_pods: i64,
    /// Pods with inter-pod affinity or anti-affinity terms: the cycle reads their terms
    /// (anti-affinity is symmetric; existing pods' terms score incoming pods).
    pub affinity_pods: i64,
    /// Bumped on every change; lets readers tell two versions apart.
    pub generation: u64,
    /// Capacity held for a waiting gang, if any (see [`Reservation`]).
    pub reservation: Option<Arc<Reservation>>,
    /// Per-NUMA-zone resources from the node's `NodeResourceTopology`, if published.
    pub numa: Option<Arc<Numa>>,
    /// The node's class in its snapshot, stamped by the cache (see [`crate::classes`]).
    pub class: ClassId,
}

/// A node's NUMA zones, as node-feature-discovery's topology updater publishes them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Numa {
    /// The kubelet's Topology Manager runs the `single-numa-node` policy: a pod's
    /// CPUs and devices must come from one zone.
    pub single_numa_node: bool,
    /// The zones of type `Node`, with what is available in each.
    pub zones: Vec<NumaZone>,
}

/// One NUMA zone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NumaZone {
    /// The zone's name (`node-0`, ...).
    pub name: Arc<str>,
    /// What the zone has available for new pods.
    pub available: Resources,
}

/// Capacity on a node held for a gang that waits for the node to drain: other pods of
/// the same or lower priority may use only what is left beyond it (backfill), so the
/// gang is not starved by a stream of small pods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    /// The gang's namespace.
    pub namespace: Arc<str>,
    /// The gang's name.
    pub gang: Arc<str>,
    /// The gang's priority; pods above it ignore the reservation.
    pub priority: i32,
    /// What the gang's members planned on this node need.
    pub amount: Resources,
    /// How many of its members are planned on this node.
    pub pods: i64,
}

impl Reservation {
    /// True when `pod` may ignore this reservation: it is a member of the gang, has a
    /// higher priority, or completes a gang already partly placed (whose placed members
    /// hold room that does nothing until the gang is whole).
    pub fn admits(&self, pod: &PodInfo) -> bool {
        pod.priority > self.priority
            || pod.completes_gang
            || pod
                .gang
                .as_ref()
                .is_some_and(|g| g.name == self.gang && pod.key.namespace == self.namespace)
    }
}

impl NodeInfo {
    /// A known node with the given allocatable resources and pod count.
    pub fn new(name: &str, allocatable: Resources, max_pods: i64) -> Self {
        NodeInfo {
            name: name.into(),
            known: true,
            allocatable,
            max_pods,
            ..Default::default()
        }
    }

    /// Number of pods on the node.
    pub fn pod_count(&self) -> i64 {
        self.pods.len() as i64
    }

    /// Adds `pod`'s requests and ports to the node.
    pub fn add_pod(&mut self, pod: Arc<PodInfo>) {
        self.requested.add(&pod.requests);
        self.system_pods += i64::from(pod.daemonset);
        self.exclusive_pods += i64::from(pod.exclusive && !pod.daemonset);
        self.affinity_pods += i64::from(pod.pod_affinity.is_some());
        self.used_ports.extend(pod.host_ports.iter().cloned());
        self.pods.push(pod);
        self.generation += 1;
    }

    /// Removes the pod with `key`; returns it when it was on the node.
    pub fn remove_pod(&mut self, key: &PodKey) -> Option<Arc<PodInfo>> {
        let i = self.pods.iter().position(|p| &p.key == key)?;
        let pod = self.pods.swap_remove(i);
        self.requested.sub(&pod.requests);
        self.system_pods -= i64::from(pod.daemonset);
        self.exclusive_pods -= i64::from(pod.exclusive && !pod.daemonset);
        self.affinity_pods -= i64::from(pod.pod_affinity.is_some());
        for hp in &pod.host_ports {
            if let Some(j) = self.used_ports.iter().position(|u| u == hp) {
                self.used_ports.swap_remove(j);
            }
        }
        self.generation += 1;
        Some(pod)
    }

    /// What is still free (allocatable minus requested).
    pub fn free(&self) -> Resources {
        let mut f = self.allocatable.clone();
        f.sub(&self.requested);
        f
    }

    /// The node's [`Row`].
    pub fn row(&self) -> Row {
        let mut flags = 0;
        for (set, flag) in [
            (self.known, Row::KNOWN),
            (self.reservation.is_some(), Row::RESERVED),
            (self.exclusive_pods > 0, Row::HELD),
            (!self.pods.is_empty(), Row::PODS),
            (self.pod_count() > self.system_pods, Row::WORKLOAD),
            (self.affinity_pods > 0, Row::AFFINITY),
        ] {
            if set {
                flags |= flag;
            }
        }
        Row {
            alloc: self.allocatable.builtins(),
            used: self.requested.builtins(),
            room: self.max_pods - self.pod_count(),
            class: self.class,
            flags,
        }
    }
}

/// The numbers of a node that the common filters and scores read (resource fit,
/// exclusive pods, packing, least waste, the node's class), in a few words. A snapshot
/// keeps each node's row beside it in its chunk (see [`crate::snapshot::Chunk`]), so a
/// scheduling cycle reads one contiguous array of rows instead of following a pointer
/// to every node; plugins read the node itself only for what its row does not hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Row {
    /// Allocatable CPU, memory, ephemeral storage and GPUs, in
    /// [`super::ResourceKind::builtin`] order.
    pub alloc: [i64; 4],
    /// What the node's pods request of them, in the same order.
    pub used: [i64; 4],
    /// How many more pods the node takes (its pod limit minus its pods).
    pub room: i64,
    /// The node's class.
    pub class: ClassId,
    /// [`Row::KNOWN`], [`Row::RESERVED`], [`Row::HELD`], [`Row::PODS`],
    /// [`Row::WORKLOAD`], [`Row::AFFINITY`].
    pub flags: u32,
}

impl Row {
    /// The slot holds a node the cache knows (not a placeholder).
    pub const KNOWN: u32 = 1;
    /// The node holds capacity for a waiting gang.
    pub const RESERVED: u32 = 1 << 1;
    /// The node runs a pod that asked for it exclusively.
    pub const HELD: u32 = 1 << 2;
    /// The node runs at least one pod.
    pub const PODS: u32 = 1 << 3;
    /// The node runs at least one pod that is not a system pod.
    pub const WORKLOAD: u32 = 1 << 4;
    /// The node runs at least one pod with inter-pod affinity or anti-affinity terms.
    pub const AFFINITY: u32 = 1 << 5;

    /// The row of an empty slot: no filter passes it.
    pub const EMPTY: Row = Row {
        alloc: [0; 4],
        used: [0; 4],
        room: 0,
        class: ClassId::NONE,
        flags: 0,
    };

    /// True when every flag of `flags` is set.
    #[inline]
    pub fn has(&self, flags: u32) -> bool {
        self.flags & flags == flags
    }
}
