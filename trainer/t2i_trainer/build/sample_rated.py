"""Sample the pretrained pipeline over the world's prompts and label every image with the rater (issue #3).

This is the paper's data collection (§3.1) with rater.py in place of the human labellers: images come from the
pretrained model, not from the renderer, so the labels say what *this* model gets right and wrong. Three
sets come out, each with its own seeds:

- `train`: every training prompt (or `--train-prompts`), `--train-images` images each. The reward model
  learns from these.
- `eval_seen`: up to `--eval-prompts` training prompts per category, `--eval-images` fresh images each.
- `eval_unseen`: up to `--eval-prompts` held-out prompts per category, `--eval-images` images each. The world
  holds out (shape, colour) and (shape, count) pairs, so there are no held-out background prompts: their one
  object is never a held-out pair. Held-out backgrounds are tested inside combination prompts.

Images are sampled at the guidance the model serves by default (`--served-defaults`, which export_sd.py
chose), so the labels describe what users get. The two eval sets measure the pretrained model (report.py)
and the reward model's pairwise accuracy (train_reward.py) on images it never saw.

Output (written to `<out>.partial`, renamed when complete, skipped if `<out>` exists unless --force):
- `images.npy`: uint8 [N, 64, 64, 3];
- `records.jsonl`: per image its index, set, prompt, category, the rater's label and per-attribute verdicts,
  the objects found, and whether every object was segmented as a known shape (the image quality proxy);
- `summary.json`: counts, settings and seconds.

Usage:
    python -m t2i_trainer.build.sample_rated --pipeline build/shapes-sd-diffusers --out build/reward-data
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
import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils import logging as diffusers_logging

from t2i_trainer.build.rater import judge
from t2i_trainer.build.shapes_world import IMAGE_SIZE, Prompt, eval_prompts, heldout_prompts, train_prompts
from t2i_trainer.common.stage_cli import (
    add_run_flags,
    begin_output,
    check_output_parent,
    emit,
    finish_args,
    finish_output,
)

# train_prompts 0 means every training prompt.
DEFAULTS = {
    "train_prompts": 0,
    "train_images": 8,
    "eval_prompts": 16,
    "eval_images": 16,
    "steps": 20,
    "batch": 128,
}
SMOKE = {"train_prompts": 24, "train_images": 2, "eval_prompts": 2, "eval_images": 2, "steps": 2, "batch": 32}
# Without --served-defaults or --guidance-scale: Stable Diffusion's usual guidance, the service's fallback.
GUIDANCE_SCALE = 7.5


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--pipeline", type=Path, required=True, help="diffusers pipeline folder (train_sd.py)"
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder; its parent must exist")
    parser.add_argument("--seed", type=int, default=0, help="seed of prompt choice and noise (default: 0)")
    parser.add_argument(
        "--train-prompts", type=int, help="training prompts to sample, chosen at random (default: 0, all)"
    )
    parser.add_argument(
        "--train-images", type=int, help=f"images per training prompt ({DEFAULTS['train_images']})"
    )
    parser.add_argument(
        "--eval-prompts", type=int, help=f"eval prompts per category and split ({DEFAULTS['eval_prompts']})"
    )
    parser.add_argument("--eval-images", type=int, help=f"images per eval prompt ({DEFAULTS['eval_images']})")
    parser.add_argument("--steps", type=int, help=f"denoising steps ({DEFAULTS['steps']})")
    parser.add_argument("--batch", type=int, help=f"images per pipeline call ({DEFAULTS['batch']})")
    parser.add_argument(
        "--served-defaults",
        type=Path,
        help="the served model's t2i-align.json (export_sd.py): sample at the guidance it serves by default",
    )
    parser.add_argument(
        "--guidance-scale", type=float, help=f"(default: --served-defaults' value, else {GUIDANCE_SCALE})"
    )
    add_run_flags(parser, SMOKE)
    args = parser.parse_args(argv)
    finish_args(
        parser, args, DEFAULTS, SMOKE, ("train_images", "eval_prompts", "eval_images", "steps", "batch")
    )
    if args.train_prompts < 0:
        parser.error(f"--train-prompts must be at least 0. Given: {args.train_prompts}")
    if not (args.pipeline / "model_index.json").is_file():
        parser.error(f"--pipeline is not a diffusers pipeline folder (no model_index.json): {args.pipeline}")
    check_output_parent(parser, args.out)
    if args.guidance_scale is None:
        args.guidance_scale = GUIDANCE_SCALE
        if args.served_defaults is not None:
            try:
                args.guidance_scale = float(
                    json.loads(args.served_defaults.read_text())["default_guidance_scale"]
                )
            except (OSError, ValueError, KeyError, TypeError) as error:
                parser.error(
                    f"--served-defaults {args.served_defaults} has no default_guidance_scale: {error}"
                )
    return args


def sample_jobs(args: argparse.Namespace) -> list[tuple[str, Prompt]]:
    rng = np.random.default_rng(args.seed)
    prompts = train_prompts()
    if args.train_prompts:
        picks = rng.choice(len(prompts), min(args.train_prompts, len(prompts)), replace=False)
        prompts = [prompts[index] for index in sorted(picks)]
    jobs = [("train", prompt) for prompt in prompts for _ in range(args.train_images)]
    for split, pool in (("eval_seen", train_prompts()), ("eval_unseen", heldout_prompts())):
        for prompt in eval_prompts(pool, args.eval_prompts, rng):
            jobs.extend((split, prompt) for _ in range(args.eval_images))
    return jobs


def sample_images(
    pipeline: StableDiffusionPipeline,
    texts: list[str],
    steps: int,
    guidance_scale: float,
    seed: int,
    batch: int,
    progress: bool = False,
) -> np.ndarray:
    """uint8 [len(texts), 64, 64, 3]: one image per text, `batch` texts per pipeline call."""
    images = np.zeros((len(texts), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    started = time.monotonic()
    for start in range(0, len(texts), batch):
        chunk = texts[start : start + batch]
        # One generator per batch, seeded by position, so a batch's images do not depend on the batch size
        # of earlier calls and a re-run gives the same pixels.
        generator = torch.Generator(pipeline.device).manual_seed(seed * 1_000_003 + start)
        output = pipeline(
            chunk,
            height=IMAGE_SIZE,
            width=IMAGE_SIZE,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            generator=generator,
            output_type="np",
        ).images
        images[start : start + len(chunk)] = np.clip(np.round(output * 255), 0, 255).astype(np.uint8)
        if progress:
            done, seconds = start + len(chunk), round(time.monotonic() - started, 1)
            emit("sampled", done=done, total=len(texts), seconds=seconds)
    return images


def generate(args: argparse.Namespace, jobs: list[tuple[str, Prompt]]) -> np.ndarray:
    pipeline = StableDiffusionPipeline.from_pretrained(args.pipeline).to(args.device)
    pipeline.set_progress_bar_config(disable=True)
    texts = [prompt.text for _, prompt in jobs]
    return sample_images(
        pipeline, texts, args.steps, args.guidance_scale, args.seed, args.batch, progress=True
    )


def rate(jobs: list[tuple[str, Prompt]], images: np.ndarray) -> list[dict]:
    from PIL import Image

    records = []
    for index, ((split, prompt), pixels) in enumerate(zip(jobs, images, strict=True)):
        rating = judge(Image.fromarray(pixels), prompt)
        records.append(
            {
                "index": index,
                "split": split,
                "prompt": prompt.text,
                "category": prompt.category,
                "label": rating.label,
                "checks": {name: check.ok for name, check in rating.reasons.items()},
                "objects": [[found.colour, found.shape] for found in rating.objects],
                "background": rating.background,
                # Quality proxy: the rater found objects and could name every one's shape.
                "clean": bool(rating.objects) and all(found.shape != "unknown" for found in rating.objects),
            }
        )
    return records


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    diffusers_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    out = args.out.resolve()
    partial = begin_output(out, args.force)
    if partial is None:
        return 0
    started = time.monotonic()
    jobs = sample_jobs(args)
    emit("start", images=len(jobs), device=args.device, steps=args.steps, guidance_scale=args.guidance_scale)
    images = generate(args, jobs)
    records = rate(jobs, images)
    partial.mkdir()
    np.save(partial / "images.npy", images)
    (partial / "records.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    summary = {
        "images": len(records),
        "by_split": {
            split: sum(r["split"] == split for r in records)
            for split in ("train", "eval_seen", "eval_unseen")
        },
        "good": sum(record["label"] == "good" for record in records),
        "settings": {key: getattr(args, key) for key in (*DEFAULTS, "seed", "guidance_scale", "device")},
        "seconds": round(time.monotonic() - started, 1),
    }
    (partial / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    finish_output(partial, out)
    emit("done", out=str(out), **summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
