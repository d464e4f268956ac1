"""SDXL and SDXL-Turbo against Optimum's ORTStableDiffusionXLPipeline, side by side in one run (issue #27).

For each case, one server (`t2i-align serve`) and one Optimum pipeline load the same ONNX files, with the same
onnxruntime library and intra-op thread count. They take turns, with a pause of quiet before each call, so
that any drift in the machine's speed hits both alike. The Rust time is measured by the client around the
whole HTTP request; the Python time around the pipeline call (PIL output). The section it writes goes into
BENCHMARKS.md between its markers; `make bench`, which rewrites that file, keeps it.

Cases:
* SDXL base: one image, 20 Euler steps, guidance 5.0 (UNet at batch 2), at the model's own size;
* SDXL-Turbo: one image, 1 step of Euler ancestral at guidance 0 (UNet at batch 1), as Turbo is served;
* SDXL-Turbo: 4 unguided steps.

Run with `make bench-families` (the trainer's environment has diffusers and optimum-onnx).
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from PIL import Image

from t2i_scripts.bench.bench import ort_library
from t2i_scripts.report import command_line, median_interval, ratio_interval, repo_relative, write_report
from t2i_scripts.server import ServerProcess, serve_command

BEGIN = "<!-- families:begin -->"
END = "<!-- families:end -->"
PROMPT = "a red circle on a white background"
# (case, model folder, steps, guidance scale)
CASES = (
    ("SDXL base, 20 Euler steps, guidance 5", "models/tiny-sdxl", 20, 5.0),
    ("SDXL-Turbo, 1 step, guidance 0", "models/tiny-sdxl-turbo", 1, 0.0),
    ("SDXL-Turbo, 4 steps, guidance 0", "models/tiny-sdxl-turbo", 4, 0.0),
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--binary", default="target/release/t2i-align", help="the t2i-align binary")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads on both sides")
    parser.add_argument("--runs", type=int, default=21, help="timed runs per side and case, after warm-up")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs per side and case")
    parser.add_argument("--pause", type=float, default=0.3, help="seconds of quiet before each timed call")
    parser.add_argument("--port", type=int, default=18090, help="loopback port for the server")
    parser.add_argument("--out", default="BENCHMARKS.md", help="the report that gets the section")
    return parser.parse_args()


def optimum_pipeline(model: str, threads: int):
    import onnxruntime
    from optimum.onnxruntime import ORTStableDiffusionXLPipeline

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    pipe = ORTStableDiffusionXLPipeline.from_pretrained(
        model, provider="CPUExecutionProvider", session_options=options, local_files_only=True
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_optimum(pipe, steps: int, guidance: float, seed: int) -> float:
    import torch

    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    pipe(PROMPT, num_inference_steps=steps, guidance_scale=guidance, generator=generator)
    return time.perf_counter() - started


def measure(args: argparse.Namespace, library: str, model: str, steps: int, guidance: float) -> dict:
    command = serve_command(args.binary, model, threads=args.threads, flags=["--no-reward-model"])
    server = ServerProcess(command, args.port, library)
    pipe = optimum_pipeline(model, args.threads)
    body = {"prompt": PROMPT, "n": 1, "steps": steps, "guidance_scale": guidance}
    try:
        for seed in range(args.warmup):
            server.post("/generate", body | {"seed": seed})
            run_optimum(pipe, steps, guidance, seed)
        rust, python = [], []
        for seed in range(args.runs):
            time.sleep(args.pause)
            elapsed, answer = server.post("/generate", body | {"seed": seed})
            rust.append(elapsed)
            time.sleep(args.pause)
            python.append(run_optimum(pipe, steps, guidance, seed))
        width, height = Image.open(io.BytesIO(base64.b64decode(answer["images"][0]["png_base64"]))).size
    finally:
        server.stop()
    return {"rust": rust, "python": python, "size": f"{width}x{height}"}


def section(args: argparse.Namespace, library: str, results: list[tuple[str, str, dict]]) -> str:
    import onnxruntime
    import torch

    rows = []
    for case, model, result in results:
        rust_ms = [seconds * 1e3 for seconds in result["rust"]]
        python_ms = [seconds * 1e3 for seconds in result["python"]]
        ratio = statistics.median(rust_ms) / statistics.median(python_ms)
        low, high = ratio_interval(rust_ms, python_ms)
        rust_low, rust_high = median_interval(rust_ms)
        python_low, python_high = median_interval(python_ms)
        faster = "t2i-align" if high < 1 else "Optimum" if low > 1 else "not settled (the interval spans 1)"
        rows.append(
            f"| {case} | `{model}` | {result['size']} | {statistics.median(rust_ms):.1f} "
            f"({rust_low:.1f} to {rust_high:.1f}) | {statistics.median(python_ms):.1f} "
            f"({python_low:.1f} to {python_high:.1f}) | {ratio:.3f}x ({low:.3f} to {high:.3f}) | {faster} |"
        )
    command = command_line("t2i_scripts.bench.bench_families", sys.argv[1:])
    return f"""{BEGIN}
## SDXL and SDXL-Turbo: `/generate` vs Optimum's `ORTStableDiffusionXLPipeline`

Measured by `make bench-families` (`{command}`), in one run, side by side: {args.runs} timed runs per side
and case after {args.warmup} warm-up runs, the sides taking turns with {args.pause} s of quiet before each
call. Both sides load the same files (the tiny random-weight SDXL and its Turbo variant that
`trainer/t2i_trainer/build/build_tiny_sdxl.py` builds) with onnxruntime {onnxruntime.__version__}
(`{Path(library).name}`) on the CPU execution provider with {args.threads} intra-op threads. The Rust time
is the client's, around the whole HTTP request (JSON, PNG and base64 included); the Python time is around
the pipeline call. Medians in ms with 95% bootstrap intervals; the ratio is Rust / Python. These models are
toys (a few MB), so per-call overhead weighs far more here than with a real SDXL, whose UNet dominates both
sides.

| case | model | size | t2i-align ms | Optimum ms | ratio | faster |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()},
torch {torch.__version__}.
{END}"""


def main() -> None:
    args = parse_args()
    import torch

    torch.set_num_threads(args.threads)
    library = ort_library()
    results = []
    for case, model, steps, guidance in CASES:
        results.append((case, repo_relative(model), measure(args, library, model, steps, guidance)))
        print(f"measured: {case}", flush=True)
    text = section(args, library, results)
    write_report(Path(args.out), text, BEGIN, END)
    print(text)


if __name__ == "__main__":
    main()
