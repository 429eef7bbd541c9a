//! The cluster as the scheduling core sees it: nodes, pods, resources, selectors.
//! Built once from API objects (or from a simulator scenario); nothing here parses
//! strings on the hot path.

pub mod affinity;
pub mod budget;
pub mod labels;
pub mod node;
pub mod pod;
pub mod resources;
pub mod spread;
pub mod volume;

pub use affinity::{NamespaceScope, PodAffinity, PodAffinityTerm};
pub use budget::DisruptionBudget;
pub use labels::{
    LabelSelector, Labels, Requirement, SelectorOp, SelectorTerm, Taint, TaintEffect, Toleration,
};
pub use node::NodeInfo;
pub use node::{Numa, NumaZone, Reservation, Row};
pub use pod::{GangRef, HostPort, Phase, PodInfo, PodKey, Protocol};
pub use resources::{GPU, ResourceKind, Resources};
pub use spread::{SpreadConstraint, SpreadSelector};
pub use volume::{
    AccessModes, BindingMode, Claim, ClaimKey, CsiNode, DeviceClaim, DeviceClaimRef, StorageClass,
    Volume, VolumeChoice, VolumeMode, Volumes,
};
