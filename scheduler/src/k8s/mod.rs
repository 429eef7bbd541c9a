//! The Kubernetes adapter: converts API objects into the core's model, watches the
//! cluster, and writes bindings, conditions and Events.

pub mod convert;
