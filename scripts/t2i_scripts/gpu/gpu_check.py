"""The GPU check (#29): everything `make gpu-check` measures, in one run, written to GPU.md and GPU.json.

On the lent GPU machine, after the bundle is assembled (docs/gpu.md):

    . /tmp/t2i-gpu/env.sh && make gpu-check GPU_CHECK_FLAGS="--out $OUT"

Rehearsed here, on the CPU, with tiny sizes (`make gpu-check-rehearsal`):

    python -m t2i_scripts.gpu.gpu_check --device cpu --scale tiny --out build/gpu-rehearsal

Sections, each recorded even when another fails (the JSON is rewritten after every section):
1. `provider`: `t2i-align generate --device cuda` runs and says CUDAExecutionProvider; with the GPU hidden
   (CUDA_VISIBLE_DEVICES=""), `--device cuda` fails and says why instead of falling back to the CPU.
2. `parity`: the same seeded request on the device and on the CPU, for each pipeline family the bundle carries
   (SD 1.x: shapes-sd and tiny-sd; SDXL: tiny-sdxl; LCM: tiny-lcm): the decoded images' mean and largest
   absolute difference in 8-bit levels.
3. `unet`: an SD-1.5-sized UNet (build_sd15.py: the real architecture, random weights), fp16 and fp32, at
   --size: ONNX Runtime alone (the carried onnxruntime-gpu's Python API), UNet calls at 1, 4 and 8 images
   (2, 8 and 16 rows with guidance), with numpy inputs (copied to the device every call) and with I/O binding
   (inputs and output resident on the device). FLOPs per call come from the graph (Conv and MatMul, after
   shape inference), so each time gives TFLOP/s and its share of the GPU's dense fp16 tensor peak.
4. `service`: the same exports through `t2i-align serve`: one request of 1, 4 and 8 images, steps per second,
   images per second, and the GPU memory in use (nvidia-smi, polled).
5. `batching`: 8 concurrent clients against 1, images per second (fp16).
6. `best_of`: best_of 16 against one image, the time of one request (fp16, with the shapes reward model).
7. `optimum`: Optimum's ORTStableDiffusionPipeline on the same files, the same provider, steps and size,
   taking turns with `/generate` (fp16 and fp32).

Goals (#29): inside the UNet at least 25% of the dense fp16 peak at 8 images; 8 clients at least 3x one
client's throughput; best_of 16 at most 4x one image's time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "scripts"))  # the remote runs this file with PYTHONPATH=scripts; here a no-op
PROMPT = "two blue stars on a white background"
# Dense (no sparsity) fp16/bf16 tensor-core peaks, FLOP/s, from NVIDIA's data sheets (SXM parts).
FP16_PEAKS = {"H200": 989.4e12, "H100": 989.4e12, "A100": 312e12, "L40S": 362.05e12}
FAMILIES = (
    # (model folder under --models, steps, guidance scale)
    ("shapes-sd", 20, 2.0),
    ("tiny-sd", 10, 7.5),
    ("tiny-sdxl", 10, 5.0),
    ("tiny-lcm", 4, 1.0),
)
IMAGE_COUNTS = (1, 4, 8)
GOALS = {"unet_peak_share_at_8": 0.25, "clients_8_gain": 3.0, "best_of_16_cost": 4.0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    default_binary = os.environ.get("T2I_GPU_BINARY", str(ROOT / "target/release/t2i-align"))
    parser.add_argument("--binary", default=default_binary, help="t2i-align (default: $T2I_GPU_BINARY)")
    parser.add_argument(
        "--models", type=Path, default=Path(os.environ.get("T2I_GPU_MODELS", ROOT / "models")),
        help="the folder holding shapes-sd, tiny-sd, tiny-sdxl, tiny-lcm, shapes-reward ($T2I_GPU_MODELS)",
    )  # fmt: skip
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="what is checked")
    parser.add_argument("--scale", choices=("full", "tiny"), default="full", help="SD 1.5's sizes, or tiny")
    parser.add_argument("--size", type=int, help="image size (default: 512 full, 64 tiny)")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps of the service's requests")
    parser.add_argument("--runs", type=int, default=5, help="timed repetitions of each measurement")
    parser.add_argument("--work", type=Path, default=Path("/tmp/t2i-gpu/work"), help="built models, logs")
    parser.add_argument("--out", type=Path, default=Path("."), help="where GPU.md and GPU.json go")
    parser.add_argument("--port", type=int, default=18300, help="loopback port of the servers")
    parser.add_argument("--threads", type=int, default=0, help="CPU intra-op threads (0: ONNX Runtime's)")
    parser.add_argument("--only", default="", help="comma-separated sections to run (default: all)")
    parser.add_argument(
        "--budget", type=float, default=0,
        help="seconds after which no further section starts (0: none), so a run under a time limit still "
        "writes its report",
    )  # fmt: skip
    args = parser.parse_args(argv)
    args.size = args.size or (512 if args.scale == "full" else 64)
    if args.size % 8 or args.steps < 1 or args.runs < 1:
        parser.error("--size must be a multiple of 8, and --steps and --runs at least 1")
    if not Path(args.binary).is_file():
        parser.error(f"--binary {args.binary} does not exist (build it, or source the bundle's env.sh)")
    return args


# ---------------------------------------------------------------------------------------------------- helpers


def run(command: list[str], env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, env=dict(os.environ, **(env or {})), capture_output=True, text=True, timeout=timeout
    )


def gpu_name() -> str:
    try:
        out = run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], timeout=30)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 else ""
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return ""


def fp16_peak(name: str) -> float | None:
    return next((peak for key, peak in FP16_PEAKS.items() if key in name), None)


class MemoryPoll:
    """The most GPU memory in use (MiB) while the block runs, from nvidia-smi every 0.2 s."""

    def __init__(self) -> None:
        self.peak: int | None = None
        self.stop = threading.Event()

    def __enter__(self) -> MemoryPoll:
        if shutil.which("nvidia-smi"):
            threading.Thread(target=self._poll, daemon=True).start()
        return self

    def _poll(self) -> None:
        while not self.stop.is_set():
            out = run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"], timeout=10)
            if out.returncode == 0 and out.stdout.strip():
                used = int(out.stdout.split()[0])
                self.peak = max(self.peak or 0, used)
            self.stop.wait(0.2)

    def __exit__(self, *exc) -> None:
        self.stop.set()


def server(args: argparse.Namespace, model: Path, port: int, flags: list[str] = ()):
    from t2i_scripts.server import ServerProcess

    command = [args.binary, "serve", "--model", str(model), "--host", "127.0.0.1", "--device", args.device]
    command += ["--intra-threads", str(args.threads), "--warmup-sizes", str(args.size), *flags]
    return ServerProcess(command, port, os.environ.get("ORT_DYLIB_PATH"), ready_timeout=900)


def generate_body(args: argparse.Namespace, n: int, seed: int, **extra) -> dict:
    return {
        "prompt": PROMPT, "n": n, "steps": args.steps, "guidance_scale": 7.5, "scheduler": "ddim",
        "seed": seed, "width": args.size, "height": args.size, **extra,
    }  # fmt: skip


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1e3


# --------------------------------------------------------------------------------------------------- sections


def check_provider(args: argparse.Namespace) -> dict:
    model = args.models / "tiny-sd"
    out = args.work / "provider.png"
    base = [args.binary, "generate", "a red circle", "--steps", "2", "--model", str(model)]
    base.append("--no-reward-model")
    ran = run([*base, "--device", args.device, "-o", str(out)])
    registered = ran.returncode == 0 and out.is_file()
    label = "CUDAExecutionProvider" if args.device == "cuda" else "CPUExecutionProvider"
    hidden_png = str(args.work / "hidden.png")
    hidden = run([*base, "--device", "cuda", "-o", hidden_png], {"CUDA_VISIBLE_DEVICES": ""})
    message = (hidden.stderr.strip().splitlines() or [""])[-1]
    return {
        "device": args.device,
        "runs": registered and label in ran.stderr,
        "stderr_tail": ran.stderr.strip().splitlines()[-3:],
        "refuses_fallback": hidden.returncode != 0 and "cuda:0" in hidden.stderr,
        "refusal": message[:400],
    }


def check_parity(args: argparse.Namespace) -> dict:
    import numpy as np
    from PIL import Image

    results = {}
    for name, steps, guidance in FAMILIES:
        model = args.models / name
        if not (model / "model_index.json").is_file():
            results[name] = {"skipped": f"{model} is missing"}
            continue
        images = {}
        for device in (args.device, "cpu"):
            out = args.work / f"parity-{name}-{device}.png"
            command = [args.binary, "generate", PROMPT, "--model", str(model), "--no-reward-model"]
            command += ["--steps", str(steps), "--guidance-scale", str(guidance), "--seed", "3"]
            ran = run([*command, "--device", device, "-o", str(out)])
            if ran.returncode != 0:
                raise RuntimeError(f"{name} on {device}: {ran.stderr[-600:]}")
            images[device] = np.asarray(Image.open(out).convert("RGB"), dtype=np.int16)
        difference = np.abs(images[args.device] - images["cpu"])
        results[name] = {
            "steps": steps,
            "mean_abs_levels": float(difference.mean()),
            "max_abs_levels": int(difference.max()),
            "pixels_over_8_levels": float((difference > 8).mean()),
        }
    return results


def build_sd15(args: argparse.Namespace) -> dict:
    out = args.work / ("sd15" if args.scale == "full" else "sd15-tiny")
    started = time.perf_counter()
    command = [sys.executable, "-m", "t2i_scripts.gpu.build_sd15", "--out", str(out), "--scale", args.scale]
    paths = [str(ROOT / "scripts"), str(ROOT / "trainer"), os.environ.get("PYTHONPATH", "")]
    env = {"PYTHONPATH": os.pathsep.join(path for path in paths if path)}
    built = run([*command, "--fp16"], env, timeout=1800)
    if built.returncode != 0:
        raise RuntimeError(f"build_sd15 failed: {built.stderr[-1500:]}")
    return {"fp32": str(out), "fp16": str(out) + "-fp16", "seconds": round(time.perf_counter() - started, 1)}


def unet_flops(path: Path, rows: int, latent: int, sequence: int) -> float:
    """FLOPs of one UNet call: 2 x multiply-adds of every Conv and MatMul/Gemm, shapes from inference."""
    import numpy as np
    import onnx
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    model = onnx.load(str(path), load_external_data=False)
    fixed = {"batch_size": rows, "height": latent, "width": latent, "sequence_length": sequence}
    for value in model.graph.input:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in fixed:
                size = fixed[dim.dim_param]
                dim.ClearField("dim_param")
                dim.dim_value = size
    inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    shapes = {}
    for value in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [dim.dim_value if dim.HasField("dim_value") else None for dim in dims]
    for tensor in inferred.graph.initializer:
        shapes[tensor.name] = list(tensor.dims)
    total, unknown = 0.0, 0
    for node in inferred.graph.node:
        out = shapes.get(node.output[0])
        if node.op_type == "Conv":
            weight = shapes.get(node.input[1])
            if not weight or not out or None in out:
                unknown += 1
                continue
            total += 2.0 * float(np.prod(out)) * float(np.prod(weight[1:]))
        elif node.op_type in ("MatMul", "Gemm"):
            left = shapes.get(node.input[0])
            if not left or not out or None in out or None in left:
                unknown += 1
                continue
            inner = (
                left[-2]
                if node.op_type == "Gemm" and any(a.name == "transA" and a.i for a in node.attribute)
                else left[-1]
            )
            total += 2.0 * float(np.prod(out)) * float(inner)
    if unknown:
        raise RuntimeError(f"{unknown} Conv/MatMul nodes of {path} have shapes inference left open")
    return total


def unet_feed(session, rows: int, latent: int, sequence: int, hidden: int):
    import numpy as np

    rng = np.random.default_rng(0)
    feed = {}
    for spec in session.get_inputs():
        dtype = np.float16 if "float16" in spec.type else np.float32
        if spec.name == "sample":
            feed[spec.name] = rng.standard_normal((rows, 4, latent, latent)).astype(dtype)
        elif spec.name == "timestep":
            shape = () if len(spec.shape) == 0 else (rows,)
            feed[spec.name] = np.full(shape, 500, dtype=np.int64 if "int64" in spec.type else dtype)
        elif spec.name == "encoder_hidden_states":
            feed[spec.name] = rng.standard_normal((rows, sequence, hidden)).astype(dtype)
        else:
            raise RuntimeError(f"an SD UNet input this check does not know: {spec.name}")
    return feed


def time_unet(session, feed: dict, device: str, binding: bool, runs: int) -> float:
    """Median seconds of one UNet call after 3 untimed ones."""
    import onnxruntime as ort

    if binding:
        bound = session.io_binding()
        where = "cuda" if device == "cuda" else "cpu"
        for name, value in feed.items():
            bound.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value, where, 0))
        bound.bind_output(session.get_outputs()[0].name, where)

        def call():
            session.run_with_iobinding(bound)
            if device == "cuda":
                bound.synchronize_outputs()
    else:
        output = [session.get_outputs()[0].name]

        def call():
            session.run(output, feed)

    for _ in range(3):
        call()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def check_unet(args: argparse.Namespace, exports: dict) -> dict:
    import onnxruntime as ort

    name = gpu_name()
    peak = fp16_peak(name)
    latent = args.size // 8
    providers = (
        [("CUDAExecutionProvider", {"cudnn_conv_algo_search": "EXHAUSTIVE"}), "CPUExecutionProvider"]
        if args.device == "cuda"
        else ["CPUExecutionProvider"]
    )
    results = {"gpu": name, "fp16_peak_flops": peak, "latent": latent}
    for dtype in ("fp16", "fp32"):
        path = Path(exports[dtype]) / "unet" / "model.onnx"
        config = json.loads((Path(exports[dtype]) / "unet" / "config.json").read_text())
        hidden = config["cross_attention_dim"]
        options = ort.SessionOptions()
        if args.threads:
            options.intra_op_num_threads = args.threads
        session = ort.InferenceSession(str(path), options, providers=providers)
        rows_results = []
        for images in IMAGE_COUNTS:
            rows = 2 * images
            flops = unet_flops(Path(exports["fp32"]) / "unet" / "model.onnx", rows, latent, 77)
            feed = unet_feed(session, rows, latent, 77, hidden)
            row = {"images": images, "rows": rows, "gflop": flops / 1e9}
            for binding in (False, True):
                seconds = time_unet(session, feed, args.device, binding, args.runs)
                key = "bound" if binding else "copied"
                row[f"{key}_ms"] = seconds * 1e3
                row[f"{key}_tflops"] = flops / seconds / 1e12
                if peak:
                    row[f"{key}_peak_share"] = flops / seconds / peak
            rows_results.append(row)
            print(json.dumps({"unet": dtype, **row}), flush=True)
        results[dtype] = {"providers": session.get_providers(), "rows": rows_results}
        del session
    return results


def check_service(args: argparse.Namespace, exports: dict) -> dict:
    results = {}
    # The fp16 export runs with the device-resident loop (the default on CUDA, named so that the CPU rehearsal
    # runs it too) and with latents on the host between UNet calls (`--resident-loop off`), to measure what
    # keeping them on the device gains.
    sides = (
        ("fp16", "fp16", ["--resident-loop", "on"]),
        ("fp16_host_loop", "fp16", ["--resident-loop", "off"]),
        ("fp32", "fp32", []),
    )
    for side, dtype, flags in sides:
        with MemoryPoll() as memory:
            process = server(args, Path(exports[dtype]), args.port, ["--no-reward-model", *flags])
            try:
                rows = []
                for images in IMAGE_COUNTS:
                    times = []
                    for seed in range(args.runs):
                        seconds, payload = process.post("/generate", generate_body(args, images, seed))
                        times.append(seconds)
                    seconds = statistics.median(times)
                    row = {
                        "images": images,
                        "ms": seconds * 1e3,
                        "steps_per_second": args.steps / seconds,
                        "images_per_second": images / seconds,
                        "inference_ms": payload["timings"]["inference_ms"],
                    }
                    rows.append(row)
                    print(json.dumps({"service": side, **row}), flush=True)
                health = process.get("/health")
            finally:
                process.stop()
        results[side] = {
            "rows": rows,
            "execution_provider": health.get("execution_provider"),
            "gpu_memory_peak_mib": memory.peak,
        }
    return results


def check_batching(args: argparse.Namespace, exports: dict) -> dict:
    process = server(args, Path(exports["fp16"]), args.port, ["--no-reward-model", "--queue-capacity", "64"])
    try:
        process.post("/generate", generate_body(args, 1, 0))
        requests = max(args.runs, 4)
        levels = {}
        for clients in (1, 8):
            latencies: list[float] = []

            def client(index: int, clients: int = clients, latencies: list = latencies) -> None:
                for turn in range(requests):
                    seconds, _ = process.post("/generate", generate_body(args, 1, 100 * index + turn))
                    latencies.append(seconds)

            started = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                list(pool.map(client, range(clients)))
            wall = time.perf_counter() - started
            levels[clients] = {
                "requests": clients * requests,
                "images_per_second": clients * requests / wall,
                "p50_ms": median_ms(latencies),
            }
            print(json.dumps({"batching": clients, **levels[clients]}), flush=True)
    finally:
        process.stop()
    gain = levels[8]["images_per_second"] / levels[1]["images_per_second"]
    return {"levels": levels, "gain": gain, "goal": GOALS["clients_8_gain"]}


def check_best_of(args: argparse.Namespace, exports: dict) -> dict:
    reward = args.models / "shapes-reward"
    process = server(args, Path(exports["fp16"]), args.port, ["--reward-model", str(reward)])
    try:
        process.post("/generate", generate_body(args, 1, 0, best_of=16))
        one, sixteen = [], []
        for seed in range(args.runs):
            one.append(process.post("/generate", generate_body(args, 1, seed))[0])
            sixteen.append(process.post("/generate", generate_body(args, 1, seed, best_of=16))[0])
    finally:
        process.stop()
    cost = statistics.median(sixteen) / statistics.median(one)
    return {
        "one_ms": median_ms(one),
        "best_of_16_ms": median_ms(sixteen),
        "cost": cost,
        "goal": GOALS["best_of_16_cost"],
    }


def check_optimum(args: argparse.Namespace, exports: dict) -> dict:
    import onnxruntime
    import torch
    from diffusers import DDIMScheduler
    from optimum.onnxruntime import ORTStableDiffusionPipeline

    provider = "CUDAExecutionProvider" if args.device == "cuda" else "CPUExecutionProvider"
    results = {}
    for dtype in ("fp16", "fp32"):
        options = onnxruntime.SessionOptions()
        if args.threads:
            options.intra_op_num_threads = args.threads
        pipe = ORTStableDiffusionPipeline.from_pretrained(
            exports[dtype], provider=provider, session_options=options
        )
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)

        def optimum(seed: int, pipe=pipe) -> float:
            generator = torch.Generator().manual_seed(seed)
            started = time.perf_counter()
            pipe(PROMPT, num_inference_steps=args.steps, guidance_scale=7.5, height=args.size,
                 width=args.size, generator=generator)  # fmt: skip
            return time.perf_counter() - started

        process = server(args, Path(exports[dtype]), args.port, ["--no-reward-model"])
        try:
            process.post("/generate", generate_body(args, 1, 0))
            optimum(0)
            ours, theirs = [], []
            for seed in range(args.runs):
                ours.append(process.post("/generate", generate_body(args, 1, seed))[0])
                theirs.append(optimum(seed))
        finally:
            process.stop()
        del pipe
        results[dtype] = {
            "t2i_align_ms": median_ms(ours),
            "optimum_ms": median_ms(theirs),
            "ratio": statistics.median(ours) / statistics.median(theirs),
        }
        print(json.dumps({"optimum": dtype, **results[dtype]}), flush=True)
    return results


# ----------------------------------------------------------------------------------------------------- report


def markdown(args: argparse.Namespace, data: dict) -> str:
    lines = [
        "# GPU check",
        "",
        "Written by `python -m t2i_scripts.gpu.gpu_check` (`make gpu-check`, docs/gpu.md) on "
        f"{data['machine']}, "
        f"device `{args.device}`, scale `{args.scale}`, {args.size}x{args.size}, {args.steps} DDIM steps, "
        f"medians of {args.runs} runs. {data['seconds']:.0f} s in all.",
        "",
    ]
    for name, section in data["sections"].items():
        lines += [f"## {name}", ""]
        if "error" in section:
            lines += ["**failed**:", "", "```", section["error"].strip()[-1500:], "```", ""]
            continue
        lines += ["```json", json.dumps(section, indent=1, default=str)[:6000], "```", ""]
    lines += ["## Goals", ""]
    for goal, verdict in data["goals"].items():
        lines.append(f"- {goal}: {verdict}")
    return "\n".join(lines) + "\n"


def goals(sections: dict) -> dict:
    verdicts = {}
    unet = sections.get("unet", {})
    eight = next((row for row in unet.get("fp16", {}).get("rows", []) if row["images"] == 8), None)
    if eight and "bound_peak_share" in eight:
        share = max(eight["bound_peak_share"], eight["copied_peak_share"])
        met = share >= GOALS["unet_peak_share_at_8"]
        verdicts["UNet at 8 images >= 25% of the dense fp16 peak"] = (
            f"{share:.1%} ({'met' if met else 'not met'})"
        )
    else:
        verdicts["UNet at 8 images >= 25% of the dense fp16 peak"] = "not measured (no known GPU peak)"
    batching = sections.get("batching", {})
    if "gain" in batching:
        met = batching["gain"] >= GOALS["clients_8_gain"]
        verdicts["8 clients >= 3x one client"] = f"{batching['gain']:.2f}x ({'met' if met else 'not met'})"
    service = sections.get("service", {})
    if "fp16" in service and "fp16_host_loop" in service:
        host = {row["images"]: row["ms"] for row in service["fp16_host_loop"]["rows"]}
        ratios = [
            f"{row['ms'] / host[row['images']]:.3f}x at {row['images']}"
            for row in service["fp16"]["rows"]
            if host.get(row["images"])
        ]
        verdicts["resident loop / host loop, fp16 request time (not a goal)"] = ", ".join(ratios)
    best_of = sections.get("best_of", {})
    if "cost" in best_of:
        met = best_of["cost"] <= GOALS["best_of_16_cost"]
        verdicts["best_of 16 <= 4x one image"] = f"{best_of['cost']:.2f}x ({'met' if met else 'not met'})"
    return verdicts


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    only = {name for name in args.only.split(",") if name}
    started = time.perf_counter()
    data = {
        "machine": f"{platform.node()} ({gpu_name() or 'no GPU'}, {os.cpu_count()} CPUs)",
        "args": {key: str(value) for key, value in vars(args).items()},
        "sections": {},
    }

    def record(name: str, check, *extra) -> dict | None:
        if only and name not in only and name != "build":
            return None
        if args.budget and time.perf_counter() - started > args.budget:
            data["sections"][name] = {"error": f"not run: the --budget of {args.budget:g} s was spent"}
            return data["sections"][name]
        print(json.dumps({"section": name, "started": time.time()}), flush=True)
        try:
            data["sections"][name] = check(args, *extra)
        except Exception:  # noqa: BLE001 - a failed section is recorded and the others still run
            data["sections"][name] = {"error": traceback.format_exc()}
        data["seconds"] = time.perf_counter() - started
        data["goals"] = goals(data["sections"])
        (args.out / "GPU.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
        (args.out / "GPU.md").write_text(markdown(args, data))
        return data["sections"][name]

    record("provider", check_provider)
    record("parity", check_parity)
    needs_build = not only or bool(only - {"provider", "parity"})
    exports = record("build", build_sd15) if needs_build else None
    if exports and "error" not in exports:
        record("unet", check_unet, exports)
        record("service", check_service, exports)
        record("batching", check_batching, exports)
        record("best_of", check_best_of, exports)
        record("optimum", check_optimum, exports)
    failed = [name for name, section in data["sections"].items() if "error" in section]
    print(json.dumps({"done": round(time.perf_counter() - started, 1), "failed": failed}), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
