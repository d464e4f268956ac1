"""Rate a folder of generated images with the shapes world's rater; print the evaluation figures (issue #5).

The fine-tune job's evaluation stage samples the held-out prompts from the base and the candidate model
through ONNX Runtime, writes each set as `<folder>/prompts.jsonl` ({"image", "prompt"} per line) plus the
PNGs, and runs this on each folder. It prints one JSON object:

    images       how many images there are
    rated        how many of them the rater could judge: those whose prompt is a shapes-world prompt
                 (`parse_prompt` reads it). Other prompts are skipped for the rater's figures below.
    prompts      how many distinct prompts there are (all of them)
    good         share of the rated images that the rater calls good (every stated attribute right)
    categories   good share per prompt category (colour, count, background, combination), rated images only
    attributes   share of rated images right on each attribute, among prompts that state it (shape, colour,
                 count, background)
    quality      the quality proxy of models/REPORT.md: share of rated images whose objects the rater could
                 all find and name
    diversity    mean over prompts of the mean pairwise RMS distance between their images (0..1), over all
                 images, rated or not

good and quality are null when no image could be rated, diversity when no prompt has two images.

Needs only numpy and Pillow, like the rater.

Usage:
    python -m t2i_trainer.jobs.evaluate --images job/eval/candidate
"""

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from t2i_trainer.build.rater import judge
from t2i_trainer.build.shapes_world import CATEGORIES, parse_prompt

ATTRIBUTES = ("shape", "colour", "count", "background")


def mean_pairwise_rms(images: np.ndarray) -> float:
    flat = images.reshape(len(images), -1).astype(np.float32) / 255
    distances = [
        np.sqrt(np.mean((flat[i] - flat[j]) ** 2)) for i in range(len(flat)) for j in range(i + 1, len(flat))
    ]
    return float(np.mean(distances)) if distances else float("nan")


def is_clean(rating) -> bool:
    """The quality proxy's test: the rater found objects and could name every one of them."""
    return bool(rating.objects) and all(found.shape != "unknown" for found in rating.objects)


def evaluate(images: Sequence[np.ndarray], prompts: Sequence[str]) -> dict:
    """The figures for uint8 HxWx3 images, each generated for the prompt at the same position.

    Images whose prompt is not a shapes-world prompt (parse_prompt raises ValueError) count towards `images`,
    `prompts` and `diversity` but not towards `rated` or the rater's figures.
    """
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    good = 0
    clean = 0
    rated = 0
    by_category = defaultdict(lambda: [0, 0])
    by_attribute = defaultdict(lambda: [0, 0])
    by_prompt = defaultdict(list)
    for pixels, text in zip(images, prompts, strict=True):
        by_prompt[text].append(pixels)
        try:
            prompt = parse_prompt(text)
        except ValueError:
            continue  # not a shapes-world prompt: the rater cannot judge it
        rated += 1
        rating = judge(Image.fromarray(pixels), prompt)
        is_good = rating.label == "good"
        good += is_good
        by_category[prompt.category][0] += is_good
        by_category[prompt.category][1] += 1
        for attribute, check in rating.reasons.items():
            by_attribute[attribute][0] += check.ok
            by_attribute[attribute][1] += 1
        clean += is_clean(rating)
    spreads = [mean_pairwise_rms(np.stack(group)) for group in by_prompt.values() if len(group) > 1]
    return {
        "images": len(images),
        "rated": rated,
        "prompts": len(by_prompt),
        "good": good / rated if rated else None,
        "categories": {
            name: by_category[name][0] / by_category[name][1] for name in CATEGORIES if by_category[name][1]
        },
        "attributes": {
            name: by_attribute[name][0] / by_attribute[name][1]
            for name in ATTRIBUTES
            if by_attribute[name][1]
        },
        "quality": clean / rated if rated else None,
        "diversity": float(np.mean(spreads)) if spreads else None,
    }


def load_folder(folder: Path) -> tuple[list[np.ndarray], list[str]]:
    images, prompts = [], []
    with open(folder / "prompts.jsonl", encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                record = json.loads(line)
                with Image.open(folder / record["image"]) as image:
                    images.append(np.asarray(image.convert("RGB")))
                prompts.append(record["prompt"])
    return images, prompts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=Path, required=True, help="folder with prompts.jsonl and the images")
    args = parser.parse_args(argv)
    if not (args.images / "prompts.jsonl").is_file():
        parser.error(f"--images has no prompts.jsonl: {args.images}")
    try:
        images, prompts = load_folder(args.images)
        result = evaluate(images, prompts)
    except (OSError, ValueError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
