"""Build models/tiny-sd-wide: a tiny random-weight Stable Diffusion whose UNet is non-square and stored with
external data, the two things real exports have that models/tiny-sd lacks (issue #27).

* **Non-square, any size.** The UNet's `sample_size` is [9, 13] latent cells, so the model's own default is
  72×104 pixels (VAE factor 8). 9 and 13 are not multiples of the UNet's 2× downsampling, so when optimum
  traces the UNet at that size, diffusers passes explicit upsample sizes, and the exported graph renders any
  latent size: any multiple of 8 pixels, as diffusers itself does. (An export traced at a multiple, like
  tiny-sd, has fixed 2× upsampling and renders only multiples of 16 pixels.)
* **External data.** `unet/model.onnx` keeps its weights in `unet/model.onnx_data`, the layout every export
  over 2 GB has (a real SD 1.5 UNet is 3.4 GB in float32).

It has the same architecture and seeds as tiny-sd apart from the UNet's sample size. The goldens that check it
against optimum's ORTStableDiffusionPipeline come from `make_goldens --parts wide`.

Usage:
    python -m t2i_trainer.build.build_wide_model --out models/tiny-sd-wide
"""

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import onnx
import onnxruntime as ort
import torch

from t2i_trainer.build.build_test_model import (
    build_pipeline,
    drop_scratch_paths,
    export_pipeline,
    model_parser,
)
from t2i_trainer.build.onnx_contract import describe_exports

SAMPLE_SIZE = [9, 13]
DATA_FILE = "model.onnx_data"


def parse_args() -> argparse.Namespace:
    return model_parser(__doc__, "models/tiny-sd-wide").parse_args()


def move_weights_out(model_path: Path) -> int:
    """Rewrites `model_path` with every initializer of 1 KiB or more in `model.onnx_data` beside it, as
    onnx saves models over 2 GB. Returns how many tensors moved."""
    model = onnx.load(str(model_path))
    onnx.save_model(
        model,
        str(model_path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=DATA_FILE,
        size_threshold=1024,
    )
    moved = onnx.load(str(model_path), load_external_data=False)
    return sum(1 for tensor in moved.graph.initializer if tensor.data_location == onnx.TensorProto.EXTERNAL)


def unet_runs_at(unet_dir: Path, height: int, width: int) -> bool:
    """Whether the exported UNet runs on a [1, 4, height, width] latent."""
    session = ort.InferenceSession(str(unet_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    hidden = session.get_inputs()[2].shape[2]
    feed = {
        "sample": np.zeros((1, 4, height, width), np.float32),
        "timestep": np.array(1.0, np.float32),
        "encoder_hidden_states": np.zeros((1, 77, hidden), np.float32),
    }
    try:
        session.run(None, feed)
    except Exception:  # noqa: BLE001 - any failure means it does not
        return False
    return True


def main() -> None:
    args = parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        pipeline = build_pipeline(scratch / "bpe", 32, args.seed, sample_size=SAMPLE_SIZE)
        export_pipeline(pipeline, Path(scratch), args.output)
    drop_scratch_paths(args.output)
    moved = move_weights_out(args.output / "unet" / "model.onnx")
    # The point of this model: its UNet renders latents that are not multiples of its downsampling.
    for height, width in [tuple(SAMPLE_SIZE), (7, 5), (8, 8)]:
        if not unet_runs_at(args.output / "unet", height, width):
            raise SystemExit(f"the exported UNet does not run on a {height}x{width} latent")
    print(
        json.dumps(
            {
                "event": "exported",
                "folder": str(args.output),
                "sample_size": SAMPLE_SIZE,
                "unet_external_tensors": moved,
                "models": describe_exports(args.output),
            }
        )
    )


if __name__ == "__main__":
    main()
