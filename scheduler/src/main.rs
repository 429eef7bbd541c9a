//! The `drover` command: `drover run` schedules pods on a cluster, `drover explain`
//! says why a pod waits, `drover simulate` runs the same core on a simulated cluster
//! with no API server.

use clap::{Parser, Subcommand};

/// drover: a Kubernetes scheduler for data-science and AI workloads.
#[derive(Debug, Parser)]
#[command(name = "drover", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Schedule pods whose schedulerName is drover's, on the cluster in the kubeconfig.
    Run(drover::k8s::RunArgs),
    /// Explain why a pod waits (or where else it could go): its gang, and every
    /// node's verdict grouped by reason.
    Explain(drover::k8s::explain::ExplainArgs),
    /// Replay a cluster and a workload in virtual time and compare drover with a
    /// kube-scheduler-like baseline. With no arguments, runs the built-in scenario.
    Simulate(drover_sim::SimulateArgs),
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The error and its causes on one line, as a user reads it: no backtrace.
            eprintln!("drover: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => {
            drover::k8s::init_logging(&args.log_format);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(drover::k8s::run_from_args(args))
        }
        Command::Explain(args) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(drover::k8s::explain::explain_from_args(args))
        }
        Command::Simulate(args) => drover_sim::run_cli(&args),
    }
}
