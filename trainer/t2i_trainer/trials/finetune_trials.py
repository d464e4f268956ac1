"""Hyperparameter trials for the fine-tune job (issue #5), in PyTorch, outside the service.

Each trial fine-tunes models/shapes-sd/diffusers with jobs/finetune.py on the rated samples `make models` left
in build/reward-data (the train split: the pretrained model's own images with the rater's labels, good 1 and
bad 0), then samples the held-out evaluation prompts of sample_rated.py (16 per category, 16 images each,
20 steps at guidance 2.0, seed 7) and rates them with evaluate.py. The untouched base model is trial `base`.

`--samples FILE` trains on another samples file instead, such as t2i_scripts.eval.sample_train_set's 8,448
served images of every training prompt (samples-rater.jsonl or samples-reward.jsonl). `--split seen` rates the
seen evaluation prompts instead (16 per category, 8 images each), to tell forgetting from failing to
generalise; a trial named without a spec whose run folder exists is evaluated again without training.

One JSON line per trial is appended to --results: the evaluation figures, the trial's name and spec, seconds.
The trials are cheap stand-ins for whole jobs, used to choose the job's settings in
t2i_scripts.eval.finetune_loop.

Usage:
    python -m t2i_trainer.trials.finetune_trials base
    python -m t2i_trainer.trials.finetune_trials e '{"steps": 1500, "learning_rate": 3e-4, "beta": 0.5,
        "ema_decay": 0.999, "train_text_encoder": true, "pretrain": {"kind": "shapes_world", "images": 4096}}'
    python -m t2i_trainer.trials.finetune_trials j '{...}' --samples build/train-samples/samples-rater.jsonl
    python -m t2i_trainer.trials.finetune_trials j --split seen

A second round starts from a trial's weights: train the first with `"export": true` so that the service can
serve it, sample its images, and name its diffusers folder as the next trial's base:

    python -m t2i_trainer.trials.finetune_trials n '{..., "export": true}' \
        --samples build/train-samples/samples-rater.jsonl
    python -m t2i_scripts.eval.sample_train_set --model build/finetune-trials/run-n \
        --out build/train-samples-n --images 8
    python -m t2i_trainer.trials.finetune_trials p '{"base": "build/finetune-trials/run-n/diffusers", ...}' \
        --samples build/train-samples-n/samples-rater.jsonl
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from PIL import Image

from t2i_trainer.build.shapes_world import eval_prompts, heldout_prompts, train_prompts
from t2i_trainer.common.paths import REPO_ROOT as ROOT
from t2i_trainer.jobs.evaluate import evaluate

BASE = ROOT / "models" / "shapes-sd" / "diffusers"


def prepare_samples(data: Path, folder: Path) -> Path:
    """build/reward-data's train split as a job's samples.jsonl (reward 1 for good, 0 for bad)."""
    samples = folder / "samples.jsonl"
    if samples.is_file():
        return samples
    folder.mkdir(parents=True, exist_ok=True)
    images = np.load(data / "images.npy")
    lines = []
    for line in (data / "records.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["split"] != "train":
            continue
        name = f"{record['index']}.png"
        Image.fromarray(images[record["index"]]).save(folder / name)
        reward = 1.0 if record["label"] == "good" else 0.0
        lines.append(json.dumps({"image": name, "prompt": record["prompt"], "reward": reward}))
    samples.write_text("\n".join(lines) + "\n")
    return samples


def evaluate_pipeline(folder: Path, images_per_prompt: int = 16, split: str = "heldout") -> dict:
    import torch
    from diffusers import StableDiffusionPipeline

    from t2i_trainer.build.sample_rated import sample_images

    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    seen = eval_prompts(train_prompts(), 16, rng)  # sample_rated.py draws the seen prompts first
    prompts = seen if split == "seen" else eval_prompts(heldout_prompts(), 16, rng)
    texts = [prompt.text for prompt in prompts for _ in range(images_per_prompt)]
    pipeline = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    pipeline.set_progress_bar_config(disable=True)
    return evaluate(list(sample_images(pipeline, texts, 20, 2.0, 7, 128)), texts)


def relative_paths(spec: dict | None) -> dict | None:
    """The spec with its paths relative to the repository, as the committed results show them."""
    if spec is None:
        return None
    relative = dict(spec)
    for key in ("base", "out", "samples"):
        path = Path(relative[key])
        if path.is_absolute() and path.is_relative_to(ROOT):
            relative[key] = str(path.relative_to(ROOT))
    return relative


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("name", help="the trial's name; `base` evaluates the pretrained model")
    parser.add_argument("spec", nargs="?", help="jobs/finetune.py spec fields as JSON (not for `base`)")
    parser.add_argument("--data", type=Path, default=ROOT / "build" / "reward-data")
    parser.add_argument(
        "--samples",
        type=Path,
        help="a jobs/finetune.py samples file to train on instead of --data's train split",
    )
    parser.add_argument(
        "--split",
        choices=("heldout", "seen"),
        default="heldout",
        help="the evaluation prompts (default: heldout)",
    )
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "finetune-trials")
    parser.add_argument("--results", type=Path, default=ROOT / "build" / "finetune-trials" / "results.jsonl")
    args = parser.parse_args(argv)
    started = time.monotonic()
    spec = None
    out = args.work / f"run-{args.name}"
    spec_path = args.work / f"{args.name}.json"
    if args.name == "base":
        folder = BASE
    elif not args.spec and (out / "diffusers").is_dir() and spec_path.is_file():
        # Trained before and no new spec: evaluate the same weights again (e.g. on the other split).
        spec = json.loads(spec_path.read_text())
        folder = out / "diffusers"
    else:
        if not args.spec:
            parser.error("a trial other than `base` needs a spec")
        if out.exists():
            parser.error(
                f"trial {args.name} was trained already ({out}); give a new name, or no spec to re-evaluate"
            )
        if args.samples:
            if not args.samples.is_file():
                parser.error(
                    f"--samples {args.samples} does not exist (t2i_scripts.eval.sample_train_set makes one)"
                )
            samples = args.samples.resolve()
        elif not (args.data / "records.jsonl").is_file():
            parser.error(f"--data has no records.jsonl (run `make models`): {args.data}")
        else:
            samples = prepare_samples(args.data, args.work / "samples")
        spec = {
            "base": str(BASE),
            "out": str(out),
            "samples": str(samples),
            "export": False,
            "log_every": 100,
        }
        spec |= json.loads(args.spec)
        args.work.mkdir(parents=True, exist_ok=True)
        spec_path.write_text(json.dumps(spec))
        subprocess.run(
            [sys.executable, "-m", "t2i_trainer.jobs.finetune", "--spec", str(spec_path)],
            check=True,
        )
        folder = out / "diffusers"
    per_prompt = 8 if args.split == "seen" else 16
    result = evaluate_pipeline(folder, per_prompt, args.split) | {
        "name": args.name,
        "split": args.split,
        "spec": relative_paths(spec),
        "seconds": round(time.monotonic() - started),
    }
    print(json.dumps(result))
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with open(args.results, "a", encoding="utf-8") as lines:
        lines.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
