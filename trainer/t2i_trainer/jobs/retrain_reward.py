"""Retrain the reward model on a fine-tune job's ratings (paper §3.2; issue #5, `retrain_reward_model`).

The job writes its training set as `samples.jsonl` ({"image", "prompt", "reward", "source"} per line, images
relative to the file). This takes the lines whose source is `feedback` (people's ratings: reward 1 is good,
0 bad) and turns them into train_reward.py's data folder: images.npy at 64x64 and records.jsonl, with a share
of the prompts kept out as `eval_seen` to measure pairwise accuracy. It trains the reward model with the
paper's loss (MSE plus lambda = 0.5 times the prompt-classification loss over perturbed prompts) and exports
it. The manifest is renamed to --name, the version id the service registers it under.

Only prompts of the shapes world can be used: the auxiliary loss needs their one-attribute perturbations.
Other ratings are counted and left out. Exits with status 2 and an error line when too few ratings remain.

Progress lines are train_reward.py's, then {"event": "retrained", ...}.

Usage:
    python -m t2i_trainer.jobs.retrain_reward --samples job/data/samples.jsonl \
        --tokenizer models/shapes-sd/tokenizer \
        --out job/reward --name shapes-reward-ft-1
"""

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from t2i_trainer.build.shapes_world import IMAGE_SIZE, parse_prompt
from t2i_trainer.common.stage_cli import emit

MIN_RATINGS = 8


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=Path, required=True, help="the job's samples.jsonl")
    parser.add_argument("--tokenizer", type=Path, required=True, help="CLIP tokenizer folder")
    parser.add_argument("--out", type=Path, required=True, help="the reward model folder to write")
    parser.add_argument("--name", required=True, help="the manifest's name: the version id")
    parser.add_argument("--epochs", type=int, default=24, help="passes over the ratings (default: 24)")
    parser.add_argument("--eval-share", type=float, default=0.1, help="share of prompts kept out (0.1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if not args.samples.is_file():
        parser.error(f"--samples is not a file: {args.samples}")
    if args.epochs < 1:
        parser.error(f"--epochs must be at least 1. Given: {args.epochs}")
    if not 0 <= args.eval_share < 1:
        parser.error(f"--eval-share must be in [0, 1). Given: {args.eval_share}")
    return args


def ratings(samples: Path) -> tuple[list[np.ndarray], list[str], list[str], int]:
    """People's ratings among the samples: images, prompts, labels, and how many were not shapes prompts."""
    images, prompts, labels, skipped = [], [], [], 0
    for line in samples.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        if record.get("source") != "feedback":
            continue
        try:
            parse_prompt(record["prompt"])
        except ValueError:
            skipped += 1
            continue
        with Image.open(samples.parent / record["image"]) as image:
            rgb = image.convert("RGB")
            if rgb.size != (IMAGE_SIZE, IMAGE_SIZE):
                rgb = rgb.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)
            images.append(np.asarray(rgb))
        prompts.append(record["prompt"])
        labels.append("good" if float(record["reward"]) >= 0.5 else "bad")
    return images, prompts, labels, skipped


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    images, prompts, labels, skipped = ratings(args.samples)
    good = labels.count("good")
    if len(images) < MIN_RATINGS or good == 0 or good == len(labels):
        emit(
            "error",
            message=f"retraining the reward model needs at least {MIN_RATINGS} ratings of shapes-world "
            f"prompts, both good and bad; the job has {len(images)} ({good} good, {skipped} of other prompts "
            "left out)",
        )
        return 2
    rng = np.random.default_rng(args.seed)
    distinct = sorted(set(prompts))
    held = set(rng.choice(distinct, size=int(len(distinct) * args.eval_share), replace=False).tolist())
    from t2i_trainer.build import train_reward

    with tempfile.TemporaryDirectory(prefix="retrain-reward-") as folder:
        data = Path(folder)
        np.save(data / "images.npy", np.stack(images))
        with open(data / "records.jsonl", "w", encoding="utf-8") as lines:
            for index, (prompt, label) in enumerate(zip(prompts, labels, strict=True)):
                split = "eval_seen" if prompt in held else "train"
                lines.write(
                    json.dumps({"index": index, "split": split, "prompt": prompt, "label": label}) + "\n"
                )
        status = train_reward.main(
            ["--data", str(data), "--tokenizer", str(args.tokenizer), "--out", str(args.out),
             "--no-ablation", "--epochs", str(args.epochs), "--seed", str(args.seed),
             "--threads", str(args.threads), "--force"]
        )  # fmt: skip
    if status != 0:
        return status
    manifest_path = args.out / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["name"] = args.name
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    metrics = json.loads((args.out / "metrics.json").read_text())
    emit(
        "retrained",
        name=args.name,
        ratings=len(images),
        good=good,
        held_out_prompts=len(held),
        other_prompts=skipped,
        eval=metrics["eval"]["eval_seen"]["reward_model"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
