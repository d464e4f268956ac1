"""A Stable-Diffusion-1.5-sized export with random weights, for the GPU check's speed figures (#29).

    python -m t2i_scripts.gpu.build_sd15 --out /tmp/t2i-gpu/work/sd15          # the real sizes
    python -m t2i_scripts.gpu.build_sd15 --out build/sd15-tiny --scale tiny    # a rehearsal on the CPU

The architecture is SD 1.5's, from its published configs:
* the UNet: 320/640/1280/1280 channels, 2 layers a block, 8 heads, cross-attention on 768 (about 860M
  parameters);
* CLIP ViT-L/14's text encoder: 12 layers of 768, quick_gelu, 77 tokens;
* the VAE: 128/256/512/512 channels, 4 latent channels.

The weights are random (seeded), so the images are noise, but every kernel runs at SD 1.5's shapes. The
tokenizer is CLIP's BPE vocabulary as shapes-sd carries it (49408 tokens), and the scheduler is DDIM with SD's
betas. The export is Optimum's own text-to-image export (`main_export`), the layout `optimum-cli export onnx`
writes; graphs over 2 GB keep their weights in `model.onnx_data`. Its UNet takes one timestep per batch row
(t2i_trainer.build.unet_timestep, as the service's own exports do), so that requests at different steps share
UNet calls in the batching section; `--scalar-timestep` keeps Optimum's scalar.

`--scale tiny` keeps the block structure and shrinks the widths (32/64/64/64, text 32 wide, 2 layers), so the
whole check can be rehearsed on a CPU in minutes. `--fp16` also writes `<out>-fp16`, converted by
t2i_trainer.build.convert_fp16 (float16 weights and arithmetic, float32 inputs and outputs).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[3]
TOKENIZER = ROOT / "models" / "shapes-sd" / "tokenizer"

UNET = {
    "full": dict(block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8),
    "tiny": dict(block_out_channels=(32, 64, 64, 64), cross_attention_dim=32, attention_head_dim=8),
}
TEXT = {
    "full": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4),
}
VAE = {"full": (128, 256, 512, 512), "tiny": (32, 64, 64, 64)}
# SD 1.5 renders 512x512 (64x64 latents); the tiny model's default is 64x64 pixels.
SAMPLE_SIZE = {"full": 64, "tiny": 8}


def build_pipeline(scale: str, seed: int):
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=SAMPLE_SIZE[scale],
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        norm_num_groups=32,
        **UNET[scale],
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=VAE[scale],
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=SAMPLE_SIZE[scale] * 8,
    )
    text_config = CLIPTextConfig(
        vocab_size=49408,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        projection_dim=TEXT[scale]["hidden_size"],
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
        **TEXT[scale],
    )
    text_encoder = CLIPTextModel(text_config)
    tokenizer = CLIPTokenizer.from_pretrained(str(TOKENIZER))
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        num_train_timesteps=1000,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def export(pipeline_dir: Path, out: Path, unet_config, per_row_timestep: bool) -> None:
    from optimum.exporters.onnx import main_export

    custom = {}
    if per_row_timestep:
        from t2i_trainer.build.unet_timestep import BatchTimestepUNetOnnxConfig

        custom["unet"] = BatchTimestepUNetOnnxConfig(unet_config, task="semantic-segmentation")
    main_export(
        str(pipeline_dir),
        output=out,
        task="text-to-image",
        library_name="diffusers",
        device="cpu",
        local_files_only=True,
        do_validation=False,
        custom_onnx_configs=custom,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="the export folder to write")
    parser.add_argument("--scale", choices=("full", "tiny"), default="full", help="SD 1.5's sizes, or tiny")
    parser.add_argument("--fp16", action="store_true", help="also write <out>-fp16")
    parser.add_argument("--seed", type=int, default=0, help="the random weights' seed")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch CPU threads")
    parser.add_argument(
        "--scalar-timestep", action="store_true", help="Optimum's scalar UNet timestep instead of one per row"
    )
    args = parser.parse_args(argv)
    if not TOKENIZER.is_dir():
        parser.error(f"{TOKENIZER} is missing: the tokenizer comes from models/shapes-sd")
    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    record = {"scale": args.scale, "seed": args.seed, "per_row_timestep": not args.scalar_timestep}
    if not (args.out / "model_index.json").is_file():
        partial = args.out.with_name(args.out.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        pipeline = build_pipeline(args.scale, args.seed)
        record["unet_parameters"] = sum(p.numel() for p in pipeline.unet.parameters())
        record["text_encoder_parameters"] = sum(p.numel() for p in pipeline.text_encoder.parameters())
        record["vae_parameters"] = sum(p.numel() for p in pipeline.vae.parameters())
        diffusers_dir = partial.with_name(partial.name + "-diffusers")
        shutil.rmtree(diffusers_dir, ignore_errors=True)
        pipeline.save_pretrained(diffusers_dir, safe_serialization=True)
        unet_config = pipeline.unet.config
        del pipeline
        export(diffusers_dir, partial, unet_config, per_row_timestep=not args.scalar_timestep)
        shutil.rmtree(diffusers_dir)
        defaults = {"default_steps": 20, "default_guidance_scale": 7.5}
        (partial / "t2i-align.json").write_text(json.dumps(defaults))
        (partial / "build.json").write_text(json.dumps(record, indent=1) + "\n")
        shutil.rmtree(args.out, ignore_errors=True)
        partial.rename(args.out)
    record["export_seconds"] = round(time.perf_counter() - started, 1)
    if args.fp16:
        fp16 = args.out.with_name(args.out.name + "-fp16")
        if not (fp16 / "model_index.json").is_file():
            command = [sys.executable, "-m", "t2i_trainer.build.convert_fp16", "--model", str(args.out)]
            paths = [str(ROOT / "trainer"), str(ROOT / "scripts"), os.environ.get("PYTHONPATH", "")]
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(path for path in paths if path))
            subprocess.run([*command, "--out", str(fp16)], check=True, env=env)
        record["fp16"] = str(fp16)
    record["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps({"event": "built", "out": str(args.out), **record}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
