"""The serving half of `make bench` (issue #6): load through the HTTP API, measured with the Rust load
generator (`examples/loadgen.rs`), and the UNet batch-cost profile that bounds what batching can give on
this machine.

Each function measures one thing and returns plain numbers; t2i_scripts.bench.bench runs them in one go and
writes BENCHMARKS.md. Nothing here is tuned to a target: the figures are what the run measured.
"""

from __future__ import annotations

import collections
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from t2i_scripts.server import ServerProcess

PROMPT = "two blue stars on a white background"
# One image, 20 DDIM steps at guidance 7.5: two UNet rows per step.
GENERATE = {"prompt": PROMPT, "n": 1, "steps": 20, "guidance_scale": 7.5, "scheduler": "ddim", "seed": 1}


def load(loadgen: str, url: str, body: dict, concurrency: int, requests: int, warmup: int = 1) -> dict:
    """One closed-loop run of the load generator; its JSON summary."""
    completed = subprocess.run(
        [
            loadgen,
            "--url",
            url,
            "--body",
            json.dumps(body),
            "--concurrency",
            str(concurrency),
            "--requests",
            str(requests),
            "--warmup",
            str(warmup),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(completed.stdout)


def concurrency_sweep(
    server: ServerProcess, loadgen: str, levels: tuple[int, ...], rounds: int = 3
) -> list[dict]:
    """Throughput and latency percentiles of /generate at each number of concurrent clients. The levels take
    turns for `rounds` rounds, so that a drift in the machine's speed hits every level alike; each level's
    figures are the medians of its rounds, and `rounds` keeps each round's throughput and p50 in order."""
    runs: dict[int, list[dict]] = {clients: [] for clients in levels}
    for _ in range(rounds):
        for clients in levels:
            result = load(loadgen, server.url + "/generate", GENERATE, clients, max(16, 4 * clients))
            if result["errors"]:
                raise SystemExit(
                    f"{result['errors']} requests failed at {clients} clients: {result['statuses']}"
                )
            runs[clients].append(result)
    rows = []
    for clients in levels:
        results = runs[clients]
        row = {"concurrency": clients, "requests": sum(result["requests"] for result in results)}
        for key in ("requests_per_second", "p50_ms", "p99_ms"):
            row[key] = statistics.median(result[key] for result in results)
        row["rounds"] = {
            key: [result[key] for result in results] for key in ("requests_per_second", "p50_ms")
        }
        rows.append(row)
    return rows


def batch_metrics(server: ServerProcess) -> dict:
    """Mean UNet rows and requests per batched call so far, from /metrics."""
    import urllib.request

    with urllib.request.urlopen(server.url + "/metrics", timeout=30) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        for name in ("t2i_unet_batch_rows", "t2i_unet_batch_requests"):
            for suffix in ("_sum", "_count"):
                if line.startswith(name + suffix + " "):
                    values[name + suffix] = float(line.split()[1])
    calls = values.get("t2i_unet_batch_rows_count", 0) or 1
    return {
        "calls": int(values.get("t2i_unet_batch_rows_count", 0)),
        "mean_rows": values.get("t2i_unet_batch_rows_sum", 0) / calls,
        "mean_requests": values.get("t2i_unet_batch_requests_sum", 0) / calls,
    }


def best_of_cost(server: ServerProcess, runs: int = 7) -> dict[str, dict]:
    """Seconds per returned image for best_of 1, 4 and 16 (one client, one image returned): the medians, and
    each round's (`rounds`, in order). The three take turns in each round, so that a drift in the machine's
    speed hits them alike."""
    times: dict[int, list[float]] = {1: [], 4: [], 16: []}
    for best_of in times:
        server.post("/generate", dict(GENERATE, best_of=best_of))
    for seed in range(runs):
        for best_of, seconds in times.items():
            elapsed, _ = server.post("/generate", dict(GENERATE, best_of=best_of, seed=seed))
            seconds.append(elapsed)
    return {
        "median": {best_of: statistics.median(seconds) for best_of, seconds in times.items()},
        "rounds": times,
    }


def sample_pngs(server: ServerProcess, count: int = 8) -> list[str]:
    """A few generated PNGs (base64) for /score."""
    _, payload = server.post("/generate", dict(GENERATE, n=count))
    return [image["png_base64"] for image in payload["images"]]


def rss_kib(pid: int) -> dict[str, int]:
    """The process's resident set now (VmRSS) and at its peak (VmHWM), in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def leak_check(server: ServerProcess, loadgen: str, total: int = 2000, early: int = 100) -> dict:
    """RSS after `early` /generate requests and after `total`, 4 clients at a time, plus the peak."""
    url = server.url + "/generate"
    started = time.perf_counter()
    load(loadgen, url, GENERATE, 4, early, warmup=0)
    after_early = rss_kib(server.process.pid)
    load(loadgen, url, GENERATE, 4, total - early, warmup=0)
    after_total = rss_kib(server.process.pid)
    return {
        "early": early,
        "total": total,
        "rss_early_kib": after_early["VmRSS"],
        "rss_total_kib": after_total["VmRSS"],
        "peak_kib": after_total["VmHWM"],
        "growth": after_total["VmRSS"] / after_early["VmRSS"] - 1,
        "seconds": time.perf_counter() - started,
    }


def unet_batch_profile(model: str, threads: int, rows: tuple[int, ...] = (2, 4, 8, 16, 32)) -> dict:
    """Milliseconds per UNet call at each batch size, and the op types that take the time at 16 rows:
    the profile that bounds what continuous batching can give on this CPU."""
    import numpy as np
    import onnxruntime

    path = str(Path(model) / "unet" / "model.onnx")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    inputs = {spec.name: spec for spec in session.get_inputs()}
    hidden = inputs["encoder_hidden_states"].shape[2]
    rng = np.random.default_rng(0)

    def feed(batch: int) -> dict:
        timestep = inputs["timestep"]
        steps = np.full((batch,) if timestep.shape else (), 500.0)
        dtype = np.int64 if "int64" in timestep.type else np.float32
        return {
            "sample": rng.standard_normal((batch, 4, 16, 16)).astype(np.float32),
            "timestep": steps.astype(dtype),
            "encoder_hidden_states": rng.standard_normal((batch, 77, hidden)).astype(np.float32),
        }

    milliseconds = {}
    for batch in rows:
        data = feed(batch)
        for _ in range(3):
            session.run(None, data)
        runs = []
        for _ in range(15):
            started = time.perf_counter()
            session.run(None, data)
            runs.append(time.perf_counter() - started)
        milliseconds[batch] = 1000 * statistics.median(runs)

    with tempfile.TemporaryDirectory() as folder:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(folder) / "unet")
        profiled = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        data = feed(16)
        for _ in range(10):
            profiled.run(None, data)
        events = json.loads(Path(profiled.end_profiling()).read_text())
    by_op: collections.Counter = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            by_op[event["args"].get("op_name", "?")] += event["dur"]
    total = sum(by_op.values()) or 1
    ops = [(op, duration / total) for op, duration in by_op.most_common(6)]
    return {"milliseconds": milliseconds, "ops": ops}
