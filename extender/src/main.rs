//! The `drover-extender` command: serves kube-scheduler's extender calls from drover's
//! core. See docs/extender.md.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = drover_extender::Args::parse();
    drover::k8s::init_logging(&args.log_format);
    let ran = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(drover_extender::cli::run_from_args(args)));
    match ran {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The error and its causes on one line, as a user reads it: no backtrace.
            eprintln!("drover-extender: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
