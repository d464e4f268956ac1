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

    rows         per prompt, in first-seen order, what the service's gate resamples for its paired bootstrap
                 (issue #26): {"prompt", "category" (null when the rater cannot judge it), "images",
                 "good": [good, rated], "quality": [clean, rated], "attributes": {name: [right, judged]},
                 "diversity" (null under two images)}

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


def judge_prompt(text: str, images: Sequence[np.ndarray]) -> dict:
    """One prompt's row (see the module's docstring): the rater's tallies over its images and their diversity.

    A prompt the rater cannot read (parse_prompt raises ValueError) gets zero tallies and a null category."""
    try:
        prompt = parse_prompt(text)
    except ValueError:
        prompt = None
    good = clean = rated = 0
    attributes = {}
    if prompt is not None:
        for pixels in images:
            rating = judge(Image.fromarray(pixels), prompt)
            rated += 1
            good += rating.label == "good"
            clean += is_clean(rating)
            for attribute, check in rating.reasons.items():
                tally = attributes.setdefault(attribute, [0, 0])
                tally[0] += int(check.ok)
                tally[1] += 1
    return {
        "prompt": text,
        "category": None if prompt is None else prompt.category,
        "images": len(images),
        "good": [good, rated],
        "quality": [clean, rated],
        "attributes": {name: attributes[name] for name in ATTRIBUTES if name in attributes},
        "diversity": mean_pairwise_rms(np.stack(images)) if len(images) > 1 else None,
    }


def evaluate(images: Sequence[np.ndarray], prompts: Sequence[str]) -> dict:
    """The figures for uint8 HxWx3 images, each generated for the prompt at the same position.

    Images whose prompt is not a shapes-world prompt (parse_prompt raises ValueError) count towards `images`,
    `prompts` and `diversity` but not towards `rated` or the rater's figures.
    """
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    by_prompt = defaultdict(list)
    for pixels, text in zip(images, prompts, strict=True):
        by_prompt[text].append(pixels)
    rows = [judge_prompt(text, group) for text, group in by_prompt.items()]
    rated = sum(row["good"][1] for row in rows)

    def share(pairs) -> float | None:
        pairs = list(pairs)
        judged = sum(pair[1] for pair in pairs)
        return sum(pair[0] for pair in pairs) / judged if judged else None

    categories = {name: share(row["good"] for row in rows if row["category"] == name) for name in CATEGORIES}
    attributes = {
        name: share(row["attributes"][name] for row in rows if name in row["attributes"])
        for name in ATTRIBUTES
    }
    spreads = [row["diversity"] for row in rows if row["diversity"] is not None]
    return {
        "images": len(images),
        "rated": rated,
        "prompts": len(rows),
        "good": share(row["good"] for row in rows),
        "categories": {name: value for name, value in categories.items() if value is not None},
        "attributes": {name: value for name, value in attributes.items() if value is not None},
        "quality": share(row["quality"] for row in rows),
        "diversity": float(np.mean(spreads)) if spreads else None,
        "rows": rows,
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
