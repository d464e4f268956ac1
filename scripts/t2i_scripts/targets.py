"""The targets the generated reports judge their figures against, each defined once. BENCHMARKS.md
(t2i_scripts.bench.bench) holds each metric's current figure; models/REPORT.md
(t2i_scripts.bench.bench_reward) links to it rather than measuring its own."""

# best_of 16: seconds per returned image, at most this many times best_of 1's (one client, one image).
BEST_OF_16_MAX_COST = 6.0

# Single-request latency: t2i-align's /generate over HTTP against Optimum's pipeline, at most this ratio (#29;
# it was 0.45 in #6).
LATENCY_MAX_RATIO = 0.40
# Share of the request time t2i-align spends outside ONNX Runtime `run` calls, at most (#29; 5% in #6).
OUTSIDE_ORT_MAX_SHARE = 0.03
# /generate's p50 while a fine-tune job samples on the same server, at most this many times its idle p50
# (#29).
JOB_P50_MAX_STRETCH = 1.20
# 8 clients against 1: at least this many times the throughput, at most this many times the p50 latency.
THROUGHPUT_MIN_GAIN = 2.0
P50_MAX_STRETCH = 4.0
# RSS after the leak check's requests against after its first ones, at most this change either way.
RSS_MAX_GROWTH = 0.10

# Where BENCHMARKS.md's best_of section is, for reports that link to it.
BENCHMARKS_BEST_OF = "BENCHMARKS.md#best_of-cost-per-returned-image"
