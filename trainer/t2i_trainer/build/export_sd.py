"""Export a trained diffusers pipeline to the service's ONNX layout, and check the export (issue #3).

The export is optimum-onnx's own (`main_export`, task text-to-image), so the folder has the layout
`optimum-cli export onnx` makes for Stable Diffusion 1.5, with one change: the UNet's `timestep` is a float32
of shape [batch_size], one timestep per row, instead of optimum's scalar (`BatchTimestepUNetOnnxConfig`), so
the service can run requests at different denoising steps in one UNet call. The diffusers weights
(safetensors) go beside it, in `<out>/diffusers/`, for the fine-tune job to start from.

Before the folder is moved into place, the guidance scale it serves by default is chosen by a sweep that the
rater judges (tune_defaults.py) and written to `t2i-align.json`, and every ONNX graph (text encoder, UNet,
VAE encoder and decoder) is run on seeded inputs and compared with its PyTorch module: the largest absolute
difference must be at most --tolerance (1e-4). The UNet's check gives each row its own timestep and compares
every row with PyTorch run on the whole batch and with PyTorch run on that row alone (a scalar timestep), so
rows are shown to be independent. The differences are written to `<out>/export.json`.

The export is written to `<out>.partial` and renamed when checked, so `<out>` is never half-written.

Usage:
    python -m t2i_trainer.build.export_sd --pipeline build/shapes-sd-diffusers --out models/shapes-sd
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

from t2i_trainer.build.build_test_model import drop_scratch_paths
from t2i_trainer.build.onnx_contract import describe_exports
from t2i_trainer.build.tune_defaults import tune, write_defaults
from t2i_trainer.build.unet_timestep import BatchTimestepUNetOnnxConfig
from t2i_trainer.common.stage_cli import begin_output, check_output_parent, emit, finish_output

TOLERANCE = 1e-4
# Distinct per row, so the UNet check would catch a graph that used one row's timestep for the whole batch.
CHECK_TIMESTEPS = (421.0, 87.0)


def export_onnx(pipeline_dir: Path, output: Path, unet_config) -> None:
    """optimum's text-to-image export of the diffusers pipeline in `pipeline_dir` into `output`, with the
    UNet's config replaced by BatchTimestepUNetOnnxConfig (`unet_config`: that pipeline's `unet.config`)."""
    # The task optimum's own UNet config gets (optimum.exporters.utils.get_diffusion_models_for_export).
    unet = BatchTimestepUNetOnnxConfig(unet_config, task="semantic-segmentation")
    main_export(
        str(pipeline_dir),
        output=output,
        task="text-to-image",
        library_name="diffusers",
        device="cpu",
        local_files_only=True,
        custom_onnx_configs={"unet": unet},
    )


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
    """Seeded inputs for each graph, at batch 2 and the pipeline's own sizes; the UNet's rows have different
    timesteps."""
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
            "timestep": np.array(CHECK_TIMESTEPS, dtype=np.float32),
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


def run_unet(session: ort.InferenceSession, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The ONNX UNet on a batch whose rows have their own timesteps. A graph with optimum's scalar timestep
    (models/tiny-sd) is run one row at a time."""
    timestep = next(i for i in session.get_inputs() if i.name == "timestep")
    if timestep.shape:
        return session.run(None, inputs)[0]
    rows = []
    for row, value in enumerate(inputs["timestep"]):
        one = {name: tensor[row : row + 1] for name, tensor in inputs.items() if name != "timestep"}
        rows.append(session.run(None, {**one, "timestep": np.array(value, dtype=np.float32)})[0])
    return np.concatenate(rows)


@torch.no_grad()
def torch_unet_rows(pipeline: StableDiffusionPipeline, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The PyTorch UNet on each row alone, with that row's timestep as a scalar."""
    rows = []
    for row, value in enumerate(inputs["timestep"]):
        rows.append(
            pipeline.unet(
                torch.from_numpy(inputs["sample"][row : row + 1]),
                torch.tensor(float(value), dtype=torch.float32),
                torch.from_numpy(inputs["encoder_hidden_states"][row : row + 1]),
            ).sample.numpy()
        )
    return np.concatenate(rows)


def row_differences(a: np.ndarray, b: np.ndarray) -> list[float]:
    return [float(value) for value in np.abs(a - b).reshape(len(a), -1).max(axis=1)]


def check_unet(pipeline: StableDiffusionPipeline, root: Path, inputs: dict[str, np.ndarray]) -> dict:
    """The ONNX UNet's rows against PyTorch's on the whole batch and on each row alone; per row."""
    session = onnx_session(root / "unet" / "model.onnx")
    timestep = next(i for i in session.get_inputs() if i.name == "timestep")
    onnx_out = run_unet(session, inputs)
    batch = torch_outputs(pipeline, "unet", inputs)
    alone = torch_unet_rows(pipeline, inputs)
    for name, reference in (("batch", batch), ("each row alone", alone)):
        if onnx_out.shape != reference.shape:
            raise RuntimeError(
                f"unet: ONNX output shape {onnx_out.shape} != PyTorch ({name}) {reference.shape}"
            )
    return {
        "timestep_shape": timestep.shape,
        "timesteps": [float(value) for value in inputs["timestep"]],
        "onnx_vs_torch_batch": row_differences(onnx_out, batch),
        "onnx_vs_torch_each_row_alone": row_differences(onnx_out, alone),
        "torch_batch_vs_each_row_alone": row_differences(batch, alone),
    }


def parity_report(pipeline: StableDiffusionPipeline, root: Path) -> tuple[dict[str, float], dict]:
    """The largest |onnx - torch| of each graph's first output on check_inputs, and check_unet's record. The
    UNet's figure is the largest ONNX difference of check_unet (against the batch and against each row)."""
    differences, unet = {}, {}
    for part, inputs in check_inputs(pipeline).items():
        if part == "unet":
            unet = check_unet(pipeline, root, inputs)
            differences[part] = max(unet["onnx_vs_torch_batch"] + unet["onnx_vs_torch_each_row_alone"])
            continue
        session = onnx_session(root / part / "model.onnx")
        names = {i.name for i in session.get_inputs()}
        onnx_out = session.run(None, {name: value for name, value in inputs.items() if name in names})[0]
        reference = torch_outputs(pipeline, part, inputs)
        if onnx_out.shape != reference.shape:
            raise RuntimeError(f"{part}: ONNX output shape {onnx_out.shape} != PyTorch {reference.shape}")
        differences[part] = float(np.abs(onnx_out - reference).max())
    return differences, unet


def parity(pipeline: StableDiffusionPipeline, root: Path) -> dict[str, float]:
    """The largest |onnx - torch| of each graph (parity_report's first half)."""
    return parity_report(pipeline, root)[0]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    diffusers_logging.disable_progress_bar()
    torch.set_num_threads(2)
    out = args.out.resolve()
    partial = begin_output(out, args.force)
    if partial is None:
        return 0
    started = time.monotonic()
    pipeline = StableDiffusionPipeline.from_pretrained(args.pipeline)
    export_onnx(args.pipeline.resolve(), partial, pipeline.unet.config)
    pipeline.save_pretrained(partial / "diffusers", safe_serialization=True)
    drop_scratch_paths(partial, out.name)
    differences, unet_rows = parity_report(pipeline, partial)
    emit("parity", max_abs_difference=differences, unet_rows=unet_rows, tolerance=args.tolerance)
    failed = {part: value for part, value in differences.items() if not value <= args.tolerance}
    if failed:
        print(f"error: ONNX and PyTorch differ by more than {args.tolerance}: {failed}", file=sys.stderr)
        return 1
    record = {
        "max_abs_difference": differences,
        "unet_rows": unet_rows,
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
