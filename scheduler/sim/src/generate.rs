//! The built-in day of data-science work, generated from a seed: notebooks and Dask
//! clusters that follow office hours, training gangs and batch pods around the clock.
//!
//! The generator knows three kinds of team: a research team (most of the training), an
//! analytics team (most notebooks and Dask) and a platform team (most batch). They map
//! onto the scenario's first three teams, in order (round-robin if it has fewer).

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::scenario::Scenario;
use super::workload::{JobKind, JobSpec, TopologyMode, TopologyRequest};
use drover_core::model::Resources;

const GI: i64 = 1 << 30;
const MIN: i64 = 60_000;
const HOUR: i64 = 3_600_000;

/// The generator's team roles.
const RESEARCH: usize = 0;
const ANALYTICS: usize = 1;
const PLATFORM: usize = 2;

fn pick<T: Copy>(rng: &mut SmallRng, items: &[(T, u32)]) -> T {
    let total: u32 = items.iter().map(|(_, w)| w).sum();
    let mut x = rng.random_range(0..total);
    for (v, w) in items {
        if x < *w {
            return *v;
        }
        x -= w;
    }
    items[items.len() - 1].0
}

/// A Poisson-distributed count with mean `lambda` (Knuth's method; small means only).
fn poisson(rng: &mut SmallRng, lambda: f64) -> u32 {
    let limit = (-lambda).exp();
    let (mut k, mut p) = (0u32, 1.0f64);
    loop {
        p *= rng.random::<f64>();
        if p <= limit {
            return k;
        }
        k += 1;
    }
}

/// Office hours: interactive work arrives mostly between 08:00 and 18:00.
fn office(hour_of_day: i64) -> f64 {
    match hour_of_day {
        8..=17 => 1.0,
        7 | 18..=19 => 0.4,
        _ => 0.1,
    }
}

fn res(cpu_millis: i64, mem: i64, gpu: i64) -> Resources {
    let mut r = Resources::cpu_mem(cpu_millis, mem);
    r.gpu = gpu;
    r
}

struct Gen<'a> {
    rng: SmallRng,
    teams: &'a [String],
    jobs: Vec<JobSpec>,
}

impl Gen<'_> {
    fn team(&mut self, weights: &[(usize, u32)]) -> String {
        let role = pick(&mut self.rng, weights);
        self.teams[role % self.teams.len()].clone()
    }

    /// A random instant within `hour`, to the second (so files read well).
    fn at(&mut self, hour: i64) -> i64 {
        hour * HOUR + self.rng.random_range(0..HOUR / 1000) * 1000
    }

    /// A random duration in `lo..hi` ms, to the second.
    fn span(&mut self, lo: i64, hi: i64) -> i64 {
        self.rng.random_range(lo / 1000..hi / 1000) * 1000
    }

    fn push(&mut self, job: JobSpec) {
        self.jobs.push(job);
    }

    fn notebook(&mut self, hour: i64) {
        let team_role = pick(
            &mut self.rng,
            &[(RESEARCH, 35), (ANALYTICS, 50), (PLATFORM, 15)],
        );
        let team = self.teams[team_role % self.teams.len()].clone();
        let cpu = pick(&mut self.rng, &[(1, 20), (2, 40), (4, 30), (8, 10)]);
        let mem = pick(
            &mut self.rng,
            &[
                (8, 15),
                (16, 25),
                (32, 25),
                (64, 18),
                (128, 10),
                (256, 5),
                (384, 2),
            ],
        );
        let gpu_p = if team_role == RESEARCH { 0.3 } else { 0.05 };
        let gpu = i64::from(self.rng.random_bool(gpu_p));
        let arrival_ms = self.at(hour);
        let duration_ms = self.span(2 * HOUR, 10 * HOUR);
        self.push(JobSpec {
            name: String::new(),
            arrival_ms,
            duration_ms,
            team,
            kind: JobKind::Notebook,
            replicas: 1,
            leader: None,
            min_member: 0,
            requests: res(cpu * 1000, mem * GI, gpu),
            priority: 1000,
            node_selector: vec![],
            tolerations: vec![],
            topology: None,
        });
    }

    fn dask(&mut self, hour: i64) {
        let team = self.team(&[(RESEARCH, 20), (ANALYTICS, 60), (PLATFORM, 20)]);
        let workers: u32 = self.rng.random_range(2..=24);
        let cpu = pick(&mut self.rng, &[(2, 30), (4, 50), (8, 20)]);
        let mem = pick(&mut self.rng, &[(8, 20), (16, 40), (32, 30), (64, 10)]);
        let arrival_ms = self.at(hour);
        let duration_ms = self.span(20 * MIN, 3 * HOUR);
        self.push(JobSpec {
            name: String::new(),
            arrival_ms,
            duration_ms,
            team,
            kind: JobKind::Dask,
            replicas: workers,
            leader: Some(res(1000, 4 * GI, 0)),
            // The scheduler and half the workers; the rest join as they fit.
            min_member: 1 + workers.div_ceil(2),
            requests: res(cpu * 1000, mem * GI, 0),
            priority: 500,
            node_selector: vec![],
            tolerations: vec![],
            topology: None,
        });
    }

    fn training(&mut self, hour: i64) {
        let team = self.team(&[(RESEARCH, 75), (PLATFORM, 25)]);
        let ranks: u32 = pick(&mut self.rng, &[(4, 45), (8, 30), (16, 18), (32, 7)]);
        let gpus: i64 = pick(&mut self.rng, &[(1, 15), (2, 15), (4, 25), (8, 45)]);
        let arrival_ms = self.at(hour);
        // Log-uniform between 1 h and 8 h.
        let duration_ms = (3600.0 * 8f64.powf(self.rng.random::<f64>())) as i64 * 1000;
        let total = i64::from(ranks) * gpus;
        // A job that fits in a block (16 nodes of 8 GPUs) requires one; a larger one,
        // or a small one, prefers the fewest racks.
        let topology = if (32..=128).contains(&total) {
            Some(TopologyRequest {
                level: "network.topology.nvidia.com/block".into(),
                mode: TopologyMode::Required,
            })
        } else {
            Some(TopologyRequest {
                level: "topology.kubernetes.io/rack".into(),
                mode: TopologyMode::Preferred,
            })
        };
        self.push(JobSpec {
            name: String::new(),
            arrival_ms,
            duration_ms,
            team,
            kind: JobKind::Training,
            replicas: ranks,
            leader: None,
            min_member: ranks,
            requests: res(8_000 * gpus, 60 * GI * gpus, gpus),
            priority: 100,
            node_selector: vec![],
            tolerations: vec![],
            topology,
        });
    }

    fn batch(&mut self, hour: i64) {
        let team = self.team(&[(RESEARCH, 20), (ANALYTICS, 30), (PLATFORM, 50)]);
        let replicas = if self.rng.random_bool(0.2) {
            self.rng.random_range(2..=8)
        } else {
            1
        };
        let cpu = pick(
            &mut self.rng,
            &[(500, 20), (1000, 35), (2000, 30), (4000, 15)],
        );
        let mem = pick(
            &mut self.rng,
            &[(1, 15), (2, 25), (4, 30), (8, 20), (16, 10)],
        );
        let arrival_ms = self.at(hour);
        let duration_ms = self.span(5 * MIN, 90 * MIN);
        self.push(JobSpec {
            name: String::new(),
            arrival_ms,
            duration_ms,
            team,
            kind: JobKind::Batch,
            replicas,
            leader: None,
            min_member: 0,
            requests: res(cpu, mem * GI, 0),
            priority: 0,
            node_selector: vec![],
            tolerations: vec![],
            topology: None,
        });
    }
}

/// Generates `hours` of the built-in workload for `scenario`'s teams, from `seed`.
/// The same seed always gives the same jobs.
pub fn builtin_day(scenario: &Scenario, seed: u64, hours: f64) -> Vec<JobSpec> {
    let teams: Vec<String> = scenario.teams.iter().map(|t| t.name.clone()).collect();
    let mut g = Gen {
        rng: SmallRng::seed_from_u64(seed),
        teams: &teams,
        jobs: Vec::new(),
    };
    let end = (hours * HOUR as f64) as i64;
    let mut hour = 0;
    while hour * HOUR < end {
        let hod = hour % 24;
        let n = poisson(&mut g.rng, 20.0 * office(hod));
        (0..n).for_each(|_| g.notebook(hour));
        let n = poisson(&mut g.rng, 8.0 * office(hod));
        (0..n).for_each(|_| g.dask(hour));
        let n = poisson(&mut g.rng, 2.2);
        (0..n).for_each(|_| g.training(hour));
        let n = poisson(&mut g.rng, 30.0 * (0.6 + 0.4 * office(hod)));
        (0..n).for_each(|_| g.batch(hour));
        hour += 1;
    }
    let mut jobs = g.jobs;
    jobs.retain(|j| j.arrival_ms < end);
    jobs.sort_by_key(|j| j.arrival_ms);
    let mut counters = [0u32; JobKind::ALL.len()];
    for j in &mut jobs {
        let k = JobKind::ALL
            .iter()
            .position(|k| *k == j.kind)
            .expect("known kind");
        counters[k] += 1;
        j.name = format!("{}-{:04}", j.kind, counters[k]);
    }
    jobs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_and_varied() {
        let s = Scenario::builtin();
        let a = builtin_day(&s, 1, 24.0);
        assert_eq!(a, builtin_day(&s, 1, 24.0), "same seed, same day");
        assert_ne!(a, builtin_day(&s, 2, 24.0));
        for k in [
            JobKind::Notebook,
            JobKind::Dask,
            JobKind::Training,
            JobKind::Batch,
        ] {
            assert!(a.iter().any(|j| j.kind == k), "{k}");
        }
        assert!(a.iter().all(|j| j.arrival_ms < 24 * HOUR));
        let training: Vec<_> = a.iter().filter(|j| j.kind == JobKind::Training).collect();
        assert!(
            training
                .iter()
                .all(|j| (4..=32).contains(&j.replicas) && (1..=8).contains(&j.requests.gpu))
        );
        for t in &s.teams {
            assert!(a.iter().any(|j| j.team == t.name), "{}", t.name);
        }
    }
}
