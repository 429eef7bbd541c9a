#!/usr/bin/env bash
# Instructions per iteration of one hot-path benchmark, counted by valgrind's callgrind:
# a figure that, unlike wall time, does not move with whatever else runs on a shared
# machine. Runs the benchmark once with 1 sample and once with K samples (51 by default) (one
# iteration each, one scoring thread) and divides the difference by K - 1, so the
# set-up (building the cluster) cancels out.
#
#   bench/scripts/instructions.sh [BENCH_BINARY] NAME [K]
#
# NAME is a divan filter (`one_pod_decision_with_affinity`, `gang_placement`; a filter
# that matches several benchmarks sums them). Without BENCH_BINARY the hot_path bench
# is built first. Needs valgrind.
set -euo pipefail
if [ $# -ge 2 ] && [ -x "$1" ]; then
  bin=$1
  shift
else
  bin=$(cargo bench -p drover-bench --bench hot_path --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*hot_path[^"]*\)".*/\1/p' | tail -n 1)
fi
name=${1:?usage: instructions.sh [BENCH_BINARY] NAME [K]}
k=${2:-51}
count() {
  RAYON_NUM_THREADS=1 valgrind --tool=callgrind --callgrind-out-file=/dev/null \
    "$bin" "$name" --bench --sample-count "$1" --sample-size 1 2>&1 |
    sed -n 's/.*I *refs: *//p' | tr -d ,
}
one=$(count 1)
many=$(count "$k")
echo "$name: $(((many - one) / (k - 1))) instructions per iteration ($bin)"
