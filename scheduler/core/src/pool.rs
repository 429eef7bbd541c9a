//! The scoring pool: the threads a scheduling cycle filters and scores nodes on.
//!
//! A cycle over a large snapshot splits its chunks of nodes between threads with
//! rayon's work stealing (see [`crate::framework`]). Started on one of the pool's own
//! threads, a cycle begins work at once and the pool's other threads join in as they
//! become free; started from any other thread, it first hands its work to the pool and
//! waits for a pool thread to wake up, which on a busy two-cpu machine takes longer than
//! scoring 5000 nodes. So the scheduling loop, the simulator and the benchmarks run
//! their cycles on a thread of a pool built here. (The extender keeps its calls on
//! tokio's blocking threads: a call parses megabytes of JSON, and a slow one must not
//! hold up the others.)

/// A scoring pool of `RAYON_NUM_THREADS` threads (one per cpu when unset), named
/// `{name}-0`, `{name}-1`, ...
pub fn build(name: &str) -> Result<rayon::ThreadPool, rayon::ThreadPoolBuildError> {
    let name = name.to_string();
    rayon::ThreadPoolBuilder::new()
        .thread_name(move |i| format!("{name}-{i}"))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_started_on_the_pool_stays_on_the_pool() {
        let pool = build("test-pool").expect("pool");
        let (name, inside) = pool.install(|| {
            (
                std::thread::current().name().map(String::from),
                rayon::current_thread_index().is_some(),
            )
        });
        assert!(name.is_some_and(|n| n.starts_with("test-pool-")));
        assert!(inside, "a cycle started here runs on a pool thread");
    }
}
