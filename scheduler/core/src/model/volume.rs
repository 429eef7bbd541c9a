//! Persistent volumes as the scheduler sees them: claims, volumes, storage classes and
//! CSI nodes, parsed once from the API objects, and the pod's claims.
//!
//! The store is shared by every snapshot ([`Volumes`] behind an `Arc`) and copied only
//! when a watch changes it.

use std::collections::HashMap;
use std::sync::Arc;

use super::{LabelSelector, Labels, SelectorTerm};

/// `spec.accessModes` as a set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AccessModes(pub u8);

impl AccessModes {
    /// `ReadWriteOnce`.
    pub const RWO: AccessModes = AccessModes(1);
    /// `ReadOnlyMany`.
    pub const ROX: AccessModes = AccessModes(2);
    /// `ReadWriteMany`.
    pub const RWX: AccessModes = AccessModes(4);
    /// `ReadWriteOncePod`.
    pub const RWOP: AccessModes = AccessModes(8);

    /// The mode named `s` as the API spells it.
    pub fn parse(s: &str) -> Option<AccessModes> {
        Some(match s {
            "ReadWriteOnce" => Self::RWO,
            "ReadOnlyMany" => Self::ROX,
            "ReadWriteMany" => Self::RWX,
            "ReadWriteOncePod" => Self::RWOP,
            _ => return None,
        })
    }

    /// Both sets.
    pub fn union(self, other: AccessModes) -> AccessModes {
        AccessModes(self.0 | other.0)
    }

    /// True when every mode of `other` is in `self`.
    pub fn contains(self, other: AccessModes) -> bool {
        self.0 & other.0 == other.0
    }
}

/// A claim's or volume's `volumeMode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum VolumeMode {
    /// A filesystem (the default).
    #[default]
    Filesystem,
    /// A raw block device.
    Block,
}

/// A claim's namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClaimKey {
    /// Namespace.
    pub namespace: Arc<str>,
    /// Name.
    pub name: Arc<str>,
}

impl ClaimKey {
    /// The claim `namespace/name`.
    pub fn new(namespace: impl Into<Arc<str>>, name: impl Into<Arc<str>>) -> Self {
        ClaimKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for ClaimKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A PersistentVolumeClaim.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Claim {
    /// `metadata.uid`.
    pub uid: Arc<str>,
    /// `spec.volumeName`: the volume it is bound (or pre-bound) to.
    pub volume_name: Option<Arc<str>>,
    /// `status.phase` is `Bound`, or the binding is completed
    /// (`pv.kubernetes.io/bind-completed`).
    pub bound: bool,
    /// `spec.storageClassName`; `None` or empty: no class.
    pub class: Option<Arc<str>>,
    /// `spec.resources.requests.storage`, in bytes.
    pub request_bytes: i64,
    /// `spec.accessModes`.
    pub access_modes: AccessModes,
    /// `spec.volumeMode`.
    pub volume_mode: VolumeMode,
    /// `spec.selector` over volumes' labels.
    pub selector: Option<LabelSelector>,
    /// The `volume.kubernetes.io/selected-node` annotation: the node a provisioner is
    /// asked to create the volume for.
    pub selected_node: Option<Arc<str>>,
    /// Being deleted.
    pub deleting: bool,
}

/// A PersistentVolume.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Volume {
    /// `metadata.name`.
    pub name: Arc<str>,
    /// `spec.storageClassName`; `None`: no class.
    pub class: Option<Arc<str>>,
    /// `spec.capacity.storage`, in bytes.
    pub capacity_bytes: i64,
    /// `spec.accessModes`.
    pub access_modes: AccessModes,
    /// `spec.volumeMode`.
    pub volume_mode: VolumeMode,
    /// `spec.nodeAffinity.required.nodeSelectorTerms` (any of them): the nodes that
    /// can reach the volume. `None`: every node.
    pub node_affinity: Option<Vec<SelectorTerm>>,
    /// The legacy zone and region labels (`topology.kubernetes.io/zone`,
    /// `failure-domain.beta.kubernetes.io/zone`, ...), each with the values it allows
    /// (a label value may list several, separated by `__`).
    pub zone_labels: Vec<(Arc<str>, Vec<Arc<str>>)>,
    /// `spec.claimRef`: the claim it is bound or reserved to, with its uid when set.
    pub claim: Option<(ClaimKey, Option<Arc<str>>)>,
    /// `status.phase` is `Available`.
    pub available: bool,
    /// Being deleted.
    pub deleting: bool,
    /// Labels (for claims' selectors).
    pub labels: Labels,
    /// `spec.csi.driver`, when a CSI driver serves it.
    pub csi_driver: Option<Arc<str>>,
}

impl Volume {
    /// True when the node with `labels` and `name` can reach the volume: its node
    /// affinity and its legacy zone labels.
    pub fn reachable_from(&self, labels: &Labels, name: &str) -> bool {
        self.affinity_allows(labels, name) && self.zone_allows(labels)
    }

    /// True when the volume's node affinity admits the node.
    pub fn affinity_allows(&self, labels: &Labels, name: &str) -> bool {
        self.node_affinity
            .as_ref()
            .is_none_or(|terms| terms.iter().any(|t| t.matches(labels, name)))
    }

    /// True when the node's zone and region labels are among the volume's.
    pub fn zone_allows(&self, labels: &Labels) -> bool {
        self.zone_labels.iter().all(|(k, allowed)| {
            labels
                .get(k)
                .is_some_and(|v| allowed.iter().any(|a| &**a == v))
        })
    }

    /// True when the volume is bound or reserved to `claim` (with uid `uid`).
    pub fn claimed_by(&self, claim: &ClaimKey, uid: &str) -> bool {
        self.claim
            .as_ref()
            .is_some_and(|(k, u)| k == claim && u.as_deref().is_none_or(|u| u == uid))
    }
}

/// `volumeBindingMode` of a StorageClass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BindingMode {
    /// Claims are bound (or provisioned) as soon as they are created.
    #[default]
    Immediate,
    /// Binding and provisioning wait for the first pod that uses the claim.
    WaitForFirstConsumer,
}

/// The provisioner of classes whose volumes are created by hand (local volumes).
pub const NO_PROVISIONER: &str = "kubernetes.io/no-provisioner";

/// A StorageClass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StorageClass {
    /// `provisioner`.
    pub provisioner: Arc<str>,
    /// `volumeBindingMode`.
    pub binding_mode: BindingMode,
    /// `allowedTopologies`, as node selector terms (any of them); `None`: anywhere.
    pub allowed_topologies: Option<Vec<SelectorTerm>>,
}

impl StorageClass {
    /// True when the class can create a volume that the node with `labels` reaches.
    pub fn provisions_for(&self, labels: &Labels, name: &str) -> bool {
        &*self.provisioner != NO_PROVISIONER
            && self
                .allowed_topologies
                .as_ref()
                .is_none_or(|terms| terms.iter().any(|t| t.matches(labels, name)))
    }
}

/// A node's CSINode: how many volumes each driver may attach to it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CsiNode {
    /// `(driver name, allocatable.count)`; `None`: no limit published.
    pub drivers: Vec<(Arc<str>, Option<u32>)>,
}

impl CsiNode {
    /// The attach limit of `driver` on the node, if it has one.
    pub fn limit(&self, driver: &str) -> Option<u32> {
        self.drivers
            .iter()
            .find(|(d, _)| &**d == driver)
            .and_then(|(_, n)| *n)
    }
}

/// Every claim, volume, class and CSI node the scheduler knows, and the volumes it has
/// promised to claims whose binding the API has not shown yet.
#[derive(Clone, Debug, Default)]
pub struct Volumes {
    /// Claims by namespace and name.
    pub claims: HashMap<ClaimKey, Arc<Claim>>,
    /// Volumes by name.
    pub volumes: HashMap<Arc<str>, Arc<Volume>>,
    /// Storage classes by name.
    pub classes: HashMap<Arc<str>, Arc<StorageClass>>,
    /// CSINodes by node name.
    pub csi_nodes: HashMap<Arc<str>, Arc<CsiNode>>,
    /// Volumes chosen for a claim by a bind still under way, by volume name.
    pub assumed: HashMap<Arc<str>, ClaimKey>,
    /// Dynamic Resource Allocation claims (`resource.k8s.io` ResourceClaims), by
    /// namespace and name.
    pub device_claims: HashMap<ClaimKey, Arc<DeviceClaim>>,
}

/// A ResourceClaim, as far as drover reads it: drover does not allocate devices yet,
/// it places pods whose claims someone else allocated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceClaim {
    /// `status.allocation` is set.
    pub allocated: bool,
    /// `status.allocation.nodeSelector`: the nodes that reach the allocated devices;
    /// `None`: every node.
    pub nodes: Option<Vec<SelectorTerm>>,
    /// Being deleted.
    pub deleting: bool,
}

/// One entry of a pod's `spec.resourceClaims`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DeviceClaimRef {
    /// The entry's name in the pod.
    pub name: Arc<str>,
    /// The ResourceClaim it uses: `resourceClaimName`, or for a
    /// `resourceClaimTemplateName` the claim the resourceclaim controller created
    /// (`status.resourceClaimStatuses`); `None` while that claim is not created yet.
    pub claim: Option<Arc<str>>,
}

impl Volumes {
    /// True when no claim is known (then no pod's claims can be decided).
    pub fn is_empty(&self) -> bool {
        self.claims.is_empty() && self.volumes.is_empty()
    }

    /// True when volume `v` is free for `claim` (uid `uid`): pre-bound to it, or
    /// available, unclaimed and not promised to another claim.
    pub fn free_for(&self, v: &Volume, claim: &ClaimKey, uid: &str) -> bool {
        if v.deleting {
            return false;
        }
        if v.claimed_by(claim, uid) {
            return true;
        }
        v.claim.is_none() && v.available && self.assumed.get(&v.name).is_none_or(|c| c == claim)
    }
}

/// What binding a pod's waiting claim takes once its node is chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VolumeChoice {
    /// Bind the claim to this existing volume (set the volume's `claimRef`).
    Bind {
        /// The claim.
        claim: ClaimKey,
        /// Its uid.
        uid: Arc<str>,
        /// The volume.
        volume: Arc<str>,
    },
    /// Ask the class's provisioner for a volume on the node (set the claim's
    /// `volume.kubernetes.io/selected-node`).
    Provision {
        /// The claim.
        claim: ClaimKey,
        /// The node.
        node: Arc<str>,
    },
}

impl VolumeChoice {
    /// The claim it binds.
    pub fn claim(&self) -> &ClaimKey {
        match self {
            VolumeChoice::Bind { claim, .. } | VolumeChoice::Provision { claim, .. } => claim,
        }
    }
}
