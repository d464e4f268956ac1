"""An fp16 variant of a diffusers/Optimum ONNX export, for serving on CUDA (issue #6).

    python -m t2i_trainer.build.convert_fp16 --model models/shapes-sd --out build/shapes-sd-fp16
    t2i-align serve --model build/shapes-sd-fp16 --device cuda

Each ONNX graph the service runs (text_encoder, unet, vae_decoder) has its weights and arithmetic converted to
float16 by ONNX Runtime's own converter (`onnxruntime.transformers.float16`), by default with
`keep_io_types`: inputs and outputs stay float32. `--io float16` converts them too, giving the contract of an
Optimum export made with `--dtype fp16` (which Optimum makes only on a GPU): float16 latents, timestep, hidden
states and images. The service loads either, converting at the session boundary. Operators that are unsafe in
fp16 are kept in fp32 by the converter's default block list.

Every converted graph is checked against the original on the same random inputs through ONNX Runtime (CPU). A
graph whose fp16 output is not finite, or strays further than `--tolerance` (relative to the original's
largest magnitude), is kept in fp32. This is the known failure of Stable Diffusion's VAE decoder, whose
activations overflow float16's range; `--vae fp32` keeps it in fp32 without asking. The folder's `fp16.json`
records what was converted and the errors measured.

fp16 pays off on GPUs (tensor cores, half the memory traffic). ONNX Runtime's CPU provider runs it too,
through casts, but more slowly than fp32; this machine can check the conversion's correctness, not its speed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.transformers.float16 import convert_float_to_float16

COMPONENTS = ("text_encoder", "unet", "vae_decoder")
# Sizes for the check's random inputs where an export leaves a dimension symbolic: two rows, 77 tokens,
# 8x8 latents (64x64 pixels).
SYMBOLIC = {"batch_size": 2, "sequence_length": 77, "height": 8, "width": 8, "num_channels": 4}


def random_inputs(session: ort.InferenceSession, rng: np.random.Generator) -> dict[str, np.ndarray]:
    feed = {}
    for spec in session.get_inputs():
        shape = [dim if isinstance(dim, int) else SYMBOLIC.get(str(dim), 2) for dim in spec.shape]
        if "int" in spec.type:
            feed[spec.name] = rng.integers(0, 1000, size=shape).astype(
                np.int64 if "64" in spec.type else np.int32
            )
        elif spec.name == "timestep":
            feed[spec.name] = np.full(shape, 500.0, dtype=np.float32)
        else:
            feed[spec.name] = rng.standard_normal(shape).astype(np.float32)
    return feed


def cast_to(session: ort.InferenceSession, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same values in the element types `session` takes (float16 inputs get float16)."""
    types = {spec.name: spec.type for spec in session.get_inputs()}
    return {
        name: value.astype(np.float16) if types[name] == "tensor(float16)" else value
        for name, value in feed.items()
    }


def compare(original: Path, converted: Path, seed: int) -> tuple[float, float]:
    """(the largest absolute difference over all outputs, the original's largest magnitude)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    reference = ort.InferenceSession(str(original), options, providers=["CPUExecutionProvider"])
    candidate = ort.InferenceSession(str(converted), options, providers=["CPUExecutionProvider"])
    feed = random_inputs(reference, np.random.default_rng(seed))
    worst, scale = 0.0, 0.0
    outputs = zip(reference.run(None, feed), candidate.run(None, cast_to(candidate, feed)), strict=True)
    for expected, got in outputs:
        expected, got = np.asarray(expected, dtype=np.float64), np.asarray(got, dtype=np.float64)
        if not np.isfinite(got).all():
            return float("inf"), float(np.abs(expected).max())
        worst = max(worst, float(np.abs(expected - got).max()))
        scale = max(scale, float(np.abs(expected).max()))
    return worst, scale


def convert(model: Path, out: Path, vae: str, tolerance: float, seed: int, io: str = "float32") -> dict:
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    # Everything else (tokenizer, scheduler, configs, the VAE encoder, diffusers weights) is copied unchanged.
    shutil.copytree(model, partial, ignore=shutil.ignore_patterns("diffusers"))
    report: dict = {"source": str(model), "tolerance": tolerance, "io": io, "components": {}}
    for name in COMPONENTS:
        source = model / name / "model.onnx"
        if not source.is_file():
            raise SystemExit(f"--model: {source} does not exist; is {model} a diffusers/Optimum ONNX export?")
        entry: dict = {}
        if name == "vae_decoder" and vae == "fp32":
            entry = {"dtype": "float32", "reason": "--vae fp32"}
        else:
            graph = onnx.load(str(source))
            converted = convert_float_to_float16(graph, keep_io_types=io == "float32")
            target = partial / name / "model.onnx"
            for stale in (partial / name).glob("model.onnx*"):
                stale.unlink()
            # Large graphs (SD 1.5's UNet is 1.7 GB in fp16) keep their weights beside the graph.
            large = converted.ByteSize() > 1_900_000_000
            onnx.save(converted, str(target), save_as_external_data=large, location="model.onnx_data")
            worst, scale = compare(source, target, seed)
            relative = worst / scale if scale else worst
            entry = {"max_abs_error": worst, "relative_error": relative}
            if not np.isfinite(worst) or relative > tolerance:
                for written in (partial / name).glob("model.onnx*"):
                    written.unlink()
                for original in (model / name).glob("model.onnx*"):
                    shutil.copy2(original, partial / name / original.name)
                entry |= {"dtype": "float32", "reason": "fp16 output not finite or beyond the tolerance"}
            else:
                entry["dtype"] = "float16"
        report["components"][name] = entry
        print(json.dumps({"component": name} | entry), flush=True)
    (partial / "fp16.json").write_text(json.dumps(report, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, required=True, help="a diffusers/Optimum ONNX export folder")
    parser.add_argument("--out", type=Path, required=True, help="where the fp16 variant goes")
    parser.add_argument(
        "--vae", choices=("auto", "fp32"), default="auto", help="auto: fp16 unless the check fails (default)"
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.02,
        help="largest error allowed, relative to the original output's largest magnitude (default 0.02)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the check's random inputs")
    parser.add_argument(
        "--io",
        choices=("float32", "float16"),
        default="float32",
        help="element type of the converted graphs' float inputs and outputs (default float32)",
    )
    args = parser.parse_args()
    if not args.model.is_dir():
        parser.error(f"--model: {args.model} is not a folder")
    if args.tolerance <= 0:
        parser.error(f"--tolerance must be above 0. Given: {args.tolerance}")
    if args.out.resolve() == args.model.resolve():
        parser.error("--out must differ from --model")
    convert(args.model, args.out, args.vae, args.tolerance, args.seed, args.io)
    return 0


if __name__ == "__main__":
    sys.exit(main())
