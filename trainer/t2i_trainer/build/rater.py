"""The simulated rater: it stands in for the paper's human labellers on shapes-world images.

Given an image and a prompt it answers good or bad with a reason per attribute, judging text alignment only,
as Lee et al.'s raters did. It reads the image the way a person reads a flat drawing:

1. Background: the median colour of the image border, named after the nearest palette colour.
2. Segmentation: each pixel is unmixed between the background and each object colour (see `segment`), so the
   in-between colours of blurred or soft edges go to the object or the background they came from.
3. Objects: 8-connected components of each object colour. A component counts only if it has MIN_OBJECT_PX
   pixels and is at least 3 px thick somewhere, so specks and streaks of noise are not objects.
4. Shape: the silhouette, among the renderer's own six, that overlaps the component best (see `shape_scores`).

The prompt is satisfied when there is at least one object, every object has the prompt's shape and, where
the prompt says so, its colour, there are exactly `count` objects, and the background matches. What the
prompt leaves open is not checked.

Real feedback is noisy. `Rater` flips good/bad with probability `label_noise` and answers "skip" with
probability `skip_rate`, from a seeded generator, so the paper's assumption that feedback is consistent (C2)
can be tested.
"""

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from t2i_trainer.build.shapes_world import (
    BACKGROUND_COLOURS,
    OBJECT_COLOURS,
    SHAPES,
    Prompt,
    parse_prompt,
    shape_mask,
)

PALETTE_NAMES = tuple(OBJECT_COLOURS) + tuple(BACKGROUND_COLOURS)
PALETTE = np.array([*OBJECT_COLOURS.values(), *BACKGROUND_COLOURS.values()], dtype=np.float32)
OBJECT_PALETTE = PALETTE[: len(OBJECT_COLOURS)]
# How far (RGB distance) a colour may drift and still be read as a palette colour. Palette colours are at
# least 100 apart, so on renders this is exact; the slack is for a diffusion model's colours.
COLOUR_THRESHOLD = 80.0
# The smallest render (a 14 px star) has about 90 pixels, a little less once blurred.
MIN_OBJECT_PX = 24
# Below this IoU with every silhouette a component's shape is "unknown". Renders blurred with radius 1 score
# above 0.8.
MIN_SHAPE_IOU = 0.6
# Blur cuts sharp points (a diamond's tips, a triangle's apex) below half coverage, which shrinks the bounding
# box; templates up to this many pixels larger on each side are tried too.
MAX_TEMPLATE_GROW = 1
# Share of the border pixels that must be near the border's median colour for a plain background.
MIN_BORDER_SHARE = 0.5


@dataclass
class Check:
    ok: bool
    detail: str


@dataclass
class DetectedObject:
    colour: str
    shape: str  # one of SHAPES, or "unknown"
    area: int
    box: tuple[int, int, int, int]  # left, top, width, height
    shape_scores: dict[str, float]  # IoU with each shape's silhouette


@dataclass
class Rating:
    label: str  # "good", "bad" or "skip"
    reasons: dict[str, Check]  # one per attribute checked: shape always, count, colour, background if stated
    objects: list[DetectedObject]
    background: str | None  # None: the border has no single palette colour
    # The verdict before label noise and skips, so a caller can measure how consistent the feedback is.
    true_label: str
    flipped: bool = False

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


# --- Segmentation -------------------------------------------------------------------------------------------


def border_background(pixels: np.ndarray) -> tuple[np.ndarray, str | None]:
    """The border's median colour, and the palette colour it is (None if none is near or the border is mixed).

    Renders keep shapes off the border; the median also ignores a model's shape that touches it.
    """
    border = np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]]).astype(np.float32)
    colour = np.median(border, axis=0)
    distances = np.linalg.norm(PALETTE - colour, axis=-1)
    share = (np.linalg.norm(border - colour, axis=-1) <= COLOUR_THRESHOLD).mean()
    if distances.min() > COLOUR_THRESHOLD or share < MIN_BORDER_SHARE:
        return colour, None
    return colour, PALETTE_NAMES[distances.argmin()]


def segment(pixels: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Object-colour index per pixel (into OBJECT_COLOURS), -1 for background and anything else.

    Plain nearest-colour segmentation fails on blurred edges: the mix of two colours can lie near a third
    (red on yellow passes orange, red on white passes pink), drawing rings of a colour nobody drew. So each
    pixel is unmixed instead: for each object colour c it is background + alpha * (c - background) + residual,
    and it belongs to the c with the smallest residual when that residual is within COLOUR_THRESHOLD and
    alpha is at least 1/2. Half coverage is where a blurred straight edge was, so shapes keep their size.
    """
    offsets = pixels.astype(np.float32) - background  # (H, W, 3)
    directions = OBJECT_PALETTE - background  # (C, 3)
    lengths = (directions**2).sum(axis=-1)  # (C,)
    projections = offsets @ directions.T  # (H, W, C)
    alphas = np.clip(projections / np.maximum(lengths, 1.0), 0.0, 1.0)
    # |offset - alpha * direction|^2, expanded so that no (H, W, C, 3) array is needed.
    residuals = (offsets**2).sum(axis=-1, keepdims=True) - 2 * alphas * projections + alphas**2 * lengths
    # An object the colour of the background cannot be seen on it.
    residuals[..., lengths < COLOUR_THRESHOLD**2] = np.inf
    best = residuals.argmin(axis=-1)
    alpha = np.take_along_axis(alphas, best[..., None], axis=-1)[..., 0]
    found = (residuals.min(axis=-1) <= COLOUR_THRESHOLD**2) & (alpha >= 0.5)
    return np.where(found, best, -1)


NEIGHBOURHOOD = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]


def shifted(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """`mask` moved by (dy, dx), False where it moved in from outside."""
    height, width = mask.shape
    out = np.zeros_like(mask)
    out[max(dy, 0) : height + min(dy, 0), max(dx, 0) : width + min(dx, 0)] = mask[
        max(-dy, 0) : height + min(-dy, 0), max(-dx, 0) : width + min(-dx, 0)
    ]
    return out


def opening(mask: np.ndarray) -> np.ndarray:
    """3x3 erosion then dilation: what is left is every part of `mask` at least 3 px thick."""
    eroded = np.logical_and.reduce([shifted(mask, dy, dx) for dy, dx in NEIGHBOURHOOD])
    return np.logical_or.reduce([shifted(eroded, dy, dx) for dy, dx in NEIGHBOURHOOD])


def components(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected components as boolean masks.

    Runs of True along each row are joined by union-find to the runs they touch in the row above. A 64x64
    image has a few hundred runs, so plain Python is fast enough and needs no scipy.
    """
    # Where a row switches on (+1) and off (-1), with a column of False on both sides.
    steps = np.diff(np.pad(mask.astype(np.int8), ((0, 0), (1, 1))), axis=1)
    starts, ends = np.nonzero(steps == 1), np.nonzero(steps == -1)
    # (row, first column, last column), in row order: np.nonzero scans row by row.
    runs = list(zip(starts[0].tolist(), starts[1].tolist(), (ends[1] - 1).tolist(), strict=True))
    runs_by_row: dict[int, list[int]] = {}  # row -> indices into runs
    for index, (row, _, _) in enumerate(runs):
        runs_by_row.setdefault(row, []).append(index)
    parent = list(range(len(runs)))

    def root(index: int) -> int:
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    for index, (row, first, last) in enumerate(runs):
        for above in runs_by_row.get(row - 1, []):
            _, above_first, above_last = runs[above]
            # Diagonal neighbours touch, hence the one-column slack.
            if above_first <= last + 1 and first <= above_last + 1:
                parent[root(index)] = root(above)
    groups: dict[int, np.ndarray] = {}
    for index, (row, first, last) in enumerate(runs):
        groups.setdefault(root(index), np.zeros_like(mask))[row, first : last + 1] = True
    return list(groups.values())


# --- Shape --------------------------------------------------------------------------------------------------


def shape_scores(component: np.ndarray) -> dict[str, float]:
    """Intersection over union of the component with each shape drawn into its bounding box.

    The templates come from the renderer itself, so a clean render scores 1.0 on its own shape and at most
    0.84 on any other. Blur rounds corners, but the bounding box stays (see `segment` and MAX_TEMPLATE_GROW),
    so the right silhouette still wins; a diffusion model's rough shapes go to the closest one.
    """
    rows, columns = np.flatnonzero(component.any(axis=1)), np.flatnonzero(component.any(axis=0))
    crop = component[rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1]
    height, width = crop.shape
    scores = dict.fromkeys(SHAPES, 0.0)
    for grow in range(MAX_TEMPLATE_GROW + 1):
        padded = np.pad(crop, grow)
        for shape in SHAPES:
            template = shape_mask(shape, width + 2 * grow, height + 2 * grow)
            scores[shape] = max(scores[shape], float((padded & template).sum() / (padded | template).sum()))
    return scores


def classify_shape(scores: dict[str, float]) -> str:
    best = max(scores, key=scores.get)
    # A blob like none of the silhouettes is no shape at all, so it fails any shape check.
    return best if scores[best] >= MIN_SHAPE_IOU else "unknown"


def detect_objects(labels: np.ndarray) -> list[DetectedObject]:
    objects = []
    for index, colour in enumerate(OBJECT_COLOURS):
        mask = labels == index
        if mask.sum() < MIN_OBJECT_PX:
            continue
        thick = opening(mask)
        for component in components(mask):
            area = int(component.sum())
            if area < MIN_OBJECT_PX or not (component & thick).any():
                continue
            ys, xs = np.nonzero(component)
            box = (int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1))
            scores = shape_scores(component)
            rounded = {shape: round(score, 3) for shape, score in scores.items()}
            objects.append(DetectedObject(colour, classify_shape(scores), area, box, rounded))
    return objects


# --- Judgement ----------------------------------------------------------------------------------------------


def judge(image: Image.Image, prompt: Prompt) -> Rating:
    """The noiseless verdict on whether `image` shows `prompt`."""
    pixels = np.asarray(image.convert("RGB"))
    background_colour, background = border_background(pixels)
    objects = detect_objects(segment(pixels, background_colour))
    shapes = [found.shape for found in objects]
    colours = [found.colour for found in objects]
    reasons = {
        "shape": Check(
            bool(objects) and all(shape == prompt.shape for shape in shapes),
            f"expected {prompt.shape}, found {shapes or 'no objects'}",
        )
    }
    if prompt.count is not None:
        count_detail = f"expected {prompt.count}, found {len(objects)}"
        reasons["count"] = Check(len(objects) == prompt.count, count_detail)
    if prompt.colour is not None:
        reasons["colour"] = Check(
            bool(objects) and all(colour == prompt.colour for colour in colours),
            f"expected {prompt.colour}, found {colours or 'no objects'}",
        )
    if prompt.background is not None:
        reasons["background"] = Check(
            background == prompt.background, f"expected {prompt.background}, found {background or 'unclear'}"
        )
    label = "good" if all(check.ok for check in reasons.values()) else "bad"
    return Rating(label, reasons, objects, background, true_label=label)


@dataclass
class Rater:
    """`judge` plus the noise of real feedback, drawn from its own seeded generator in call order."""

    label_noise: float = 0.0
    skip_rate: float = 0.0
    seed: int = 0
    rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("label_noise", "skip_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"`{name}` must be between 0 and 1. Given: {getattr(self, name)}")
        self.rng = np.random.default_rng(self.seed)

    def rate(self, image: Image.Image, prompt: Prompt) -> Rating:
        return self.add_noise(judge(image, prompt))

    def add_noise(self, rating: Rating) -> Rating:
        # Both draws happen on every call, so whether call i skips or flips never depends on earlier verdicts.
        skip, flip = self.rng.random() < self.skip_rate, self.rng.random() < self.label_noise
        if skip:
            return dataclasses.replace(rating, label="skip")
        if flip:
            flipped_label = "bad" if rating.true_label == "good" else "good"
            return dataclasses.replace(rating, label=flipped_label, flipped=True)
        return rating


# --- CLI ----------------------------------------------------------------------------------------------------


def rate_folder(folder: Path, rater: Rater) -> None:
    with open(folder / "prompts.jsonl", encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            rating = rater.rate(Image.open(folder / record["image"]), parse_prompt(record["prompt"]))
            result = {"image": record["image"], "prompt": record["prompt"]} | rating.to_json()
            sys.stdout.write(json.dumps(result) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    rate = commands.add_parser("rate", help="rate a folder of images, printing one JSON line per image")
    rate.add_argument(
        "--images",
        type=Path,
        required=True,
        help="folder with prompts.jsonl (lines with 'image' and 'prompt'), as `shapes_world.py sample` makes",
    )
    rate.add_argument("--label-noise", type=float, default=0.0, help="chance of a flipped label (default: 0)")
    rate.add_argument("--skip-rate", type=float, default=0.0, help="chance of answering skip (default: 0)")
    rate.add_argument("--seed", type=int, default=0, help="seed of the flips and skips (default: 0)")
    args = parser.parse_args(argv)
    rate_folder(args.images, Rater(args.label_noise, args.skip_rate, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
