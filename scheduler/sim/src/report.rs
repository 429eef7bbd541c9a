//! The plain-text report: drover and the baseline side by side on every figure.

use std::fmt::Write as _;

use super::metrics::{JobOutcome, JobStatus, Sample};
use super::{PolicyRun, Report};

/// Formats seconds as `42s`, `7m`, `3h05m`.
pub fn fmt_secs(s: f64) -> String {
    let s = s.max(0.0).round() as i64;
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m", s / 60)
    } else {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    }
}

fn pct(v: f64) -> String {
    format!("{:.1}%", v * 100.0)
}

/// Groups digits in thousands: 12345 → `12,345`.
pub fn thousands(v: f64) -> String {
    let n = v.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// A figure drawn as a sparkline: title, value, fixed scale (or the max of both runs).
type SeriesRow = (&'static str, fn(&Sample) -> f64, Option<f64>);

/// A figure shown at a few instants: title, formatted value.
type PointRow = (&'static str, fn(&Sample) -> String);

const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// A sparkline of `f` over `samples` in `width` equal spans of time, scaled to `max`.
pub fn sparkline(samples: &[Sample], width: usize, max: f64, f: impl Fn(&Sample) -> f64) -> String {
    let Some(end) = samples.last().map(|s| s.t_min) else {
        return String::new();
    };
    let mut out = String::new();
    for b in 0..width {
        let (lo, hi) = (
            end * b as f64 / width as f64,
            end * (b + 1) as f64 / width as f64,
        );
        let vals: Vec<f64> = samples
            .iter()
            .filter(|s| s.t_min >= lo && (s.t_min < hi || (b + 1 == width && s.t_min <= hi)))
            .map(&f)
            .collect();
        if vals.is_empty() {
            out.push(' ');
            continue;
        }
        let v = vals.iter().sum::<f64>() / vals.len() as f64;
        let level = if max > 0.0 {
            ((v / max) * (BARS.len() - 1) as f64).round() as usize
        } else {
            0
        };
        out.push(BARS[level.min(BARS.len() - 1)]);
    }
    out
}

/// The sample closest to `t_min`.
fn at(samples: &[Sample], t_min: f64) -> Option<&Sample> {
    samples
        .iter()
        .min_by(|a, b| (a.t_min - t_min).abs().total_cmp(&(b.t_min - t_min).abs()))
}

struct Table {
    rows: Vec<(String, Vec<String>)>,
}

impl Table {
    fn new() -> Self {
        Table { rows: Vec::new() }
    }

    fn section(&mut self, title: &str) {
        self.rows.push((title.to_string(), Vec::new()));
    }

    fn row(&mut self, label: &str, values: Vec<String>) {
        self.rows.push((format!("  {label}"), values));
    }

    fn render(&self, out: &mut String, header: &[&str]) {
        let label_w = self
            .rows
            .iter()
            .map(|r| r.0.chars().count())
            .max()
            .unwrap_or(0);
        let col_w = self
            .rows
            .iter()
            .flat_map(|r| r.1.iter().map(|v| v.chars().count()))
            .chain(header.iter().map(|h| h.chars().count()))
            .max()
            .unwrap_or(0)
            + 3;
        let _ = write!(out, "{:label_w$}", "");
        for h in header {
            let _ = write!(out, "{h:>col_w$}");
        }
        out.push('\n');
        for (label, values) in &self.rows {
            if values.is_empty() {
                let _ = writeln!(out, "{label}");
                continue;
            }
            let _ = write!(out, "{label:label_w$}");
            for v in values {
                let _ = write!(out, "{v:>col_w$}");
            }
            out.push('\n');
        }
    }
}

/// Renders the whole report.
pub fn text(r: &Report) -> String {
    let mut o = String::new();
    let c = &r.cluster;
    let _ = writeln!(
        o,
        "drover simulate: scenario {:?}, {}, {} h of virtual time",
        r.scenario, r.workload, r.hours
    );
    o.push('\n');
    let groups: Vec<String> = c.groups.iter().map(|(n, k)| format!("{n} ×{k}")).collect();
    let _ = writeln!(o, "cluster   {} nodes: {}", c.nodes, groups.join(", "));
    let _ = writeln!(
        o,
        "          {} GPUs on {} nodes; {} cores and {} GiB of memory on {} nodes without GPUs",
        c.gpus,
        c.gpu_nodes,
        thousands(c.cpu_node_cores),
        thousands(c.cpu_node_memory_gib),
        c.nodes - c.gpu_nodes
    );
    let teams: Vec<String> = r
        .teams
        .iter()
        .zip(&r.fair_shares)
        .map(|(t, s)| format!("{t} (fair share {:.0}%)", s * 100.0))
        .collect();
    let _ = writeln!(o, "teams     {}", teams.join(", "));
    let kinds: Vec<String> = r
        .workload_info
        .by_kind
        .iter()
        .map(|(k, jobs, pods)| {
            format!(
                "{jobs} {k} ({pods} pod{})",
                if *pods == 1 { "" } else { "s" }
            )
        })
        .collect();
    let _ = writeln!(
        o,
        "workload  {} jobs, {} pods: {}",
        thousands(r.workload_info.jobs as f64),
        thousands(r.workload_info.pods as f64),
        kinds.join(", ")
    );
    if r.workload_info.after_horizon > 0 {
        let _ = writeln!(
            o,
            "          ({} more jobs arrive after the {} h horizon and are not simulated)",
            r.workload_info.after_horizon, r.hours
        );
    }
    o.push('\n');
    for (i, run) in r.runs.iter().enumerate() {
        let _ = writeln!(
            o,
            "{}{:<9} {}",
            if i == 0 { "policies  " } else { "          " },
            run.policy,
            run.description
        );
    }
    o.push('\n');

    let runs = &r.runs;
    let each = |f: &dyn Fn(&PolicyRun) -> String| runs.iter().map(f).collect::<Vec<_>>();
    let mut t = Table::new();
    t.section("allocation (time-weighted mean over the run)");
    t.row("GPUs allocated", each(&|p| pct(p.summary.gpu_alloc_mean)));
    t.row(
        "memory allocated, nodes without GPUs",
        each(&|p| pct(p.summary.mem_alloc_mean)),
    );
    t.row(
        "CPU allocated, nodes without GPUs",
        each(&|p| pct(p.summary.cpu_alloc_mean)),
    );
    t.row(
        "GPU-hours allocated",
        each(&|p| thousands(p.summary.gpu_hours_allocated)),
    );
    t.row(
        "  held by partly placed gangs (doing no work)",
        each(&|p| thousands(p.summary.partial_gang_gpu_hours)),
    );
    t.row(
        "  held by started jobs",
        each(&|p| thousands(p.summary.gpu_hours_started)),
    );
    t.row(
        "    of which by gangs spread against their required topology",
        each(&|p| thousands(p.summary.gpu_hours_spread)),
    );
    t.row(
        "    of which run by evicted pods (lost, done again)",
        each(&|p| thousands(p.summary.gpu_hours_lost)),
    );
    t.section("fragmentation");
    t.row(
        "free GPUs unusable by the waiting work, mean / max",
        each(&|p| {
            format!(
                "{:.1} / {}",
                p.summary.gpus_unusable_mean, p.summary.gpus_unusable_max
            )
        }),
    );
    t.row(
        "free GPUs on GPU nodes already in use, mean",
        each(&|p| format!("{:.1}", p.summary.gpus_on_busy_nodes_mean)),
    );
    t.row(
        "whole free nodes, mean / min",
        each(&|p| {
            format!(
                "{:.1} / {}",
                p.summary.free_nodes_mean, p.summary.free_nodes_min
            )
        }),
    );
    t.row(
        "whole free GPU nodes, mean / min",
        each(&|p| {
            format!(
                "{:.1} / {}",
                p.summary.free_gpu_nodes_mean, p.summary.free_gpu_nodes_min
            )
        }),
    );
    t.section("gangs");
    t.row(
        "gangs ever partly placed",
        each(&|p| p.summary.partial_gangs.to_string()),
    );
    t.row(
        "gang-minutes spent partly placed",
        each(&|p| thousands(p.summary.partial_gang_minutes)),
    );
    t.row(
        "most gangs partly placed at once",
        each(&|p| p.summary.partial_gangs_max.to_string()),
    );
    t.row(
        "started gangs in one domain of their topology level*",
        each(&|p| {
            format!(
                "{} of {}",
                p.summary.topology_one_domain, p.summary.topology_started
            )
        }),
    );
    t.section("jobs");
    t.row(
        "completed / running / waiting at the end",
        each(&|p| {
            format!(
                "{} / {} / {}",
                p.summary.completed, p.summary.running, p.summary.waiting
            )
        }),
    );
    t.row(
        "wait p50 / p99, all teams**",
        each(&|p| {
            format!(
                "{} / {}",
                fmt_secs(p.summary.wait_p50_s),
                fmt_secs(p.summary.wait_p99_s)
            )
        }),
    );
    for (i, team) in r.teams.iter().enumerate() {
        t.row(
            &format!("wait p50 / p99, {team}"),
            each(&|p| {
                let s = &p.summary.teams[i];
                format!("{} / {}", fmt_secs(s.wait_p50_s), fmt_secs(s.wait_p99_s))
            }),
        );
    }
    t.section("share of the cluster vs fair share***");
    for (i, team) in r.teams.iter().enumerate() {
        t.row(
            &format!(
                "{team} (weight {:.0}%): GPUs / memory",
                r.fair_shares[i] * 100.0
            ),
            each(&|p| {
                let s = &p.summary.teams[i];
                format!("{} / {}", pct(s.gpu_share), pct(s.mem_share))
            }),
        );
    }
    for (i, team) in r.teams.iter().enumerate() {
        t.row(
            &format!("{team}: GPU share error"),
            each(&|p| pct(p.summary.teams[i].share_error)),
        );
    }
    t.section("evictions (pods of the team evicted, each created again)");
    for (i, team) in r.teams.iter().enumerate() {
        t.row(
            &format!("{team}: reclaimed / preempted / gang released"),
            each(&|p| {
                let s = &p.summary.teams[i];
                format!("{} / {} / {}", s.reclaimed, s.preempted, s.released)
            }),
        );
    }
    let header: Vec<&str> = runs.iter().map(|p| p.policy.as_str()).collect();
    t.render(&mut o, &header);
    o.push_str(
        "\n  *   drover places a gang that requires a level in one domain of it, or waits; it\n      \
         prefers fewer domains for a preferred level. The baseline sees no gangs.\n  \
         **  a job still waiting at the end counts with its wait so far (a lower bound).\n  \
         *** mean share of all GPUs / all memory held by the team's pods; the weight is the\n      \
         team's share over the sum of shares. The share error is the time-weighted mean of\n      \
         |GPU share - fair GPU share| while the team has GPU demand; the fair share divides\n      \
         the GPUs allocated at the time by weighted max-min over the teams with demand (no\n      \
         team above what it asks for), so it judges the division, not how much is used.\n      \
         drover enforces the teams' queues (guarantees, limits, weights, reclaim); the\n      \
         baseline knows no queues, only priorities.\n",
    );

    // Over time.
    let width = 48;
    let span_h = r.hours / width as f64;
    let _ = writeln!(
        o,
        "\nover time (each character is {}; the scale is given per figure)",
        fmt_secs(span_h * 3600.0)
    );
    let max_over = |f: &dyn Fn(&Sample) -> f64| {
        runs.iter()
            .flat_map(|p| p.samples.iter().map(f))
            .fold(0.0f64, f64::max)
    };
    let series: [SeriesRow; 5] = [
        ("GPUs allocated (0-100%)", |s| s.gpu_alloc, Some(1.0)),
        (
            "memory allocated, no-GPU nodes (0-100%)",
            |s| s.mem_alloc,
            Some(1.0),
        ),
        (
            "free GPUs unusable by waiting work",
            |s| s.gpus_unusable as f64,
            None,
        ),
        ("whole free nodes", |s| s.free_nodes as f64, None),
        ("pods waiting", |s| s.pending_pods as f64, None),
    ];
    for (title, f, max) in &series {
        let max = max.unwrap_or_else(|| max_over(f).max(1.0));
        let suffix = if title.contains('%') {
            String::new()
        } else {
            format!(" (0-{})", max.round())
        };
        let _ = writeln!(o, "  {title}{suffix}");
        for p in runs {
            let _ = writeln!(
                o,
                "    {:<9} {}",
                p.policy,
                sparkline(&p.samples, width, max, f)
            );
        }
    }
    // A few instants.
    let points: Vec<f64> = (0..=6).map(|i| r.hours * 60.0 * i as f64 / 6.0).collect();
    let labels: Vec<String> = points
        .iter()
        .map(|p| {
            if (p / 60.0).fract() == 0.0 {
                format!("{:.0}h", p / 60.0)
            } else {
                fmt_secs(p * 60.0)
            }
        })
        .collect();
    // Wide enough that labels of long runs never run together.
    let cw = labels.iter().map(|l| l.len() + 2).max().unwrap_or(0).max(8);
    let _ = write!(o, "\n  {:<44}", "at");
    for label in &labels {
        let _ = write!(o, "{label:>cw$}");
    }
    o.push('\n');
    let point_rows: [PointRow; 4] = [
        ("GPUs allocated", |s| format!("{:.0}%", s.gpu_alloc * 100.0)),
        ("memory allocated, no-GPU nodes", |s| {
            format!("{:.0}%", s.mem_alloc * 100.0)
        }),
        ("free GPUs unusable by waiting work", |s| {
            s.gpus_unusable.to_string()
        }),
        ("whole free nodes", |s| s.free_nodes.to_string()),
    ];
    for (title, f) in &point_rows {
        for p in runs {
            let _ = write!(o, "  {:<44}", format!("{title}, {}", p.policy));
            for t in &points {
                let v = at(&p.samples, *t).map(f).unwrap_or_default();
                let _ = write!(o, "{v:>cw$}");
            }
            o.push('\n');
        }
    }

    // Waiting jobs.
    o.push_str("\njobs still waiting at the end, by reason\n");
    for p in runs {
        let _ = writeln!(o, "  {} ({} waiting)", p.policy, p.summary.waiting);
        for (reason, n) in &p.summary.waiting_reasons {
            let _ = writeln!(o, "    {n:>4}  {reason}");
        }
        let mut waiting: Vec<&JobOutcome> = p
            .jobs
            .iter()
            .filter(|j| j.status == JobStatus::Waiting)
            .collect();
        waiting.sort_by(|a, b| b.wait_s.total_cmp(&a.wait_s).then(a.name.cmp(&b.name)));
        for j in waiting.iter().take(4) {
            let _ = writeln!(
                o,
                "          e.g. {} ({}, {} pod{}, {} GPUs, waiting {}): {}",
                j.name,
                j.team,
                j.pods,
                if j.pods == 1 { "" } else { "s" },
                j.gpus,
                fmt_secs(j.wait_s),
                j.reason.as_deref().unwrap_or("")
            );
        }
    }
    o.push_str("\nwork (engine decisions: pods or whole gangs looked at over a snapshot; simulator events)\n");
    for p in runs {
        let _ = writeln!(
            o,
            "  {:<9} {} decisions, {} events",
            p.policy,
            thousands(p.decisions as f64),
            thousands(p.events as f64)
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(fmt_secs(0.0), "0s");
        assert_eq!(fmt_secs(59.4), "59s");
        assert_eq!(fmt_secs(600.0), "10m");
        assert_eq!(fmt_secs(3.0 * 3600.0 + 5.0 * 60.0), "3h05m");
        assert_eq!(thousands(1234567.0), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(-1000.0), "-1,000");
    }

    #[test]
    fn sparkline_scales() {
        let s: Vec<Sample> = (0..=4)
            .map(|i| Sample {
                t_min: i as f64,
                gpu_alloc: i as f64 / 4.0,
                ..Default::default()
            })
            .collect();
        let line = sparkline(&s, 4, 1.0, |s| s.gpu_alloc);
        assert_eq!(line.chars().count(), 4);
        assert!(line.starts_with('▁') || line.starts_with('▂'));
        assert!(line.ends_with('█') || line.ends_with('▇'));
    }
}
