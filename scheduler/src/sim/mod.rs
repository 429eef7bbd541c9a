//! `drover simulate`: the scheduling core driven by a discrete-event simulator.

/// Arguments of `drover simulate`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {}

/// Runs `drover simulate`.
pub fn run_cli(_args: &SimulateArgs) -> anyhow::Result<()> {
    anyhow::bail!("drover simulate is not built yet")
}
