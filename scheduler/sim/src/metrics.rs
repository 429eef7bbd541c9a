//! What a run measured: samples over time, the fate of every job, and the summary
//! figures the report compares. Every figure is defined in docs/simulate.md.

use std::collections::BTreeMap;

use serde::Serialize;

/// The state of the cluster at one instant (one [`super::engine::SAMPLE_MS`] apart).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Sample {
    /// Virtual time, minutes from the start.
    pub t_min: f64,
    /// Allocated GPUs over all GPUs (0..=1).
    pub gpu_alloc: f64,
    /// Allocated CPU over the CPU of nodes without GPUs (0..=1).
    pub cpu_alloc: f64,
    /// Allocated memory over the memory of nodes without GPUs (0..=1).
    pub mem_alloc: f64,
    /// Free GPUs on nodes that cannot take the smallest waiting GPU pod (its GPUs,
    /// memory and CPU); 0 when no GPU pod waits.
    pub gpus_unusable: i64,
    /// Free GPUs on GPU nodes that already run a pod (so cannot take a whole-node,
    /// 8-GPU rank).
    pub gpus_on_busy_nodes: i64,
    /// Nodes with no pod at all.
    pub free_nodes: i64,
    /// GPU nodes with no pod at all.
    pub free_gpu_nodes: i64,
    /// Pods waiting for a node.
    pub pending_pods: i64,
    /// Jobs that started.
    pub running_jobs: i64,
    /// Gangs with some but fewer than `minMember` pods on nodes.
    pub partial_gangs: i64,
    /// GPUs held by those gangs' placed pods.
    pub partial_gang_gpus: i64,
    /// GPUs held by pods whose job started (a gang with `minMember` on nodes, or any
    /// other running pod): GPUs doing work.
    pub started_gpus: i64,
    /// Of those, GPUs of gangs that require one domain of a topology level and run
    /// spread over several.
    pub started_gpus_spread: i64,
    /// Each team's allocated GPUs over all GPUs, by team index.
    pub team_gpu: Vec<f64>,
    /// Each team's allocated memory over all memory (every node), by team index.
    pub team_mem: Vec<f64>,
    /// Each team's fair share now, as a fraction of all GPUs: the GPUs allocated now,
    /// divided by weighted max-min over the teams with demand (none above what it asks
    /// for); `None` for a team without demand.
    pub team_gpu_fair: Vec<Option<f64>>,
}

/// Where a job stands at the end of the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Ran to its end.
    Completed,
    /// Started, not yet finished at the end of the run.
    Running,
    /// Never started (a gang: never had `minMember` pods placed; other jobs: some pod
    /// never started).
    Waiting,
}

/// One job's fate.
#[derive(Clone, Debug, Serialize)]
pub struct JobOutcome {
    /// The job's name.
    pub name: String,
    /// Its team.
    pub team: String,
    /// Its kind.
    pub kind: String,
    /// Number of pods.
    pub pods: usize,
    /// GPUs of all its pods.
    pub gpus: i64,
    /// Gang size (0: not a gang).
    pub gang: usize,
    /// Arrival, seconds from the start.
    pub arrival_s: f64,
    /// Start: a gang's `minMember`-th pod placed; another job's last pod started.
    pub start_s: Option<f64>,
    /// End, if it ended within the run.
    pub end_s: Option<f64>,
    /// Start minus arrival; for a job still waiting, the end of the run minus arrival
    /// (a lower bound).
    pub wait_s: f64,
    /// Where it stands at the end.
    pub status: JobStatus,
    /// True when the gang spent some time with some but fewer than `minMember` pods
    /// placed (members placed one after another within one instant do not count).
    pub ever_partial: bool,
    /// Seconds spent partly placed.
    pub partial_s: f64,
    /// Pods on nodes at the end.
    pub placed_at_end: usize,
    /// Its pods evicted (reclaim or preemption) over the run; each was created again.
    pub evicted: usize,
    /// For a waiting job, why (the scheduler's message for its last attempt).
    pub reason: Option<String>,
    /// The reason without its counts, for grouping.
    pub reason_class: Option<String>,
    /// The topology level it asked for, if any.
    pub topology_level: Option<String>,
    /// How many domains of that level its pods landed in, once started.
    pub topology_domains: Option<usize>,
}

/// One team's figures.
#[derive(Clone, Debug, Serialize)]
pub struct TeamSummary {
    /// The team.
    pub name: String,
    /// Its configured share over the sum of shares (0..=1).
    pub fair_share: f64,
    /// Its mean share of all GPUs over the run (0..=1).
    pub gpu_share: f64,
    /// Its mean share of all memory over the run (0..=1).
    pub mem_share: f64,
    /// Jobs that arrived.
    pub jobs: usize,
    /// Median wait, seconds (waiting jobs count with their wait so far).
    pub wait_p50_s: f64,
    /// 99th percentile wait, seconds (same rule).
    pub wait_p99_s: f64,
    /// Jobs still waiting at the end.
    pub waiting: usize,
    /// Share error: the time-weighted mean of |GPU share − fair GPU share| over the
    /// time the team has demand (GPUs allocated or asked for), as a fraction of all
    /// GPUs; 0 for a team that never had demand.
    pub share_error: f64,
    /// Hours the team had GPU demand.
    pub demand_hours: f64,
    /// Its pods evicted so that another queue got its guarantee back.
    pub reclaimed: usize,
    /// Its pods evicted for a pod of higher priority.
    pub preempted: usize,
    /// Its pods evicted because their gang stayed partly placed.
    pub released: usize,
}

/// Summary figures of one run.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Mean GPU allocation (0..=1).
    pub gpu_alloc_mean: f64,
    /// Mean memory allocation of nodes without GPUs (0..=1).
    pub mem_alloc_mean: f64,
    /// Mean CPU allocation of nodes without GPUs (0..=1).
    pub cpu_alloc_mean: f64,
    /// Mean of [`Sample::gpus_unusable`].
    pub gpus_unusable_mean: f64,
    /// Largest [`Sample::gpus_unusable`].
    pub gpus_unusable_max: i64,
    /// Mean of [`Sample::gpus_on_busy_nodes`].
    pub gpus_on_busy_nodes_mean: f64,
    /// Mean number of nodes with no pod.
    pub free_nodes_mean: f64,
    /// Fewest nodes with no pod at any sample.
    pub free_nodes_min: i64,
    /// Mean number of GPU nodes with no pod.
    pub free_gpu_nodes_mean: f64,
    /// Fewest GPU nodes with no pod.
    pub free_gpu_nodes_min: i64,
    /// Gangs that were ever partly placed.
    pub partial_gangs: usize,
    /// Gang-minutes spent partly placed.
    pub partial_gang_minutes: f64,
    /// Most gangs partly placed at one sample.
    pub partial_gangs_max: i64,
    /// GPU-hours held by partly placed gangs (doing no work).
    pub partial_gang_gpu_hours: f64,
    /// GPU-hours allocated in all.
    pub gpu_hours_allocated: f64,
    /// GPU-hours held by pods whose job had started: GPUs doing work (what
    /// [`Summary::gpu_hours_allocated`] counts, less partly placed gangs).
    pub gpu_hours_started: f64,
    /// Of those, GPU-hours of gangs that require one domain of a topology level but
    /// run spread over several (what the user asked not to get).
    pub gpu_hours_spread: f64,
    /// Pods evicted in all (reclaim and preemption).
    pub evictions: usize,
    /// GPU-hours the evicted pods had run: work lost and done again (counted in
    /// [`Summary::gpu_hours_started`] as well).
    pub gpu_hours_lost: f64,
    /// Jobs that arrived within the run.
    pub jobs: usize,
    /// Jobs completed.
    pub completed: usize,
    /// Jobs running at the end.
    pub running: usize,
    /// Jobs waiting at the end.
    pub waiting: usize,
    /// Waiting jobs by reason class, most common first.
    pub waiting_reasons: Vec<(String, usize)>,
    /// Median wait over all jobs, seconds.
    pub wait_p50_s: f64,
    /// 99th percentile wait over all jobs, seconds.
    pub wait_p99_s: f64,
    /// Per team.
    pub teams: Vec<TeamSummary>,
    /// Started gangs that asked for a topology level.
    pub topology_started: usize,
    /// Of those, how many landed in a single domain of that level.
    pub topology_one_domain: usize,
}

/// Nearest-rank percentile of `v` (sorted in place); 0 for no values.
pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// Integral over time (left Riemann sum, in value·ms) and span of a sampled series.
fn integral(samples: &[Sample], f: impl Fn(&Sample) -> f64) -> (f64, f64) {
    let mut sum = 0.0;
    for w in samples.windows(2) {
        sum += f(&w[0]) * (w[1].t_min - w[0].t_min) * 60_000.0;
    }
    let span = match (samples.first(), samples.last()) {
        (Some(a), Some(b)) => (b.t_min - a.t_min) * 60_000.0,
        _ => 0.0,
    };
    (sum, span)
}

fn mean(samples: &[Sample], f: impl Fn(&Sample) -> f64) -> f64 {
    match samples {
        [] => 0.0,
        [one] => f(one),
        _ => {
            let (sum, span) = integral(samples, f);
            if span > 0.0 { sum / span } else { 0.0 }
        }
    }
}

/// Milliseconds during which team `t` had GPU demand (left Riemann sum).
fn demand_ms(samples: &[Sample], t: usize) -> f64 {
    samples
        .windows(2)
        .filter(|w| w[0].team_gpu_fair.get(t).is_some_and(|f| f.is_some()))
        .map(|w| (w[1].t_min - w[0].t_min) * 60_000.0)
        .sum()
}

/// Time-weighted mean |share − fair share| of team `t` while it had demand.
fn share_error(samples: &[Sample], t: usize) -> f64 {
    let mut sum = 0.0;
    for w in samples.windows(2) {
        if let Some(Some(fair)) = w[0].team_gpu_fair.get(t) {
            let share = w[0].team_gpu.get(t).copied().unwrap_or(0.0);
            sum += (share - fair).abs() * (w[1].t_min - w[0].t_min) * 60_000.0;
        }
    }
    let span = demand_ms(samples, t);
    if span > 0.0 { sum / span } else { 0.0 }
}

/// Computes the summary of a run; `total_gpus` is the cluster's GPU count.
pub fn summarize(
    samples: &[Sample],
    jobs: &[JobOutcome],
    teams: &[String],
    fair_shares: &[f64],
    total_gpus: i64,
    evictions: &super::engine::EvictionCounts,
) -> Summary {
    const HOUR_MS: f64 = 3_600_000.0;
    let count = |s: JobStatus| jobs.iter().filter(|j| j.status == s).count();
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    for j in jobs {
        if let Some(c) = &j.reason_class {
            *reasons.entry(c).or_default() += 1;
        }
    }
    let mut waiting_reasons: Vec<(String, usize)> = reasons
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    waiting_reasons.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut all_waits: Vec<f64> = jobs.iter().map(|j| j.wait_s).collect();
    let team_summaries = teams
        .iter()
        .enumerate()
        .map(|(t, name)| {
            let mine: Vec<&JobOutcome> = jobs.iter().filter(|j| &j.team == name).collect();
            let mut waits: Vec<f64> = mine.iter().map(|j| j.wait_s).collect();
            TeamSummary {
                name: name.clone(),
                fair_share: fair_shares.get(t).copied().unwrap_or(0.0),
                gpu_share: mean(samples, |s| s.team_gpu.get(t).copied().unwrap_or(0.0)),
                mem_share: mean(samples, |s| s.team_mem.get(t).copied().unwrap_or(0.0)),
                jobs: mine.len(),
                wait_p50_s: percentile(&mut waits, 50.0),
                wait_p99_s: percentile(&mut waits, 99.0),
                waiting: mine
                    .iter()
                    .filter(|j| j.status == JobStatus::Waiting)
                    .count(),
                share_error: share_error(samples, t),
                demand_hours: demand_ms(samples, t) / HOUR_MS,
                reclaimed: evictions.reclaimed.get(t).copied().unwrap_or(0),
                preempted: evictions.preempted.get(t).copied().unwrap_or(0),
                released: evictions.released.get(t).copied().unwrap_or(0),
            }
        })
        .collect();
    let topo: Vec<&JobOutcome> = jobs
        .iter()
        .filter(|j| j.topology_level.is_some() && j.topology_domains.is_some())
        .collect();
    Summary {
        gpu_alloc_mean: mean(samples, |s| s.gpu_alloc),
        mem_alloc_mean: mean(samples, |s| s.mem_alloc),
        cpu_alloc_mean: mean(samples, |s| s.cpu_alloc),
        gpus_unusable_mean: mean(samples, |s| s.gpus_unusable as f64),
        gpus_unusable_max: samples.iter().map(|s| s.gpus_unusable).max().unwrap_or(0),
        gpus_on_busy_nodes_mean: mean(samples, |s| s.gpus_on_busy_nodes as f64),
        free_nodes_mean: mean(samples, |s| s.free_nodes as f64),
        free_nodes_min: samples.iter().map(|s| s.free_nodes).min().unwrap_or(0),
        free_gpu_nodes_mean: mean(samples, |s| s.free_gpu_nodes as f64),
        free_gpu_nodes_min: samples.iter().map(|s| s.free_gpu_nodes).min().unwrap_or(0),
        partial_gangs: jobs.iter().filter(|j| j.ever_partial).count(),
        partial_gang_minutes: jobs.iter().map(|j| j.partial_s / 60.0).sum(),
        partial_gangs_max: samples.iter().map(|s| s.partial_gangs).max().unwrap_or(0),
        partial_gang_gpu_hours: integral(samples, |s| s.partial_gang_gpus as f64).0 / HOUR_MS,
        gpu_hours_allocated: integral(samples, |s| s.gpu_alloc * total_gpus as f64).0 / HOUR_MS,
        gpu_hours_started: integral(samples, |s| s.started_gpus as f64).0 / HOUR_MS,
        gpu_hours_spread: integral(samples, |s| s.started_gpus_spread as f64).0 / HOUR_MS,
        evictions: evictions.reclaimed.iter().sum::<usize>()
            + evictions.preempted.iter().sum::<usize>()
            + evictions.released.iter().sum::<usize>(),
        gpu_hours_lost: evictions.lost_gpu_ms as f64 / HOUR_MS,
        jobs: jobs.len(),
        completed: count(JobStatus::Completed),
        running: count(JobStatus::Running),
        waiting: count(JobStatus::Waiting),
        waiting_reasons,
        wait_p50_s: percentile(&mut all_waits.clone(), 50.0),
        wait_p99_s: percentile(&mut all_waits, 99.0),
        teams: team_summaries,
        topology_started: topo.len(),
        topology_one_domain: topo
            .iter()
            .filter(|j| j.topology_domains == Some(1))
            .count(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_table() {
        let cases: [(&[f64], f64, f64); 5] = [
            (&[], 50.0, 0.0),
            (&[5.0], 99.0, 5.0),
            (&[3.0, 1.0, 2.0], 50.0, 2.0),
            (&[1.0, 2.0, 3.0, 4.0], 50.0, 2.0),
            (&[1.0, 2.0, 3.0, 4.0], 99.0, 4.0),
        ];
        for (v, p, want) in cases {
            assert_eq!(percentile(&mut v.to_vec(), p), want, "{v:?} p{p}");
        }
    }

    #[test]
    fn means_weigh_by_time() {
        let s = |t: f64, g: f64| Sample {
            t_min: t,
            gpu_alloc: g,
            ..Default::default()
        };
        // 1.0 for 3 minutes, then 0.0 for 1 minute.
        let samples = [s(0.0, 1.0), s(3.0, 0.0), s(4.0, 0.0)];
        assert!((mean(&samples, |x| x.gpu_alloc) - 0.75).abs() < 1e-9);
    }

    #[test]
    fn share_error_counts_only_time_with_demand() {
        let s = |t: f64, share: f64, fair: Option<f64>| Sample {
            t_min: t,
            team_gpu: vec![share],
            team_gpu_fair: vec![fair],
            ..Default::default()
        };
        // 2 minutes 0.2 off its fair share, then 2 minutes without demand.
        let samples = [s(0.0, 0.3, Some(0.5)), s(2.0, 0.0, None), s(4.0, 0.0, None)];
        assert!((share_error(&samples, 0) - 0.2).abs() < 1e-9);
        assert!((demand_ms(&samples, 0) - 120_000.0).abs() < 1e-9);
    }
}
