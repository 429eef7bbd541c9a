//! The engine under seeded fault injection ([`drover_sim::faults`]): many seeds, each a
//! random cluster and workload run through failing binds, late and duplicated watch
//! events, relists, node losses, refused evictions, lost leases and restarts, with the
//! invariants checked after every step.
//!
//! - `cargo test -p drover-sim --test faults`: 500 seeds of 2 000 events each (part of
//!   the suite);
//! - `DROVER_SIM_SEED=N`: only seed N (a failure names its seed; the replay is exact);
//! - `DROVER_SIM_SEEDS=5000 DROVER_SIM_EVENTS=4000 DROVER_SIM_FIRST_SEED=1000`: more
//!   seeds, longer runs, elsewhere in the seed space (release builds run them faster:
//!   add `--release`).

use std::time::Instant;

use drover_sim::faults::{self, Outcome, Violation};
use rayon::prelude::*;

fn env(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v}: give a whole number")),
        Err(_) => default,
    }
}

#[test]
fn every_seed_keeps_every_invariant() {
    let events = env("DROVER_SIM_EVENTS", 2_000);
    let seeds: Vec<u64> = match std::env::var("DROVER_SIM_SEED") {
        Ok(s) => vec![
            s.parse()
                .unwrap_or_else(|_| panic!("DROVER_SIM_SEED={s}: give a whole number")),
        ],
        Err(_) => {
            let first = env("DROVER_SIM_FIRST_SEED", 1);
            (first..first + env("DROVER_SIM_SEEDS", 500)).collect()
        }
    };
    let started = Instant::now();
    let results: Vec<Result<Outcome, Violation>> =
        seeds.par_iter().map(|&s| faults::run(s, events)).collect();
    let elapsed = started.elapsed();
    let failures: Vec<&Violation> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    let ok: Vec<&Outcome> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    let sum = |f: fn(&Outcome) -> u64| ok.iter().map(|o| f(o)).sum::<u64>();
    eprintln!(
        "faults: {} seeds × {events} events in {:.1} s: {} events, {} binds, {} evictions, {} faults, {} jobs ({} completed), {:.0} virtual minutes; {} failed",
        seeds.len(),
        elapsed.as_secs_f64(),
        sum(|o| o.events),
        sum(|o| o.binds),
        sum(|o| o.evictions),
        sum(|o| o.faults),
        sum(|o| o.jobs as u64),
        sum(|o| o.completed as u64),
        sum(|o| o.virtual_ms as u64) as f64 / 60_000.0,
        failures.len(),
    );
    if let Some(first) = failures.first() {
        let seeds: Vec<String> = failures.iter().map(|f| f.seed.to_string()).collect();
        panic!(
            "{} of {} seeds broke an invariant (seeds {}); the first:\n{first}",
            failures.len(),
            results.len(),
            seeds.join(", ")
        );
    }
    for o in &ok {
        assert!(o.events >= events, "a seed stopped early: {o:?}");
    }
    // The runs did what they are for: binds under faults, and evictions.
    assert!(sum(|o| o.binds) > 0 && sum(|o| o.faults) > 0);
    if seeds.len() >= 50 {
        assert!(sum(|o| o.evictions) > 0, "no seed evicted anything");
    }
}

#[test]
fn a_seed_replays_exactly() {
    // Pass or fail, the same seed runs the same way (the failure, too, is replayed).
    let run = |seed| format!("{:?}", faults::run(seed, 1_500));
    let (a, b, c) = (run(7), run(7), run(8));
    assert_eq!(a, b, "the same seed, the same run");
    assert_ne!(a, c, "another seed, another run");
}
