"""Benchmark: one `/generate` of one 64x64 image with 20 DDIM steps through HTTP, against Optimum's
ORTStableDiffusionPipeline doing the same, side by side in one run: same ONNX files, same onnxruntime version,
same thread count. Writes BENCHMARKS.md.

Run with `make bench` (it uses the trainer's environment, which has torch, diffusers and optimum-onnx).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from server_process import ServerProcess

PROMPT = "two blue stars on a white background"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--binary", default="target/release/t2i-align", help="the t2i-align binary")
    parser.add_argument("--model", default="models/tiny-sd", help="an Optimum ONNX export folder")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads on both sides")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps per image")
    parser.add_argument("--size", type=int, default=64, help="image width and height")
    parser.add_argument("--runs", type=int, default=21, help="timed runs per side, after warm-up")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs per side")
    parser.add_argument("--pause", type=float, default=0.5, help="seconds of quiet before each timed call")
    parser.add_argument("--port", type=int, default=18080, help="loopback port for the server")
    parser.add_argument("--out", default="BENCHMARKS.md", help="where to write the report")
    return parser.parse_args()


def ort_library() -> str:
    import onnxruntime

    capi = Path(onnxruntime.__file__).parent / "capi"
    candidates = sorted(capi.glob("libonnxruntime.so*"))
    if not candidates:
        sys.exit(f"no libonnxruntime.so in {capi}")
    return str(max(candidates, key=lambda p: len(p.name)))


class RustServer(ServerProcess):
    def __init__(self, args: argparse.Namespace, library: str):
        command = [
            args.binary, "serve", "--model", args.model, "--host", "127.0.0.1",
            "--intra-threads", str(args.threads), "--workers", "1", "--no-reward-model",
        ]  # fmt: skip
        super().__init__(command, args.port, library)

    def generate(self, steps: int, size: int, seed: int) -> tuple[float, dict]:
        return self.post("/generate", {
            "prompt": PROMPT, "n": 1, "steps": steps, "guidance_scale": 7.5, "scheduler": "ddim",
            "seed": seed, "width": size, "height": size,
        })  # fmt: skip


def optimum_pipeline(model: str, threads: int):
    import onnxruntime
    from diffusers import DDIMScheduler
    from optimum.onnxruntime import ORTStableDiffusionPipeline

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    pipe = ORTStableDiffusionPipeline.from_pretrained(
        model, provider="CPUExecutionProvider", session_options=options
    )
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    pipe.ort_seconds = 0.0
    for component in (pipe.text_encoder, pipe.unet, pipe.vae_decoder):
        run = component.session.run

        def timed_run(*args, _run=run, **kwargs):
            started = time.perf_counter()
            try:
                return _run(*args, **kwargs)
            finally:
                pipe.ort_seconds += time.perf_counter() - started

        component.session.run = timed_run
    return pipe


def run_optimum(pipe, steps: int, size: int, seed: int) -> float:
    import torch

    generator = torch.Generator().manual_seed(seed)
    pipe.ort_seconds = 0.0
    started = time.perf_counter()
    pipe(PROMPT, num_inference_steps=steps, guidance_scale=7.5, height=size, width=size, generator=generator)
    return time.perf_counter() - started


def main() -> None:
    args = parse_args()
    import onnxruntime
    import torch

    torch.set_num_threads(args.threads)
    library = ort_library()
    server = RustServer(args, library)
    pipe = optimum_pipeline(args.model, args.threads)
    try:
        for seed in range(args.warmup):
            server.generate(args.steps, args.size, seed)
            run_optimum(pipe, args.steps, args.size, seed)
        rust_seconds, python_seconds, outside_share, inference_ms, python_ort_ms = [], [], [], [], []
        # Alternate the two sides so that any drift in the machine's speed hits both alike, with a pause
        # before each call so that the other side's ONNX Runtime threads have stopped spinning.
        for seed in range(args.runs):
            time.sleep(args.pause)
            elapsed, payload = server.generate(args.steps, args.size, seed)
            rust_seconds.append(elapsed)
            inference = payload["timings"]["inference_ms"] / 1e3
            inference_ms.append(payload["timings"]["inference_ms"])
            outside_share.append((elapsed - inference) / elapsed)
            time.sleep(args.pause)
            python_seconds.append(run_optimum(pipe, args.steps, args.size, seed))
            python_ort_ms.append(pipe.ort_seconds * 1e3)
    finally:
        server.stop()

    rust = statistics.median(rust_seconds)
    python = statistics.median(python_seconds)
    outside = statistics.median(outside_share)
    ratio = rust / python
    command = " ".join(["python", "scripts/bench.py"] + sys.argv[1:])
    rows = "\n".join(
        f"| {i} | {r * 1e3:.1f} | {p * 1e3:.1f} | {s * 100:.1f}% |"
        for i, (r, p, s) in enumerate(zip(rust_seconds, python_seconds, outside_share, strict=True))
    )
    report = f"""# Benchmarks

All figures are measured by `make bench` (`{command}`), in one run, side by side. Medians of
{args.runs} runs after {args.warmup} warm-up runs per side; the sides take turns, with {args.pause} s of
quiet before each call so that neither side's ONNX Runtime threads are still spinning.

## Single-request latency: `/generate` vs Optimum's `ORTStableDiffusionPipeline`

One {args.size}x{args.size} image, {args.steps} DDIM steps, guidance 7.5 (UNet at batch 2),
model `{args.model}`. Both sides use the same ONNX files and onnxruntime {onnxruntime.__version__}
(`{Path(library).name}`) on the CPU execution provider with {args.threads} intra-op threads. The Rust time
is measured by the client around the whole HTTP request (JSON, PNG encoding and base64 included); the
Python time around the pipeline call (PIL output).

| side | median latency |
|---|---|
| t2i-align `/generate` over HTTP | {rust * 1e3:.1f} ms |
| Optimum `ORTStableDiffusionPipeline` | {python * 1e3:.1f} ms |
| **ratio Rust / Python** | **{ratio:.3f}x** (target <= 0.6x) |

Share of the Rust request time spent outside ONNX Runtime `run` calls (client time minus the server's
`inference_ms`, over client time): **{outside * 100:.1f}%** (target <= 10%).

Where the time goes (medians): t2i-align spends {statistics.median(inference_ms):.1f} ms inside ONNX Runtime
`run` calls and the rest of its {rust * 1e3:.1f} ms outside; Optimum spends
{statistics.median(python_ort_ms):.1f} ms inside `run` (its sessions' `run`, timed by this script) and
{(python - statistics.median(python_ort_ms) / 1e3) * 1e3:.1f} ms in Python around them. Both run the same
graphs, so the ratio is bounded by the shared ONNX Runtime time; t2i-align's gains are the Python overhead it
does not have and its one thread pool shared by all sessions (`--shared-thread-pool`), which stops idle
sessions' spinning threads from taking the cores of the one that works.

| run | Rust ms | Python ms | Rust outside ORT |
|---|---|---|---|
{rows}

Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()},
torch {torch.__version__}.
"""
    Path(args.out).write_text(report)
    print(report)


if __name__ == "__main__":
    main()
