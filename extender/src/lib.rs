//! drover as an HTTP extender for kube-scheduler.
//!
//! Clusters that keep kube-scheduler can still get drover's decisions: kube-scheduler
//! calls `drover-extender` over HTTP (`filter`, `prioritize`, `preempt`, `bind`, in the
//! wire format of `k8s.io/kube-scheduler/extender/v1`), and the extender answers from
//! the same core and the same kind of snapshot as the standalone scheduler:
//!
//! - [`wire`]: the JSON types, key for key as kube-scheduler sends and reads them;
//! - [`verbs`]: the answers ([`Extender`]), from drover's engine in extender mode
//!   (gangs, plans, queues, admissions: the same state and code as `drover run`);
//!   [`candidates`] turns a request's node names or Node objects into a view the
//!   framework runs over;
//! - [`watch`]: the watches of `drover run`, feeding the engine;
//! - [`server`]: the HTTP(S) server with body limits, timeouts and `/metrics`
//!   ([`metrics`]); [`cli`]: flags and start-up.
//!
//! See docs/extender.md for the KubeSchedulerConfiguration and its trade-offs.

pub mod candidates;
pub mod cli;
pub mod error;
pub mod metrics;
pub mod server;
pub mod verbs;
pub mod watch;
pub mod wire;

pub use cli::{Args, Options, Running, start};
pub use error::RequestError;
pub use verbs::{Extender, Reply, Verb};
