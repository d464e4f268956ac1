"""Build models/tiny-lcm: a tiny latent consistency model (LCM) exported with optimum (issue #27).

An LCM-distilled UNet (such as SimianLuo/LCM_Dreamshaper_v7) takes the guidance scale as an input instead of
running classifier-free guidance: diffusers embeds `guidance_scale - 1` with sinusoids
(`LatentConsistencyModelPipeline.get_guidance_scale_embedding`) and the UNet adds it to its timestep
embedding through `time_cond_proj_dim`. Optimum exports that input as `timestep_cond` ([batch, dim]).

The model reuses models/tiny-sd's text encoder, tokenizer and VAE (loaded from models/tiny-sd/diffusers and
copied from its export, so git stores them once) with a new random UNet that has `time_cond_proj_dim`, and
LCM_Dreamshaper_v7's `LCMScheduler` configuration. `t2i-align.json` gives the request defaults such models
are used with: 4 steps at guidance 8.5 (diffusers' default for this pipeline).

Usage:
    python -m t2i_trainer.build.build_tiny_lcm --out models/tiny-lcm --base models/tiny-sd
"""

import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from diffusers import AutoencoderKL, LatentConsistencyModelPipeline, LCMScheduler
from transformers import CLIPTextModel, CLIPTokenizer

from t2i_trainer.build.build_test_model import (
    build_unet,
    copy_parts,
    drop_scratch_paths,
    export_pipeline,
    model_parser,
)
from t2i_trainer.build.onnx_contract import describe_exports

# SimianLuo/LCM_Dreamshaper_v7's scheduler/scheduler_config.json.
LCM_SCHEDULER_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "original_inference_steps": 50,
    "prediction_type": "epsilon",
    "set_alpha_to_one": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "timestep_scaling": 10.0,
    "clip_sample": False,
    "rescale_betas_zero_snr": False,
    "thresholding": False,
    "trained_betas": None,
}
# LCM_Dreamshaper_v7's time_cond_proj_dim is 256; a toy UNet takes a toy width (even, as sin and cos halves).
TIME_COND_PROJ_DIM = 16
LCM_DEFAULTS = {"default_steps": 4, "default_guidance_scale": 8.5}
# The parts taken unchanged from the base model's export.
SHARED_PARTS = ("text_encoder", "tokenizer", "vae_decoder", "vae_encoder")


def build_pipeline(base: Path, seed: int) -> LatentConsistencyModelPipeline:
    weights = base / "diffusers"
    text_encoder = CLIPTextModel.from_pretrained(weights / "text_encoder", local_files_only=True).eval()
    unet = build_unet(text_encoder.config.hidden_size, seed + 5, time_cond_proj_dim=TIME_COND_PROJ_DIM)
    return LatentConsistencyModelPipeline(
        vae=AutoencoderKL.from_pretrained(weights / "vae", local_files_only=True).eval(),
        text_encoder=text_encoder,
        tokenizer=CLIPTokenizer.from_pretrained(weights / "tokenizer", local_files_only=True),
        unet=unet,
        scheduler=LCMScheduler.from_config(LCM_SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def main() -> None:
    parser = model_parser(__doc__, "models/tiny-lcm")
    parser.add_argument(
        "--base",
        type=Path,
        default=Path("models/tiny-sd"),
        help="The tiny SD export (build_test_model.py) whose text encoder and VAE are reused "
        "(default: %(default)s).",
    )
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as scratch:
        pipeline = build_pipeline(args.base, args.seed)
        export_pipeline(pipeline, Path(scratch), args.output)
    copy_parts(args.base, args.output, SHARED_PARTS)
    drop_scratch_paths(args.output)
    (args.output / "t2i-align.json").write_text(json.dumps(LCM_DEFAULTS, indent=2) + "\n")
    models = describe_exports(args.output, ("text_encoder", "unet", "vae_decoder", "vae_encoder"))
    print(json.dumps({"event": "exported", "folder": str(args.output), "models": models}))


if __name__ == "__main__":
    main()
