//! drover's scheduling core: everything that decides, and nothing that does I/O.
//!
//! The [`engine`] owns every piece of scheduling policy — the cluster cache, the queue,
//! gangs, reservations, quotas, reclaim and preemption, the statuses drover reports —
//! and is driven sans I/O: drivers hand it what they saw (`handle_*`, with the time)
//! and carry out what it asks for (`poll_action`), waking it at `poll_timeout`. The
//! cluster (`drover run`), the simulator (`drover simulate`), the HTTP extender and
//! the benchmarks all run this very code; this crate's dependencies cannot reach the
//! network, the API server or an async runtime.
//!
//! Below the engine: [`model`] (pods and nodes, parsed once), [`cache`] and
//! [`snapshot`] (the cluster state, read lock-free), [`classes`], [`plugins`] and
//! [`framework`] (filters and scores, the hot path), [`queue`], [`gang`], [`quota`],
//! [`topology`], [`explain`] and [`config`].

pub mod cache;
pub mod classes;
pub mod config;
pub mod engine;
pub mod explain;
pub mod framework;
pub mod gang;
pub mod model;
pub mod plugins;
pub mod pool;
pub mod quantity;
pub mod queue;
pub mod quota;
pub mod snapshot;
pub mod topology;
