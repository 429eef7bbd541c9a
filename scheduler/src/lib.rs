//! drover: a Kubernetes scheduler for data-science and AI workloads.
//!
//! The pure core — [`model`], [`snapshot`], [`cache`], [`classes`], [`plugins`], [`framework`],
//! [`queue`] — holds no I/O, so the scheduler, the extender, the simulator and the
//! benchmarks all run the very same code. [`k8s`] adapts it to a cluster.

pub mod cache;
pub mod classes;
pub mod config;
pub mod explain;
pub mod framework;
pub mod gang;
pub mod k8s;
pub mod metrics;
pub mod model;
pub mod plugins;
pub mod pool;
pub mod quantity;
pub mod queue;
pub mod quota;
pub mod sim;
pub mod snapshot;
pub mod topology;
