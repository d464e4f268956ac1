"""What a VAE round trip does to a model's own images (issue #5): why a fine-tune trains on their latents.

A fine-tune that trains on generated PNGs encodes each back to a latent with the VAE. On the model's own
samples that round trip is lossy, and the UNet, trained to reproduce the re-encoded latents, learns the
loss. This script measures it: it takes a samples file's images (t2i_scripts.eval.sample_train_set's served
samples, say), encodes each with the pipeline's VAE (the posterior's mean), decodes it again, and rates
every generation with evaluate.py, for `--rounds` round trips.

Writes JSON: {"images", "samples", "vae", "rounds": [figures of the originals, after 1 round trip, ...]}.

Usage:
    python -m t2i_trainer.trials.vae_round_trip --samples build/train-samples/samples-rater.jsonl \
        --out models/vae-round-trip.json
"""

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from PIL import Image

from t2i_trainer.common.paths import REPO_ROOT as ROOT
from t2i_trainer.jobs.evaluate import evaluate

DEFAULT_VAE = ROOT / "models" / "shapes-sd" / "diffusers" / "vae"


def round_trip(vae, images: list[np.ndarray], batch: int = 64) -> list[np.ndarray]:
    """Each uint8 HxWx3 image encoded (posterior mean) and decoded again, rounded to uint8."""
    import torch

    out = []
    for start in range(0, len(images), batch):
        pixels = torch.from_numpy(np.stack(images[start : start + batch])).permute(0, 3, 1, 2).float()
        with torch.no_grad():
            latents = vae.encode(pixels / 127.5 - 1).latent_dist.mean
            decoded = vae.decode(latents).sample
        rgb = ((decoded.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
        out.extend(rgb)
    return out


def shown(path: Path) -> str:
    """The path relative to the repository when inside it, as committed results show paths."""
    resolved = path.resolve()
    return str(resolved.relative_to(ROOT) if resolved.is_relative_to(ROOT) else path)


def figures(images: list[np.ndarray], prompts: list[str]) -> dict:
    result = evaluate(images, prompts)
    return {"attributes": result["attributes"], "good": result["good"], "quality": result["quality"]}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=Path, required=True, help="a jobs/finetune.py samples file")
    parser.add_argument("--vae", type=Path, default=DEFAULT_VAE, help="diffusers VAE folder (%(default)s)")
    parser.add_argument("--images", type=int, default=1500, help="images drawn at random (%(default)s)")
    parser.add_argument("--rounds", type=int, default=2, help="round trips (%(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write the JSON here as well as to stdout")
    args = parser.parse_args(argv)
    if not args.samples.is_file():
        parser.error(f"--samples {args.samples} is not a file (t2i_scripts.eval.sample_train_set writes one)")
    if not (args.vae / "config.json").is_file():
        parser.error(f"--vae {args.vae} is not a diffusers VAE folder (no config.json)")
    if args.images < 1 or args.rounds < 1:
        parser.error("--images and --rounds must be at least 1")

    import torch
    from diffusers import AutoencoderKL

    torch.set_num_threads(args.threads)
    records = [json.loads(line) for line in args.samples.read_text().splitlines() if line.strip()]
    rng = np.random.default_rng(args.seed)
    chosen = sorted(rng.choice(len(records), size=min(args.images, len(records)), replace=False))
    images = []
    for index in chosen:
        with Image.open(args.samples.parent / records[index]["image"]) as image:
            images.append(np.asarray(image.convert("RGB")))
    prompts = [records[index]["prompt"] for index in chosen]
    vae = AutoencoderKL.from_pretrained(args.vae).eval()
    rounds = [figures(images, prompts)]
    for _ in range(args.rounds):
        images = round_trip(vae, images)
        rounds.append(figures(images, prompts))
    result = {
        "images": len(chosen),
        "samples": shown(args.samples),
        "vae": shown(args.vae),
        "rounds": rounds,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
