"""Export a trained diffusers pipeline to the service's ONNX layout, and check the export (issue #3).

The export is optimum-onnx's own (`main_export`, task text-to-image), so the folder is what
`optimum-cli export onnx` makes for Stable Diffusion 1.5 and the service loads it unchanged. The diffusers
weights (safetensors) go beside it, in `<out>/diffusers/`, for the fine-tune job to start from.

Before the folder is moved into place, the guidance scale it serves by default is chosen by a sweep that the
rater judges (tune_defaults.py) and written to `t2i-align.json`, and every ONNX graph (text encoder, UNet,
VAE encoder and decoder) is run on seeded inputs and compared with its PyTorch module: the largest absolute
difference must be at most --tolerance (1e-4). The differences are written to `<out>/export.json`.

The export is written to `<out>.partial` and renamed when checked, so `<out>` is never half-written.

Usage:
    python trainer/export_sd.py --pipeline build/shapes-sd-diffusers --out models/shapes-sd
"""

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import onnxruntime as ort
import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils import logging as diffusers_logging
from optimum.exporters.onnx import main_export

from build_test_model import drop_scratch_paths
from onnx_contract import describe_exports
from stage_cli import begin_output, check_output_parent, emit, finish_output
from tune_defaults import tune, write_defaults

TOLERANCE = 1e-4


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--pipeline", type=Path, required=True, help="diffusers pipeline folder (train_sd.py)"
    )
    parser.add_argument("--out", type=Path, required=True, help="ONNX model folder; its parent must exist")
    parser.add_argument(
        "--tolerance", type=float, default=TOLERANCE, help="largest |onnx - torch| (%(default)s)"
    )
    parser.add_argument("--force", action="store_true", help="export again even if --out exists")
    parser.add_argument(
        "--smoke", action="store_true", help="a two-scale, few-image guidance sweep, for tests"
    )
    args = parser.parse_args(argv)
    if not (args.pipeline / "model_index.json").is_file():
        parser.error(f"--pipeline is not a diffusers pipeline folder (no model_index.json): {args.pipeline}")
    check_output_parent(parser, args.out)
    return args


def onnx_session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_inputs(pipeline: StableDiffusionPipeline, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Seeded inputs for each graph, at batch 2 and the pipeline's own sizes."""
    generator = np.random.default_rng(seed)
    unet, vae = pipeline.unet.config, pipeline.vae.config
    latent = unet.sample_size
    pixels = latent * 2 ** (len(vae.block_out_channels) - 1)
    ids = pipeline.tokenizer(
        ["two blue stars on a white background", ""],
        padding="max_length",
        max_length=pipeline.tokenizer.model_max_length,
        return_tensors="np",
    ).input_ids.astype(np.int64)
    hidden = generator.standard_normal(
        (2, ids.shape[1], pipeline.text_encoder.config.hidden_size), dtype=np.float32
    )
    return {
        "text_encoder": {"input_ids": ids},
        "unet": {
            "sample": generator.standard_normal((2, unet.in_channels, latent, latent), dtype=np.float32),
            "timestep": np.array(421.0, dtype=np.float32),
            "encoder_hidden_states": hidden,
        },
        "vae_decoder": {
            "latent_sample": generator.standard_normal(
                (2, vae.latent_channels, latent, latent), dtype=np.float32
            )
        },
        "vae_encoder": {"sample": generator.uniform(-1, 1, (2, 3, pixels, pixels)).astype(np.float32)},
    }


@torch.no_grad()
def torch_outputs(pipeline: StableDiffusionPipeline, part: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
    tensors = {name: torch.from_numpy(value) for name, value in inputs.items()}
    if part == "text_encoder":
        return pipeline.text_encoder(tensors["input_ids"])[0].numpy()
    if part == "unet":
        return pipeline.unet(
            tensors["sample"], tensors["timestep"], tensors["encoder_hidden_states"]
        ).sample.numpy()
    if part == "vae_decoder":
        return pipeline.vae.decode(tensors["latent_sample"]).sample.numpy()
    # Optimum's VAE encoder outputs the posterior's parameters (mean and log-variance), not a sample.
    return pipeline.vae.encode(tensors["sample"]).latent_dist.parameters.numpy()


def parity(pipeline: StableDiffusionPipeline, root: Path) -> dict[str, float]:
    """The largest |onnx - torch| of each graph's first output on check_inputs."""
    differences = {}
    for part, inputs in check_inputs(pipeline).items():
        session = onnx_session(root / part / "model.onnx")
        names = {i.name for i in session.get_inputs()}
        onnx_out = session.run(None, {name: value for name, value in inputs.items() if name in names})[0]
        reference = torch_outputs(pipeline, part, inputs)
        if onnx_out.shape != reference.shape:
            raise RuntimeError(f"{part}: ONNX output shape {onnx_out.shape} != PyTorch {reference.shape}")
        differences[part] = float(np.abs(onnx_out - reference).max())
    return differences


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    diffusers_logging.disable_progress_bar()
    torch.set_num_threads(2)
    out = args.out.resolve()
    partial = begin_output(out, args.force)
    if partial is None:
        return 0
    started = time.monotonic()
    main_export(
        str(args.pipeline.resolve()),
        output=partial,
        task="text-to-image",
        library_name="diffusers",
        device="cpu",
        local_files_only=True,
    )
    pipeline = StableDiffusionPipeline.from_pretrained(args.pipeline)
    pipeline.save_pretrained(partial / "diffusers", safe_serialization=True)
    drop_scratch_paths(partial, out.name)
    differences = parity(pipeline, partial)
    emit("parity", max_abs_difference=differences, tolerance=args.tolerance)
    failed = {part: value for part, value in differences.items() if not value <= args.tolerance}
    if failed:
        print(f"error: ONNX and PyTorch differ by more than {args.tolerance}: {failed}", file=sys.stderr)
        return 1
    record = {
        "max_abs_difference": differences,
        "tolerance": args.tolerance,
        "graphs": describe_exports(partial),
    }
    (partial / "export.json").write_text(json.dumps(record, indent=2) + "\n")
    pipeline.set_progress_bar_config(disable=True)
    if args.smoke:
        tuned = tune(pipeline, scales=(2.0, 7.5), prompts_per_category=1, images=1, steps=2)
    else:
        tuned = tune(pipeline)
    write_defaults(partial, tuned)
    finish_output(partial, out)
    emit("done", out=str(out), seconds=round(time.monotonic() - started, 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
