"""Sample every training prompt of the shapes world in PyTorch, keeping each image's latent (issue #5 trials).

The fine-tune job's sample stage draws its images through ONNX Runtime and writes, beside each PNG, the latent
it was decoded from; jobs/finetune.py trains on that latent instead of encoding the PNG again (see
vae_round_trip.py for why). This script makes the same kind of training set for finetune_trials.py without a
server: `--images` images of each of the 528 training prompts (20 steps at guidance 2.0, the served defaults),
each judged by the simulated rater (rater.py). Writes into --out:
    <n>.png, <n>.npy           the image and its latent ([4, 16, 16], the UNet's scaled space)
    samples-rater-latent.jsonl {"image", "latent", "prompt", "reward"}: the rater's label (good 1, bad 0)
    samples-rater.jsonl        the same without "latent": the control that re-encodes the PNGs

Usage:
    python -m t2i_trainer.trials.sample_train_latents --out build/train-latents --images 16
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
from PIL import Image

from t2i_trainer.build.rater import judge
from t2i_trainer.build.shapes_world import IMAGE_SIZE, train_prompts
from t2i_trainer.common.paths import REPO_ROOT as ROOT
from t2i_trainer.common.stage_cli import emit

BASE = ROOT / "models" / "shapes-sd" / "diffusers"
BATCH = 128


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="folder to write; must be empty or absent")
    parser.add_argument("--base", type=Path, default=BASE, help="diffusers pipeline (%(default)s)")
    parser.add_argument("--images", type=int, default=16, help="images per prompt (%(default)s)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if args.images < 1:
        parser.error(f"--images must be at least 1. Given: {args.images}")
    if not (args.base / "model_index.json").is_file():
        parser.error(f"--base {args.base} is not a diffusers pipeline folder (no model_index.json)")
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"--out {args.out} is not empty")
    args.out.mkdir(parents=True, exist_ok=True)

    import torch
    from diffusers import StableDiffusionPipeline

    from t2i_trainer.jobs.finetune import decoded_pixels

    torch.set_num_threads(args.threads)
    pipeline = StableDiffusionPipeline.from_pretrained(args.base, safety_checker=None)
    pipeline.set_progress_bar_config(disable=True)
    jobs = [prompt for prompt in train_prompts() for _ in range(args.images)]
    records = []
    started = time.monotonic()
    for start in range(0, len(jobs), BATCH):
        chunk = jobs[start : start + BATCH]
        generator = torch.Generator().manual_seed(args.seed * 1_000_003 + start)
        with torch.no_grad():
            latents = pipeline(
                [prompt.text for prompt in chunk],
                height=IMAGE_SIZE,
                width=IMAGE_SIZE,
                num_inference_steps=20,
                guidance_scale=2.0,
                generator=generator,
                output_type="latent",
            ).images
        pixels = decoded_pixels(pipeline.vae, latents).round().byte().numpy()
        for offset, prompt in enumerate(chunk):
            number = start + offset
            image = Image.fromarray(pixels[offset])
            image.save(args.out / f"{number}.png")
            np.save(args.out / f"{number}.npy", latents[offset].numpy().astype(np.float32))
            good = judge(image, prompt).label == "good"
            records.append(
                {
                    "image": f"{number}.png",
                    "latent": f"{number}.npy",
                    "prompt": prompt.text,
                    "reward": float(good),
                }
            )
        emit(
            "sampled", done=start + len(chunk), total=len(jobs), seconds=round(time.monotonic() - started, 1)
        )
    lines = {
        "samples-rater-latent.jsonl": records,
        "samples-rater.jsonl": [{k: v for k, v in record.items() if k != "latent"} for record in records],
    }
    for name, content in lines.items():
        (args.out / name).write_text("".join(json.dumps(record) + "\n" for record in content))
    emit("done", images=len(records), good=round(float(np.mean([r["reward"] for r in records])), 4))
    return 0


if __name__ == "__main__":
    sys.exit(main())
