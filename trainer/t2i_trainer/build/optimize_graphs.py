"""ONNX Runtime's transformer optimiser over a diffusers/Optimum ONNX export, checked against the original
(#29).

    python -m t2i_trainer.build.optimize_graphs --model models/shapes-sd

For each graph the service runs (text_encoder(s), unet, vae_decoder, vae_encoder), the optimiser of
`onnxruntime.transformers` fuses what ONNX Runtime's own session-time passes leave apart: the UNet's and VAE's
attention into `Attention`/`MultiHeadAttention`, CLIP's into `Attention`, LayerNorm and residual adds into
`SkipLayerNormalization`, Gelu with its bias. Only fusions that the CPU provider runs are enabled for
`--provider cpu` (GroupNorm, NHWC convolutions, BiasSplitGelu and packed QKV are CUDA kernels); `--provider
cuda` enables those too.

Each optimised graph is run beside the original on the same random inputs (ONNX Runtime, CPU provider unless
`--provider cuda`). It is kept only when its outputs are finite and within `--tolerance` of the original's,
relative to the original's largest magnitude; otherwise that component stays as it was. The result goes to
`<model>/optimized/` (or `--out`): the kept graphs in the export's layout, and `optimized.json` recording,
per component, the sha256 of the original graph file, whether it was kept, the fusions made, the error
measured and both graphs' run times. The server (`--optimize-graphs`) reads that file and loads a kept graph
instead of the original only while the original's sha256 still matches.

The output is written to `<out>.partial-<pid>` and renamed when complete, so an interrupted run leaves
nothing that would be trusted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from t2i_trainer.build.convert_fp16 import random_inputs
from t2i_trainer.common.digest import sha256
from t2i_trainer.common.stage_cli import emit

# The graphs the service loads, each with the optimiser's model type.
COMPONENTS = {
    "text_encoder": "clip",
    "text_encoder_2": "clip",
    "unet": "unet",
    "vae_decoder": "vae",
    "vae_encoder": "vae",
}
MANIFEST = "optimized.json"
# Bumped when what this stage writes changes meaning; the server refuses other versions.
FORMAT = 1


def patch_num_heads() -> None:
    """onnxruntime 1.31.1's UNet attention fusion calls `int()` on a one-element array, which numpy 2 refuses
    ("only 0-dimensional arrays can be converted"). Read the element instead; the logic is otherwise the
    library's. The optimiser imports its fusion modules under two names, so both classes are patched."""

    def get_num_heads(self, reshape_q, is_torch2=False):
        if is_torch2:
            parent = self.model.get_parent(reshape_q, 1)
            if parent is not None and parent.op_type == "Concat" and len(parent.input) == 4:
                value = self.model.get_constant_value(parent.input[2])
                if isinstance(value, np.ndarray) and value.size == 1:
                    return int(value.reshape(-1)[0])
            return 0
        value = self.model.get_constant_value(reshape_q.input[1])
        if isinstance(value, np.ndarray) and list(value.shape) == [4]:
            return int(value[2])
        return 0

    import onnxruntime.transformers.optimizer  # noqa: F401  (puts the fusion modules on sys.path)

    for name, module in list(sys.modules.items()):
        if name.endswith("fusion_attention_unet") and hasattr(module, "FusionAttentionUnet"):
            module.FusionAttentionUnet.get_num_heads = get_num_heads


def fusion_options(model_type: str, provider: str):
    from onnxruntime.transformers.fusion_options import FusionOptions

    options = FusionOptions(model_type)
    if provider == "cpu":
        # CUDA-only kernels (com.microsoft GroupNorm, NhwcConv, BiasSplitGelu, BiasAdd) and the packed
        # layouts only the CUDA attention kernels read.
        for flag in (
            "enable_group_norm",
            "enable_skip_group_norm",
            "enable_nhwc_conv",
            "enable_bias_splitgelu",
            "enable_bias_add",
            "enable_packed_qkv",
            "enable_packed_kv",
        ):
            if hasattr(options, flag):
                setattr(options, flag, False)
    return options


# Timed runs of one graph in a row, and the quiet before them. Each session has its own ONNX Runtime thread
# pool, whose threads spin for a moment after a run: taking turns run by run made each graph run while the
# other's threads still spun on the same cores, which slowed both by up to 2x and by different amounts.
BLOCK = 5
QUIET_SECONDS = 0.05


def timed_runs(sessions: list[ort.InferenceSession], feed: dict, rounds: int) -> list[tuple[list, float]]:
    """Each session's outputs and median ms over `rounds` timed runs. The sessions take turns in blocks of
    BLOCK runs, each block after a pause and one untimed run, so that a drift in the machine's speed hits them
    alike and no session runs while another's threads spin."""
    outputs = [session.run(None, feed) for session in sessions]
    times: list[list[float]] = [[] for _ in sessions]
    while len(times[0]) < rounds:
        block = min(BLOCK, rounds - len(times[0]))
        for session, spent in zip(sessions, times, strict=True):
            time.sleep(QUIET_SECONDS)
            session.run(None, feed)
            for _ in range(block):
                started = time.perf_counter()
                session.run(None, feed)
                spent.append(time.perf_counter() - started)
    return [(out, float(np.median(spent)) * 1e3) for out, spent in zip(outputs, times, strict=True)]


def native_latent(model: Path) -> int | None:
    """The UNet's own latent size (`sample_size` in unet/config.json; the first of a pair), for timing the
    graphs at the size the model serves."""
    config = model / "unet" / "config.json"
    if not config.is_file():
        return None
    size = json.loads(config.read_text()).get("sample_size")
    size = size[0] if isinstance(size, list) and size else size
    return size if isinstance(size, int) and size > 0 else None


def compare(
    original: Path, optimized: Path, provider: str, threads: int, rounds: int, latent: int | None = None
) -> dict:
    """Both graphs on the same random inputs: the largest error relative to the original's largest value, and
    each graph's median time (a UNet at `latent`, the model's own latent size, when given)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    providers = ["CUDAExecutionProvider"] if provider == "cuda" else ["CPUExecutionProvider"]
    before = ort.InferenceSession(str(original), options, providers=providers)
    after = ort.InferenceSession(str(optimized), options, providers=providers)
    feed = random_inputs(before, np.random.default_rng(0))
    if "sample" in feed and feed["sample"].shape[1] == 3:
        # The VAE encoder takes pixels: 8x8 (the latent size random_inputs picks) is below its downsampling.
        feed["sample"] = np.random.default_rng(0).uniform(-1, 1, (1, 3, 64, 64)).astype(feed["sample"].dtype)
    elif latent and "sample" in feed and "encoder_hidden_states" in feed:
        rows, channels = feed["sample"].shape[:2]
        feed["sample"] = (
            np.random.default_rng(0)
            .standard_normal((rows, channels, latent, latent))
            .astype(feed["sample"].dtype)
        )
    (expected, before_ms), (actual, after_ms) = timed_runs([before, after], feed, rounds)
    worst = 0.0
    finite = True
    for want, got in zip(expected, actual, strict=True):
        want = np.asarray(want, dtype=np.float64)
        got = np.asarray(got, dtype=np.float64)
        finite = finite and bool(np.isfinite(got).all())
        scale = max(float(np.abs(want).max()), 1e-6)
        worst = max(worst, float(np.abs(want - got).max()) / scale)
    return {"relative_error": worst, "finite": finite, "original_ms": before_ms, "optimized_ms": after_ms}


def optimize_component(
    source: Path, target: Path, model_type: str, provider: str, threads: int, rounds: int, tolerance: float
) -> dict:
    from onnxruntime.transformers.optimizer import optimize_model

    started = time.perf_counter()
    model = optimize_model(
        str(source),
        model_type=model_type,
        num_heads=0,
        hidden_size=0,
        optimization_options=fusion_options(model_type, provider),
        opt_level=0,
        use_gpu=provider == "cuda",
    )
    fused = {op: count for op, count in model.get_fused_operator_statistics().items() if count}
    target.parent.mkdir(parents=True, exist_ok=True)
    # Graphs over protobuf's 2 GB limit (an SD-1.5 UNet in fp32) keep their weights in one external file.
    external = source.stat().st_size > (1 << 30) or any(
        path.name not in (source.name, "config.json") for path in source.parent.iterdir() if path.is_file()
    )
    model.save_model_to_file(str(target), use_external_data_format=external, all_tensors_to_one_file=True)
    result = {"fusions": fused, "optimize_seconds": round(time.perf_counter() - started, 2)}
    result.update(compare(source, target, provider, threads, rounds, native_latent(source.parent.parent)))
    result["kept"] = result["finite"] and result["relative_error"] <= tolerance and bool(fused)
    if not fused:
        result["reason"] = "the optimiser found nothing to fuse"
    elif not result["kept"]:
        result["reason"] = (
            f"relative error {result['relative_error']:.2e} exceeds the tolerance {tolerance:g}"
            if result["finite"]
            else "the optimised graph's outputs are not finite"
        )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, required=True, help="the export (model_index.json at its root)")
    parser.add_argument("--out", type=Path, help="where to write (default: <model>/optimized)")
    parser.add_argument("--provider", choices=("cpu", "cuda"), default="cpu", help="the provider to fuse for")
    parser.add_argument("--tolerance", type=float, default=1e-3, help="largest relative error kept (1e-3)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads for the check (2)")
    parser.add_argument("--rounds", type=int, default=20, help="timed runs of each graph in the check (20)")
    args = parser.parse_args(argv)
    if not (args.model / "model_index.json").is_file():
        parser.error(f"--model {args.model}: no model_index.json (pass an Optimum/diffusers ONNX export)")
    if not 0 < args.tolerance < 1:
        parser.error(f"--tolerance must be between 0 and 1. Given: {args.tolerance}")
    if args.threads < 1 or args.rounds < 1:
        parser.error("--threads and --rounds must be at least 1")
    out = args.out or args.model / "optimized"
    # One partial folder per process: two servers loading the same folder may both optimise it.
    partial = out.with_name(f"{out.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    patch_num_heads()
    components = {}
    for component, model_type in COMPONENTS.items():
        source = args.model / component / "model.onnx"
        if not source.is_file():
            continue
        target = partial / component / "model.onnx"
        result = optimize_component(
            source, target, model_type, args.provider, args.threads, args.rounds, args.tolerance
        )
        if not result["kept"]:
            shutil.rmtree(target.parent, ignore_errors=True)
        result["sha256"] = sha256(source)
        components[component] = result
        emit("component", component=component, **result)
    manifest = {
        "format": FORMAT,
        "onnxruntime": ort.__version__,
        "provider": args.provider,
        "tolerance": args.tolerance,
        "components": components,
    }
    partial.mkdir(parents=True, exist_ok=True)
    (partial / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    try:
        partial.rename(out)
    except OSError:
        # Another process renamed its own result into place first: theirs stands, made from the same graphs.
        shutil.rmtree(partial, ignore_errors=True)
    emit("done", out=str(out), kept=[name for name, result in components.items() if result["kept"]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
