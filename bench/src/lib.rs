//! Shared fixtures for drover benchmarks.
