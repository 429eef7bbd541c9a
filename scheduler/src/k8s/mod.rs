//! The Kubernetes adapter: converts API objects into the core's model, watches the
//! cluster, and writes bindings, conditions and Events.

pub mod binder;
pub mod convert;
pub mod events;
pub mod explain;
pub mod lease;
pub mod run;
pub mod serve;
pub mod status;

pub use run::{LogFormat, RunArgs, RunOptions, Shared, init_logging, run, run_from_args, run_with};
