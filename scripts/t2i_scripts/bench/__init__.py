"""Benchmarks written to BENCHMARKS.md and models/REPORT.md: bench (latency against Optimum, throughput,
RSS), bench_serving (the load generator's runs) and bench_reward (best-of-n alignment and /score)."""
