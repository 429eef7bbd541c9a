//! drover on a cluster: the Kubernetes adapter ([`k8s`]) that drives the engine of
//! [`drover_core`] from watches and carries out its actions through the API, and the
//! metrics it serves ([`metrics`]). The `drover` binary adds `simulate` from
//! `drover-sim`.

pub mod k8s;
pub mod metrics;
