//! The `drover-extender` command: serves kube-scheduler's extender calls from drover's
//! core. See docs/extender.md.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let args = drover_extender::Args::parse();
    drover::k8s::init_logging(&args.log_format);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(drover_extender::cli::run_from_args(args))
}
