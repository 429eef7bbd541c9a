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
pub mod volumes;
pub mod watch;

pub use run::{LogFormat, RunArgs, RunOptions, Shared, init_logging, run, run_from_args, run_with};

/// Reads and validates drover's configuration file (YAML; see docs/configuration.md).
pub fn load_config(
    path: &std::path::Path,
) -> Result<drover_core::config::Config, drover_core::config::ConfigError> {
    let origin = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|source| drover_core::config::ConfigError::Read {
            path: origin.clone(),
            source,
        })?;
    drover_core::config::FileConfig::parse(&text, &origin)?.validate()
}
