"""Soak test (issue #7, `make soak`, not part of `make test`): 64 concurrent clients for 60 s on loopback
against `t2i-align serve` with its default model and reward model, each client choosing at random, request
after request, between generating (60%), scoring four images (25%) and rating an image (15%). A client
answered 429 waits what `Retry-After` says (at most 1 s), as a well-behaved client would.

It reports requests, statuses, p50/p99 latency per kind and RSS before and after. Targets: no errors other
than 429, and RSS growth under 10%.

Usage:
    python -m t2i_scripts.ops.soak --binary target/release/t2i-align --report RELIABILITY.md
"""

from __future__ import annotations

import collections
import random
import statistics
import sys
import threading
import time
from pathlib import Path

from PIL import Image

from t2i_scripts.server import ROOT, ServerProcess, http, png_base64, serve_command, tool_arguments

BEGIN, END = "<!-- soak:begin -->", "<!-- soak:end -->"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def post(url: str, body: dict) -> tuple[int, dict, float]:
    answer = http(url, body)
    return answer.status, answer.headers, answer.seconds


def png(seed: int) -> str:
    rng = random.Random(seed)
    return png_base64(Image.new("RGB", (64, 64), tuple(rng.randrange(256) for _ in range(3))))


def main() -> int:
    parser = tool_arguments(__doc__, 18098, "soak")
    parser.set_defaults(model=str(ROOT / "models" / "shapes-sd"))
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--warmup-seconds", type=float, default=15, help="the same load first, not counted")
    parser.add_argument("--sample-seconds", type=float, default=5, help="RSS sampling interval")
    args = parser.parse_args()
    command = serve_command(args.binary, args.model, threads=None)
    server = ServerProcess(command, args.port, image_retention=2000)
    images = [png(seed) for seed in range(16)]
    results: list[tuple[str, int, float]] = []
    lock = threading.Lock()

    def client(index: int, stop: float, record: bool) -> None:
        rng = random.Random(index if record else -1 - index)
        while time.monotonic() < stop:
            roll = rng.random()
            if roll < 0.60:
                kind, path = "generate", "/generate"
                body = {
                    "prompt": "two blue stars on a white background",
                    "steps": 10,
                    "seed": rng.randrange(1000),
                }
            elif roll < 0.85:
                kind, path = "score", "/score"
                body = {"prompt": "a red circle", "images": rng.sample(images, 4)}
            else:
                kind, path = "feedback", "/feedback"
                body = {
                    "image": rng.choice(images),
                    "prompt": "a red circle",
                    "label": rng.choice(["good", "bad"]),
                }
            status, headers, seconds = post(server.url + path, body)
            if record:
                with lock:
                    results.append((kind, status, seconds))
            if status == 429:
                retry = {name.lower(): value for name, value in headers.items()}.get("retry-after", "1")
                time.sleep(min(1.0, float(retry)))

    # RSS every few seconds through both phases: a leak keeps growing, a working set levels off.
    samples: list[tuple[float, int]] = []
    sampling = threading.Event()

    def sample_rss() -> None:
        begun = time.monotonic()
        while not sampling.wait(args.sample_seconds):
            samples.append((time.monotonic() - begun, rss_kib(server.process.pid)))

    sampler = threading.Thread(target=sample_rss, daemon=True)
    sampler.start()
    try:
        # A warm-up at the same load first (not counted), so that "before" is the working set of this load:
        # ONNX Runtime's arenas and the batch buffers grow to the largest batch once, and a leak is growth
        # beyond that. The largest batches come when all clients start at once, so the warm-up does that
        # twice, as the run will once more; the RSS samples show the steps and what follows them.
        half = args.warmup_seconds / 2
        for phase, seconds in (("warm-up", half), ("warm-up", half), ("run", args.seconds)):
            if phase == "run":
                rss_before = rss_kib(server.process.pid)
            stop = time.monotonic() + seconds
            record = phase == "run"
            threads = [threading.Thread(target=client, args=(i, stop, record)) for i in range(args.clients)]
            started = time.monotonic()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            elapsed = time.monotonic() - started
        rss_after = rss_kib(server.process.pid)
    finally:
        sampling.set()
        server.stop()

    statuses = collections.Counter(status for _, status, _ in results)
    errors = {status: count for status, count in statuses.items() if status not in (200, 201, 429)}
    growth = rss_after / rss_before - 1
    # Single readings catch transient batch buffers (glibc hands them back within seconds), so the trend is
    # also given as the median RSS of the run's first and last thirds.
    run_samples = [kib for seconds, kib in samples if seconds >= args.warmup_seconds + args.sample_seconds]
    third = max(1, len(run_samples) // 3)
    early, late = (
        statistics.median(run_samples[:third] or [0]),
        statistics.median(run_samples[-third:] or [0]),
    )
    trend = late / early - 1 if early else float("nan")
    lines = [
        "## Soak (`make soak`)",
        "",
        f"`python -m t2i_scripts.ops.soak --report RELIABILITY.md`: {args.clients} clients for "
        f"{args.seconds:.0f} s "
        f"on loopback against `{Path(args.model).name}` with the default reward model; each request is a "
        "generation (10 steps, 60%), a score of four images (25%) or a rating (15%); a client answered 429 "
        f"waits its `Retry-After` (at most 1 s). RSS before is taken after {args.warmup_seconds:.0f} s of "
        "the same load (not counted; all clients start at once twice, as they do again for the run), "
        "once the working set has grown to this load's largest batch.",
        "",
        "| kind | requests | 2xx | 429 | other | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind in ("generate", "score", "feedback"):
        rows = [(status, seconds) for name, status, seconds in results if name == kind]
        ok = sorted(seconds * 1000 for status, seconds in rows if status in (200, 201))
        p50 = statistics.median(ok) if ok else float("nan")
        p99 = ok[min(len(ok) - 1, round(0.99 * (len(ok) - 1)))] if ok else float("nan")
        counts = collections.Counter(status for status, _ in rows)
        other = sum(count for status, count in counts.items() if status not in (200, 201, 429))
        lines.append(
            f"| {kind} | {len(rows)} | {counts[200] + counts[201]} | {counts[429]} | {other} "
            f"| {p50:.0f} | {p99:.0f} |"
        )
    lines += [
        "",
        f"{len(results)} requests in {elapsed:.0f} s; statuses {dict(sorted(statuses.items()))}; errors "
        f"other than 429: {sum(errors.values())} (target 0). RSS {rss_before / 1024:.1f} MiB before, "
        f"{rss_after / 1024:.1f} MiB after ({growth * 100:+.1f}%, target under 10%).",
        "",
        f"Trend over the run: median RSS {early / 1024:.1f} MiB in its first third, "
        f"{late / 1024:.1f} MiB in its last third ({trend * 100:+.1f}%).",
        "",
        "RSS through the warm-up and the run (seconds since start: MiB): "
        + ", ".join(f"{seconds:.0f}: {kib / 1024:.0f}" for seconds, kib in samples)
        + ".",
    ]
    report = "\n".join(lines)
    print(report)
    if args.report:
        from t2i_scripts.report import write_report

        write_report(args.report, f"{BEGIN}\n{report}\n{END}", BEGIN, END)
    return 0 if not errors and growth < 0.10 else 1


if __name__ == "__main__":
    sys.exit(main())
