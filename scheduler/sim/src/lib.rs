//! `drover simulate`: the scheduling core driven by a discrete-event simulator.
//!
//! A scenario (node groups, teams) and a workload (jobs arriving over time) run in
//! virtual time under two [`Policy`]s — drover and a baseline modelled on
//! kube-scheduler's default profile — both driving drover's engine, the state machine
//! `drover run` drives on a cluster (see [`engine`]). No API server, no async
//! runtime: a day of a few hundred nodes takes seconds. docs/simulate.md describes the
//! files and every figure of the report.
//!
//! - [`scenario`]: the cluster (YAML, or the built-in one);
//! - [`workload`]: the jobs (YAML or CSV), [`generate`]: the built-in day;
//! - [`engine`]: the event loop and the policies;
//! - [`metrics`], [`report`], [`charts`]: what was measured and how it is shown.

pub mod charts;
pub mod engine;
pub mod faults;
pub mod fields;
pub mod generate;
pub mod metrics;
pub mod report;
pub mod scenario;
pub mod workload;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use rayon::prelude::*;
use serde::Serialize;

pub use engine::{Policy, Simulation, World};
use metrics::{JobOutcome, Sample, Summary};
use scenario::Scenario;
use workload::{JobKind, JobSpec};

/// Arguments of `drover simulate`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// Scenario file (YAML): node groups and teams. Default: the built-in data-science
    /// cluster.
    #[arg(long, value_name = "FILE")]
    pub scenario: Option<PathBuf>,
    /// Workload file: YAML, or CSV when the name ends in .csv. Default: the built-in
    /// day of notebooks, Dask clusters, training gangs and batch pods.
    #[arg(long, value_name = "FILE")]
    pub workload: Option<PathBuf>,
    /// Seed of the built-in workload (same seed, same jobs).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub seed: u64,
    /// Hours of virtual time. Default: 24 for the built-in day; for a workload file,
    /// until an hour after its last arrival (rounded up to the hour).
    #[arg(long, value_name = "H")]
    pub hours: Option<f64>,
    /// Also write a self-contained HTML report with charts.
    #[arg(long, value_name = "FILE")]
    pub report_html: Option<PathBuf>,
    /// Also write the charts as one SVG file.
    #[arg(long, value_name = "FILE")]
    pub report_svg: Option<PathBuf>,
    /// Also write every figure, sample and job outcome as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write the workload that was simulated (YAML, or CSV for .csv): a starting
    /// point for your own.
    #[arg(long, value_name = "FILE")]
    pub save_workload: Option<PathBuf>,
    /// How long a bind takes to land, in virtual milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 50.0)]
    pub bind_latency_ms: f64,
    /// How long an evicted pod takes to go (its termination grace), in virtual seconds.
    #[arg(long, value_name = "S", default_value_t = 30.0)]
    pub eviction_grace_seconds: f64,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

/// A scenario and a workload, ready to run.
#[derive(Clone, Debug)]
pub struct Input {
    /// The cluster.
    pub scenario: Scenario,
    /// Where the scenario came from, for the report.
    pub scenario_origin: String,
    /// The jobs, sorted by arrival.
    pub jobs: Vec<JobSpec>,
    /// Where the jobs came from, for the report.
    pub workload_origin: String,
    /// Virtual hours to simulate.
    pub hours: f64,
    /// How the simulated API server answers.
    pub world: World,
}

/// The cluster, summed up for the report.
#[derive(Clone, Debug, Serialize)]
pub struct ClusterInfo {
    /// Nodes.
    pub nodes: usize,
    /// Nodes with GPUs.
    pub gpu_nodes: usize,
    /// GPUs.
    pub gpus: i64,
    /// Cores on nodes without GPUs.
    pub cpu_node_cores: f64,
    /// GiB of memory on nodes without GPUs.
    pub cpu_node_memory_gib: f64,
    /// Node groups and their sizes.
    pub groups: Vec<(String, u32)>,
}

/// The workload, summed up for the report.
#[derive(Clone, Debug, Serialize)]
pub struct WorkloadInfo {
    /// Jobs arriving within the horizon.
    pub jobs: usize,
    /// Their pods.
    pub pods: usize,
    /// Per kind: (kind, jobs, pods).
    pub by_kind: Vec<(String, usize, usize)>,
    /// Jobs arriving after the horizon (not simulated).
    pub after_horizon: usize,
}

/// One policy's results.
#[derive(Clone, Debug, Serialize)]
pub struct PolicyRun {
    /// The policy's name.
    pub policy: String,
    /// What it does.
    pub description: String,
    /// Summary figures.
    pub summary: Summary,
    /// The state every simulated minute.
    pub samples: Vec<Sample>,
    /// Every job's fate.
    pub jobs: Vec<JobOutcome>,
    /// Engine decisions (pods or whole gangs looked at over a snapshot).
    pub decisions: u64,
    /// Simulator events processed.
    pub events: u64,
}

/// Everything a simulation found; the text, HTML, SVG and JSON reports are views of it.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The scenario's name and origin.
    pub scenario: String,
    /// The workload's origin.
    pub workload: String,
    /// Virtual hours simulated.
    pub hours: f64,
    /// The cluster.
    pub cluster: ClusterInfo,
    /// The workload.
    pub workload_info: WorkloadInfo,
    /// Team names.
    pub teams: Vec<String>,
    /// Their fair shares (0..=1).
    pub fair_shares: Vec<f64>,
    /// One entry per policy: drover first, then the baseline.
    pub runs: Vec<PolicyRun>,
}

impl Input {
    /// Builds the input from the command line: files or the built-ins.
    pub fn from_args(args: &SimulateArgs) -> anyhow::Result<Self> {
        if let Some(h) = args.hours
            && !(h.is_finite() && h > 0.0 && h <= 24.0 * 366.0)
        {
            bail!("--hours {h}: give a number of hours above 0 and at most a year (8784)");
        }
        let (scenario, scenario_origin) = match &args.scenario {
            Some(p) => (Scenario::from_file(p)?, p.display().to_string()),
            None => (Scenario::builtin(), "built-in".to_string()),
        };
        let (jobs, workload_origin, hours) = match &args.workload {
            Some(p) => {
                let jobs = workload::from_file(p, &scenario)?;
                let last_h = jobs.last().map_or(0.0, |j| j.arrival_ms as f64 / 3.6e6);
                let hours = args.hours.unwrap_or((last_h + 1.0).ceil());
                (jobs, format!("workload {}", p.display()), hours)
            }
            None => {
                let hours = args.hours.unwrap_or(24.0);
                (
                    generate::builtin_day(&scenario, args.seed, hours),
                    format!("built-in workload (seed {})", args.seed),
                    hours,
                )
            }
        };
        if !(0.0..=3_600_000.0).contains(&args.bind_latency_ms) {
            bail!(
                "--bind-latency-ms {}: give milliseconds from 0 to 3600000",
                args.bind_latency_ms
            );
        }
        if !(0.0..=86_400.0).contains(&args.eviction_grace_seconds) {
            bail!(
                "--eviction-grace-seconds {}: give seconds from 0 to 86400",
                args.eviction_grace_seconds
            );
        }
        Ok(Input {
            scenario,
            scenario_origin,
            jobs,
            workload_origin,
            hours,
            world: World {
                bind_latency_ms: args.bind_latency_ms.round() as i64,
                eviction_grace_ms: (args.eviction_grace_seconds * 1000.0).round() as i64,
            },
        })
    }
}

fn progress_bars(show: bool, hours: f64, names: &[&str]) -> (MultiProgress, Vec<ProgressBar>) {
    let target = if show {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let multi = MultiProgress::with_draw_target(target);
    let style = ProgressStyle::with_template(
        "{prefix:>9} [{bar:40}] {pos:>4}/{len} virtual min  {elapsed}",
    )
    .expect("a valid template")
    .progress_chars("=> ");
    let bars = names
        .iter()
        .map(|n| {
            multi.add(
                ProgressBar::new((hours * 60.0).round() as u64)
                    .with_style(style.clone())
                    .with_prefix(n.to_string()),
            )
        })
        .collect();
    (multi, bars)
}

/// Runs both policies over `input` (side by side on a scoring pool) and gathers the
/// report. `progress` shows a bar per policy on stderr.
pub fn simulate(input: &Input, progress: bool) -> Report {
    let scenario = &input.scenario;
    let nodes = scenario.nodes();
    let teams: Vec<String> = scenario.teams.iter().map(|t| t.name.clone()).collect();
    let fair = scenario.fair_shares();
    let horizon = (input.hours * 3_600_000.0).round() as i64;
    let policies = [Policy::drover(scenario), Policy::baseline()];
    let names: Vec<&str> = policies.iter().map(|p| p.name.as_str()).collect();
    let (_multi, bars) = progress_bars(progress, input.hours, &names);
    // On a scoring pool, so that each decision starts on the thread that asks for it
    // (see `drover_core::pool`); the two policies run side by side on it.
    let pool = drover_core::pool::build("drover-sim").expect("starting the simulator's threads");
    let outputs: Vec<engine::RunOutput> = pool.install(|| {
        policies
            .par_iter()
            .zip(&bars)
            .map(|(p, bar)| {
                let out = Simulation::new(p, input.world, scenario, &input.jobs, horizon)
                    .run(|now| bar.set_position((now / 60_000) as u64));
                bar.finish_and_clear();
                out
            })
            .collect()
    });
    let total_gpus: i64 = nodes.iter().map(|n| n.allocatable.gpu).sum();
    let runs = policies
        .iter()
        .zip(outputs)
        .map(|(p, out)| PolicyRun {
            policy: p.name.clone(),
            description: p.description.clone(),
            summary: metrics::summarize(
                &out.samples,
                &out.jobs,
                &teams,
                &fair,
                total_gpus,
                &out.evictions,
            ),
            samples: out.samples,
            jobs: out.jobs,
            decisions: out.decisions,
            events: out.events,
        })
        .collect();
    let arrived: Vec<&JobSpec> = input
        .jobs
        .iter()
        .filter(|j| j.arrival_ms <= horizon)
        .collect();
    let by_kind = JobKind::ALL
        .iter()
        .filter_map(|k| {
            let js: Vec<_> = arrived.iter().filter(|j| j.kind == *k).collect();
            (!js.is_empty()).then(|| {
                (
                    k.name().to_string(),
                    js.len(),
                    js.iter().map(|j| j.pod_count()).sum(),
                )
            })
        })
        .collect();
    let cpu_nodes: Vec<_> = nodes.iter().filter(|n| n.allocatable.gpu == 0).collect();
    Report {
        scenario: if scenario.name.is_empty() {
            input.scenario_origin.clone()
        } else {
            format!("{} ({})", scenario.name, input.scenario_origin)
        },
        workload: input.workload_origin.clone(),
        hours: input.hours,
        cluster: ClusterInfo {
            nodes: nodes.len(),
            gpu_nodes: nodes.len() - cpu_nodes.len(),
            gpus: total_gpus,
            cpu_node_cores: cpu_nodes.iter().map(|n| n.allocatable.cpu).sum::<i64>() as f64
                / 1000.0,
            cpu_node_memory_gib: cpu_nodes.iter().map(|n| n.allocatable.memory).sum::<i64>() as f64
                / (1u64 << 30) as f64,
            groups: scenario
                .node_groups
                .iter()
                .map(|g| (g.name.clone(), g.count))
                .collect(),
        },
        workload_info: WorkloadInfo {
            jobs: arrived.len(),
            pods: arrived.iter().map(|j| j.pod_count()).sum(),
            by_kind,
            after_horizon: input.jobs.len() - arrived.len(),
        },
        teams,
        fair_shares: fair,
        runs,
    }
}

fn write(path: &PathBuf, what: &str, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text)
        .with_context(|| format!("cannot write the {what} to {}", path.display()))
}

/// Runs `drover simulate`.
pub fn run_cli(args: &SimulateArgs) -> anyhow::Result<()> {
    let input = Input::from_args(args)?;
    if let Some(p) = &args.save_workload {
        workload::write_file(p, &input.jobs)?;
    }
    let show = !args.quiet && std::io::stderr().is_terminal();
    let started = Instant::now();
    let report = simulate(&input, show);
    let elapsed = started.elapsed();
    let text = report::text(&report);
    print!("{text}");
    if let Some(p) = &args.report_html {
        write(p, "HTML report", &charts::html(&report, &text))?;
    }
    if let Some(p) = &args.report_svg {
        write(p, "SVG charts", &charts::svg(&report))?;
    }
    if let Some(p) = &args.json {
        let json = serde_json::to_string_pretty(&report).context("serializing the report")?;
        write(p, "JSON report", &json)?;
    }
    if !args.quiet {
        eprintln!(
            "simulated {} h of virtual time under 2 policies in {:.1} s",
            input.hours,
            elapsed.as_secs_f64()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> SimulateArgs {
        SimulateArgs {
            scenario: None,
            workload: None,
            seed: 1,
            hours: None,
            report_html: None,
            report_svg: None,
            json: None,
            save_workload: None,
            bind_latency_ms: 50.0,
            eviction_grace_seconds: 30.0,
            quiet: true,
        }
    }

    /// Files in, every report out: a user's own scenario and CSV trace, replayed.
    #[test]
    fn files_in_reports_out() {
        let dir = std::env::temp_dir().join(format!("drover-sim-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let scenario = dir.join("cluster.yaml");
        std::fs::write(
            &scenario,
            "name: tiny\ntopologyLevels: [rack]\nnodeGroups:\n- {name: cpu, count: 2, cpu: 8, memory: 32Gi}\n- {name: gpu, count: 2, cpu: 32, memory: 256Gi, gpus: 8, labels: {rack: \"r{i/2}\"}}\nteams:\n- {name: ml, share: 3}\n- {name: bi, share: 1}\n",
        )
        .unwrap();
        let trace = dir.join("trace.csv");
        std::fs::write(
            &trace,
            "name,arrival,duration,team,kind,replicas,cpu,memory,gpu,topologyLevel\n\
             t1,0,1h,ml,training,2,8,64Gi,8,rack\n\
             t2,10m,1h,ml,training,2,8,64Gi,8,\n\
             nb,5m,30m,bi,notebook,1,2,16Gi,0,\n",
        )
        .unwrap();
        let (html, svg, json, saved) = (
            dir.join("r.html"),
            dir.join("r.svg"),
            dir.join("r.json"),
            dir.join("saved.yaml"),
        );
        let a = SimulateArgs {
            scenario: Some(scenario.clone()),
            workload: Some(trace.clone()),
            report_html: Some(html.clone()),
            report_svg: Some(svg.clone()),
            json: Some(json.clone()),
            save_workload: Some(saved.clone()),
            ..args()
        };
        let input = Input::from_args(&a).unwrap();
        assert_eq!(
            input.hours, 2.0,
            "an hour past the last arrival, rounded up"
        );
        let report = simulate(&input, false);
        let text = report::text(&report);
        assert!(text.contains("tiny ("), "{text}");
        for p in &report.runs {
            // t2 starts once t1 ends (after its backoff) and runs past the end.
            let s = &p.summary;
            assert_eq!((s.jobs, s.completed, s.running), (3, 2, 1), "{}", p.policy);
        }
        run_cli(&a).unwrap();
        let html = std::fs::read_to_string(html).unwrap();
        assert!(
            html.contains("<svg") && html.contains("GPUs allocated") && !html.contains("<script")
        );
        assert!(std::fs::read_to_string(svg).unwrap().starts_with("<svg"));
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
        assert_eq!(json["runs"][0]["policy"], "drover");
        let again = workload::from_file(&saved, &input.scenario).unwrap();
        assert_eq!(again, input.jobs, "a saved workload reads back the same");
        let bad = SimulateArgs {
            hours: Some(0.0),
            ..args()
        };
        assert!(
            Input::from_args(&bad)
                .unwrap_err()
                .to_string()
                .contains("--hours 0")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
