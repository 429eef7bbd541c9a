//! A pod as the scheduler sees it: everything the filters and scores read, parsed once.

use std::fmt;
use std::sync::Arc;

use super::labels::{Labels, SelectorTerm, Toleration};
use super::resources::Resources;

/// A pod's namespace and name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodKey {
    /// The namespace.
    pub namespace: Arc<str>,
    /// The name.
    pub name: Arc<str>,
}

impl PodKey {
    /// A key from a namespace and a name.
    pub fn new(namespace: &str, name: &str) -> Self {
        PodKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for PodKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The pod's phase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Phase {
    /// Not yet running.
    #[default]
    Pending,
    /// Running.
    Running,
    /// Ended successfully; holds no resources.
    Succeeded,
    /// Ended in failure; holds no resources.
    Failed,
    /// Unknown.
    Unknown,
}

impl Phase {
    /// True for phases in which the pod no longer holds node resources.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed)
    }
}

/// The protocol of a host port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// TCP (the default).
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

/// A host port a container asks for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// The protocol.
    pub protocol: Protocol,
    /// The host IP; empty or `0.0.0.0` means every address.
    pub ip: Arc<str>,
    /// The port.
    pub port: u16,
}

impl HostPort {
    /// True when two host ports cannot both be bound on one node.
    pub fn conflicts(&self, other: &HostPort) -> bool {
        let wild = |ip: &str| ip.is_empty() || ip == "0.0.0.0";
        self.port == other.port
            && self.protocol == other.protocol
            && (wild(&self.ip) || wild(&other.ip) || self.ip == other.ip)
    }
}

/// A pod, parsed for scheduling.
#[derive(Clone, Debug, Default)]
pub struct PodInfo {
    /// Namespace and name.
    pub key: PodKey,
    /// The UID; a binding names it so a recreated pod of the same name is never bound
    /// by mistake.
    pub uid: Arc<str>,
    /// `spec.schedulerName`.
    pub scheduler_name: Arc<str>,
    /// `spec.nodeName`, once bound.
    pub node_name: Option<Arc<str>>,
    /// `status.phase`.
    pub phase: Phase,
    /// True once `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// The effective request: containers, init containers, overhead and pod-level
    /// resources combined the way kube-scheduler combines them.
    pub requests: Resources,
    /// True when any container, init container or the pod itself declares a request.
    pub declares_requests: bool,
    /// `spec.priority`.
    pub priority: i32,
    /// Creation time, in milliseconds since the Unix epoch.
    pub created_ms: i64,
    /// Labels.
    pub labels: Labels,
    /// `spec.nodeSelector`, as a single term of `In` requirements (empty: none).
    pub node_selector: SelectorTerm,
    /// Required node affinity terms (ORed); empty when there is none.
    pub required_affinity: Vec<SelectorTerm>,
    /// Preferred node affinity terms with their weights.
    pub preferred_affinity: Vec<(i32, SelectorTerm)>,
    /// Tolerations.
    pub tolerations: Vec<Toleration>,
    /// Host ports of all containers.
    pub host_ports: Vec<HostPort>,
    /// True for system pods: owned by a DaemonSet, or static (mirror) pods. They go
    /// anywhere and do not make a node "used" for exclusive pods.
    pub daemonset: bool,
    /// The pod asks for a node to itself (`drover.dev/exclusive: "true"`, or its
    /// namespace is configured so).
    pub exclusive: bool,
    /// The pod's `preemptionPolicy` is `Never`: drover evicts nothing for it.
    pub never_preempts: bool,
    /// The gang the pod says it belongs to, if any (shared: most pods have none, and a
    /// pod stays small for the passes that read every pod of the cluster).
    pub gang: Option<Arc<GangRef>>,
    /// The fair-share queue the pod names (`drover.dev/queue`), or its namespace's.
    pub queue: Option<Arc<str>>,
    /// Least memory per GPU the pod accepts, in MiB (`drover.dev/gpu-memory-min`);
    /// `i64::MAX` when the annotation does not parse (no node satisfies it).
    pub gpu_memory_min_mib: Option<i64>,
    /// Set by the engine, never read from the API: the pod is a pending member of a gang
    /// that already has members placed, so it completes room already granted and may
    /// use capacity held for another gang (see [`super::Reservation::admits`]).
    pub completes_gang: bool,
    /// `spec.schedulingGates`, by name: while any is left the pod is never attempted
    /// (and its gang waits whole).
    pub scheduling_gates: Vec<Arc<str>>,
    /// Inter-pod affinity and anti-affinity; `None` when the pod has no term.
    pub pod_affinity: Option<Arc<super::PodAffinity>>,
    /// `spec.topologySpreadConstraints`; `None` when the pod has none.
    pub topology_spread: Option<Arc<[super::SpreadConstraint]>>,
    /// The uid of the pod's controller (its owner reference with `controller: true`),
    /// for cluster default spread constraints.
    pub owner: Option<Arc<str>>,
    /// The PersistentVolumeClaims the pod mounts, by name in its namespace (generic
    /// ephemeral volumes as the claims they create, `<pod>-<volume>`); `None`: none.
    pub claims: Option<Arc<[Arc<str>]>>,
    /// `spec.resourceClaims` (Dynamic Resource Allocation); `None`: none.
    pub device_claims: Option<Arc<[super::DeviceClaimRef]>>,
}

/// How a pod names its gang: the `scheduling.x-k8s.io/pod-group` label or Volcano's
/// `scheduling.k8s.io/group-name` annotation, plus an optional minimum member count
/// (`drover.dev/min-member`) for gangs without a PodGroup object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GangRef {
    /// The group's name (in the pod's namespace).
    pub name: Arc<str>,
    /// The raw `drover.dev/min-member` annotation, when set.
    pub min_member: Option<Arc<str>>,
    /// Set when the pod's labels and annotations name different groups.
    pub conflict: Option<Arc<str>>,
    /// `drover.dev/topology-required` on the pod, as written.
    pub topology_required: Option<Arc<str>>,
    /// `drover.dev/topology-preferred` on the pod, as written.
    pub topology_preferred: Option<Arc<str>>,
}

impl PodInfo {
    /// True when the pod holds resources on a node: bound, not ended.
    pub fn is_assigned(&self) -> bool {
        self.node_name.is_some() && !self.phase.is_terminal()
    }

    /// True while the pod carries scheduling gates.
    pub fn is_gated(&self) -> bool {
        !self.scheduling_gates.is_empty()
    }

    /// True when the pod has required inter-pod anti-affinity terms (which other pods
    /// must respect: the symmetry of anti-affinity).
    pub fn has_required_anti_affinity(&self) -> bool {
        self.pod_affinity
            .as_ref()
            .is_some_and(|a| !a.required_anti.is_empty())
    }

    /// True when the pod constrains which nodes it may use by label or name.
    pub fn has_node_constraints(&self) -> bool {
        !self.node_selector.0.is_empty() || !self.required_affinity.is_empty()
    }
}
