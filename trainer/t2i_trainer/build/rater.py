"""The simulated rater: it stands in for the paper's human labellers on shapes-world images.

Given an image and a prompt it answers good or bad with a reason per attribute, judging text alignment only,
as Lee et al.'s raters did. It reads the image the way a person reads a flat drawing:

1. Background: the median colour of the image border, named after the nearest palette colour.
2. Foreground: pixels at least half as far from the background as the nearest object colour is, whatever
   their colour, so shades, rims, highlights and off-palette colours count (see `foreground`).
3. Regions: each pixel gets the object colour of nearest hue (its hue family; greys have none). Hue survives
   shading, rims, highlights and blur towards black, white or grey, where exact palette colours do not.
   Cores are connected interior pixels of one family; interior pixels part shapes that touch at a corner.
   Each other foreground pixel joins the nearest core (see `regions`).
4. Objects: a region enclosed by another, a rim or patch along it, or the other tone of a shape the two
   make together, joins it (`merge_parts`, `join_groups`); a region that fits no silhouette is split where
   erosion parts it into shapes that fit better (`split_touching`). Each object's colour is the family most
   of its inside has, so a highlight of another hue does not change it; its edge is trimmed where blur mixed
   it with the background (`trim_edge`). An object counts if it has MIN_OBJECT_PX pixels and is at least
   3 px thick somewhere, so specks and streaks of noise are not objects; an off-palette one counts too, and
   its colour is judged apart.
5. Shape: the silhouette, among the renderer's own six, that overlaps the object best (see `shape_scores`).

Issue #26 measured the earlier rater, which classified pixels by exact palette colour, against a count by
eye: it split shaded and two-tone shapes, made rims and highlights into objects of other colours, merged
shapes touching at a corner and missed off-palette ones. `t2i_scripts.eval.rater_accuracy` measures both
on `hard_renders` (models/REPORT.md).

The prompt is satisfied when there is at least one object, every object has the prompt's shape and, where
the prompt says so, its colour, there are exactly `count` objects, and the background matches. What the
prompt leaves open is not checked.

Real feedback is noisy. `Rater` flips good/bad with probability `label_noise` and answers "skip" with
probability `skip_rate`, from a seeded generator, so the paper's assumption that feedback is consistent (C2)
can be tested.
"""

import argparse
import colorsys
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
# How far (RGB distance) the border may drift from a palette colour and still be read as that background.
# Palette colours are at least 100 apart; the slack is for a diffusion model's colours.
COLOUR_THRESHOLD = 80.0
# A pixel is foreground when it is at least this share of the way from the background to the nearest object
# colour: half coverage of a blurred edge for that colour, a little less for colours farther away.
FOREGROUND_SHARE = 0.5
# A pixel has a hue only if its channels spread at least this much (0-255): greys, and the near-black and
# near-white ends of shades, have none and go with the object around them.
MIN_CHROMA = 40.0
# A core (see `regions`) must have this many interior pixels of one hue family.
MIN_CORE_PX = 4
# A region whose pixels mostly border another region (an inner patch), or a thin one (no 5x5 block: a rim)
# that borders it along this much, is part of it.
ENCLOSED_SHARE = 0.5
RIM_SHARE = 0.25
THIN_DEPTH = 2
# A region bordering a thicker one along RIM_SHARE of its edge is a patch of it (a highlight, a band in
# another hue) when the two together fit the thicker one's best silhouette within this much.
PATCH_TOLERANCE = 0.02
# Two regions that border along TWO_TONE_SHARE of the smaller one's edge, or a group of touching regions,
# are one object (in two tones, say) when together they fit a silhouette better than apart, and at least
# ONE_SHAPE_IOU, in a box no more than MAX_ASPECT times as long as wide.
TWO_TONE_SHARE = 0.15
ONE_SHAPE_IOU = 0.8
MAX_ASPECT = 1.3
# A region that fits no silhouette this well may be shapes touching: it is split where erosion parts it,
# if every part is an object and the parts fit their silhouettes better by SPLIT_GAIN on average.
SPLIT_BELOW_IOU = 0.8
SPLIT_GAIN = 0.1
MAX_SPLIT_DEPTH = 5
# An edge pixel within this distance of the line from the background to its object's colour is a mix of the
# two (a blurred edge); farther off it is a shade of its own (a rim).
MIX_DISTANCE = 40.0
# A body colour at least this far from the background to a palette colour, on the line between them, is
# that palette colour diluted by blur; one nearer the background is a paler colour of its own.
BLUR_DILUTION = 0.75
# Blurred edges are trimmed this many pixels deep at most.
MAX_TRIM = 3
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


def foreground(pixels: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Pixels at least FOREGROUND_SHARE of the way from the background to the nearest object colour.

    Distance alone, with no colour: a shade, an off-palette colour, a rim or a highlight is foreground as much
    as a palette colour is. Which object a pixel belongs to is decided by the regions it joins (`regions`).
    """
    reach = np.linalg.norm(OBJECT_PALETTE - background, axis=-1)
    # An object the colour of the background cannot be seen on it (no palette pair is that close).
    threshold = FOREGROUND_SHARE * reach[reach >= COLOUR_THRESHOLD].min()
    return np.linalg.norm(pixels.astype(np.float32) - background, axis=-1) >= threshold


def hue_distance(first: np.ndarray | float, second: np.ndarray | float) -> np.ndarray:
    """Degrees between hues, around the circle."""
    difference = np.abs(np.asarray(first) - second) % 360
    return np.minimum(difference, 360 - difference)


PALETTE_HUES = np.array(
    [colorsys.rgb_to_hsv(*(OBJECT_PALETTE[index] / 255))[0] * 360 for index in range(len(OBJECT_PALETTE))]
)
# Pillow's HSV image gives hue as a byte, 255 for a full turn: the object colour of nearest hue for each.
FAMILY_OF_HUE = hue_distance(np.arange(256)[:, None] * 360 / 255, PALETTE_HUES).argmin(axis=1)


def hue_families(pixels: np.ndarray) -> np.ndarray:
    """Per pixel the object colour (index into OBJECT_COLOURS) whose hue is nearest; -1 without a hue.

    Hue does not change when a colour is mixed with black, white or grey, so the shades of an object's colour
    (rims, highlights, shading, a blurred edge on a neutral background) keep its family, and a colour off the
    palette goes to the nearest one instead of to none.
    """
    hsv = np.asarray(Image.fromarray(np.ascontiguousarray(pixels)).convert("HSV"), dtype=np.int32)
    chroma = hsv[..., 1] * hsv[..., 2] / 255  # saturation x value: max - min of the channels
    return np.where(chroma >= MIN_CHROMA, FAMILY_OF_HUE[hsv[..., 0]], -1)


# --- Masks --------------------------------------------------------------------------------------------------

NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def framed(array: np.ndarray, value, width: int = 1) -> np.ndarray:
    """`array` in a frame of `value`, `width` pixels wide: np.pad without its overhead on small arrays."""
    height, length = array.shape
    out = np.full((height + 2 * width, length + 2 * width), value, dtype=array.dtype)
    out[width : width + height, width : width + length] = array
    return out


def neighbourhood(mask: np.ndarray, combine) -> np.ndarray:
    """`combine` (np.logical_and or np.logical_or) of `mask` and its 8 shifts, False outside the image."""
    height, width = mask.shape
    padded = framed(mask, False)
    out = mask.copy()
    for dy, dx in NEIGHBOURS:
        combine(out, padded[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width], out=out)
    return out


def erode(mask: np.ndarray) -> np.ndarray:
    """The pixels of `mask` whose 8 neighbours are all in it."""
    return neighbourhood(mask, np.logical_and)


def dilate(mask: np.ndarray) -> np.ndarray:
    return neighbourhood(mask, np.logical_or)


def bounds(mask: np.ndarray) -> tuple[slice, slice]:
    """The bounding box of a non-empty mask."""
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return slice(rows[0], rows[-1] + 1), slice(columns[0], columns[-1] + 1)


def depth(mask: np.ndarray) -> int:
    """How many erosions empty `mask`: 1 for a line, 2 for a 3x3 block, (n + 1) // 2 for an n x n square.
    Counted on the bounding box, where erosion is the same as in the whole image."""
    layer, layers = (mask[bounds(mask)] if mask.any() else mask), 0
    while layer.any():
        layer, layers = erode(layer), layers + 1
    return layers


def grow(labels: np.ndarray, allowed: np.ndarray, steps: int) -> np.ndarray:
    """Labels (>= 0) spread into the unlabelled `allowed` pixels next to them, one ring per step."""
    labels = labels.copy()
    height, width = labels.shape
    for _ in range(steps):
        open_pixels = allowed & (labels < 0)
        if not open_pixels.any():
            break
        padded = framed(labels, -1)
        before = labels.copy()
        for dy, dx in NEIGHBOURS:
            neighbour = padded[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]
            take = open_pixels & (labels < 0) & (neighbour >= 0)
            labels[take] = neighbour[take]
        if (labels == before).all():
            break
    return labels


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """`mask` with every background pocket it encloses: a highlight near the background's colour, say."""
    if not mask.any():
        return mask
    box = bounds(mask)
    outside = framed(~mask[box], True)
    filled = mask.copy()
    for pocket in components(outside):
        if not (pocket[0].any() or pocket[-1].any() or pocket[:, 0].any() or pocket[:, -1].any()):
            filled[box] |= pocket[1:-1, 1:-1]
    return filled


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
        group = root(index)
        if group not in groups:
            groups[group] = np.zeros_like(mask)
        groups[group][row, first : last + 1] = True
    return list(groups.values())


# --- Shape --------------------------------------------------------------------------------------------------


def shape_scores(component: np.ndarray) -> dict[str, float]:
    """Intersection over union of the component with each shape drawn into its bounding box.

    The templates come from the renderer itself, so a clean render scores 1.0 on its own shape and at most
    0.84 on any other. Blur rounds corners, but the bounding box stays (see `trim_edge` and
    MAX_TEMPLATE_GROW), so the right silhouette still wins; a diffusion model's rough shapes go to the
    closest one.
    """
    crop = component[bounds(component)]
    height, width = crop.shape
    scores = dict.fromkeys(SHAPES, 0.0)
    for extra in range(MAX_TEMPLATE_GROW + 1):
        padded = framed(crop, False, extra)
        for shape in SHAPES:
            template = shape_mask(shape, width + 2 * extra, height + 2 * extra)
            scores[shape] = max(scores[shape], float((padded & template).sum() / (padded | template).sum()))
    return scores


def classify_shape(scores: dict[str, float]) -> str:
    best = max(scores, key=scores.get)
    # A blob like none of the silhouettes is no shape at all, so it fails any shape check.
    return best if scores[best] >= MIN_SHAPE_IOU else "unknown"


def best_fit(mask: np.ndarray) -> float:
    return max(shape_scores(mask).values())


# --- Objects ------------------------------------------------------------------------------------------------


def regions(pixels: np.ndarray, background: np.ndarray, families: np.ndarray) -> list[np.ndarray]:
    """The foreground cut into regions, one per core.

    A pocket inside the foreground (a highlight near the background's colour) is foreground. A core is a
    connected set of interior pixels (all 8 neighbours foreground) of one hue family, of at least MIN_CORE_PX.
    Interior pixels keep two shapes that touch at a corner apart, and the edge pixels, whose colour is mixed
    with the background's, out of the cores. Every other foreground pixel then joins the core it is nearest
    to, within 12 px, so edges, rims, greys and the bits of another hue go with their object.
    """
    found = fill_holes(foreground(pixels, background))
    interior = erode(found)
    labels = np.full(found.shape, -1)
    cores = 0
    for family in np.unique(families[interior]):
        if family < 0:
            continue
        for core in components(interior & (families == family)):
            if core.sum() >= MIN_CORE_PX:
                labels[core] = cores
                cores += 1
    labels = grow(labels, found, steps=12)
    return [labels == index for index in range(cores)]


def part_of(part: np.ndarray, whole: np.ndarray, share: float) -> bool:
    """Whether region `part`, `share` of whose edge borders region `whole`, belongs to the same object: it is
    no thicker, and it is enclosed by it, or a rim along it, or a patch that leaves its silhouette as it was,
    or the other tone of a shape the two make together."""
    if depth(part) > depth(whole):
        return False
    if share >= ENCLOSED_SHARE or (share >= RIM_SHARE and depth(part) <= THIN_DEPTH):
        return True
    if share < TWO_TONE_SHARE:
        return False
    union = part | whole
    if not squarish(union):
        return False
    fit, whole_fit = best_fit(union), best_fit(whole)
    if share >= RIM_SHARE and fit >= whole_fit - PATCH_TOLERANCE:
        return True
    return fit >= ONE_SHAPE_IOU and fit > max(best_fit(part), whole_fit)


def squarish(mask: np.ndarray) -> bool:
    """Whether `mask`'s bounding box is near square, as every shape of the world's is: two shapes side by
    side are no one shape."""
    rows, columns = bounds(mask)
    height, width = rows.stop - rows.start, columns.stop - columns.start
    return max(height, width) <= MAX_ASPECT * min(height, width)


def merge_parts(masks: list[np.ndarray]) -> list[np.ndarray]:
    """Regions merged into the region they are part of (`part_of`), the one that borders its neighbour along
    the largest share of its edge first, until none is part of another."""
    masks = [mask for mask in masks if mask.any()]
    while len(masks) > 1:
        labels = np.full(masks[0].shape, -1)
        for index, mask in enumerate(masks):
            labels[mask] = index
        candidates = []
        for index, mask in enumerate(masks):
            ring = dilate(mask) & ~mask
            neighbours = labels[ring]
            counts = np.bincount(neighbours[neighbours >= 0], minlength=len(masks))
            if counts.any():
                other = int(counts.argmax())
                candidates.append((counts[other] / ring.sum(), index, other))
        for share, index, other in sorted(candidates, reverse=True):
            if part_of(masks[index], masks[other], share):
                masks[other] = masks[other] | masks[index]
                del masks[index]
                break
        else:
            break
    return masks


def join_groups(masks: list[np.ndarray]) -> list[np.ndarray]:
    """Each group of touching regions as one region when together they fit a silhouette (ONE_SHAPE_IOU, in a
    near-square box) better than they fit their own, area for area: a shape whose rim, tips or tones fall in
    several hue families. Shapes that only touch fit one silhouette worse than each fits its own."""
    groups = components(np.logical_or.reduce(masks)) if masks else []
    joined = []
    for group in groups:
        members = [mask for mask in masks if (mask & group).any()]
        if len(members) > 1 and fits_as_one(members):
            joined.append(np.logical_or.reduce(members))
        else:
            joined += members
    return joined


def fits_as_one(members: list[np.ndarray]) -> bool:
    union = np.logical_or.reduce(members)
    if not squarish(union):
        return False
    fit = best_fit(union)
    areas = [int(member.sum()) for member in members]
    own = sum(area * best_fit(member) for area, member in zip(areas, members, strict=True)) / sum(areas)
    return fit >= ONE_SHAPE_IOU and fit > own


def split_touching(mask: np.ndarray) -> list[np.ndarray]:
    """`mask` cut apart where shapes touch: at the first erosion that parts it into pieces which, grown back
    inside it, are all objects and fit their silhouettes better (SPLIT_GAIN on average). Pieces are split
    again. A region that fits a silhouette (SPLIT_BELOW_IOU) is left whole: no single shape of the world has
    a neck that erosion cuts."""
    fit = best_fit(mask)
    if fit >= SPLIT_BELOW_IOU:
        return [mask]
    eroded = mask
    for _ in range(MAX_SPLIT_DEPTH):
        eroded = erode(eroded)
        seeds = [seed for seed in components(eroded) if seed.sum() >= 2]
        if len(seeds) < 2:
            if not eroded.any():
                break
            continue
        labels = np.full(mask.shape, -1)
        for index, seed in enumerate(seeds):
            labels[seed] = index
        labels = grow(labels, mask, steps=mask.shape[0])
        pieces = [labels == index for index in range(len(seeds))]
        if all(piece.sum() >= MIN_OBJECT_PX for piece in pieces):
            if np.mean([best_fit(piece) for piece in pieces]) >= fit + SPLIT_GAIN:
                return [part for piece in pieces for part in split_touching(piece)]
    return [mask]


def colour_votes(mask: np.ndarray, families: np.ndarray) -> np.ndarray:
    """Pixels of each hue family inside the edge of `mask` (all of it when it has no inside): the edge's
    colours are mixed with the background's."""
    inner = erode(mask)
    chosen = families[inner if inner.any() else mask]
    return np.bincount(chosen[chosen >= 0], minlength=len(OBJECT_COLOURS))


def mix_of(colour: np.ndarray, background: np.ndarray, drawn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """How far along the line from `background` to `drawn` each colour is (alpha), and how far off it."""
    direction = drawn - background
    offsets = colour.astype(np.float32) - background
    alpha = offsets @ direction / float(direction @ direction)
    return alpha, np.linalg.norm(offsets - alpha[..., None] * direction, axis=-1)


def trim_edge(
    mask: np.ndarray, pixels: np.ndarray, background: np.ndarray, family: int, own: np.ndarray
) -> np.ndarray:
    """`mask` less the edge pixels that are a mix of the background and the object's colour with under half of
    the colour, layer by layer (up to MAX_TRIM): a blurred edge ends where it was drawn. `own` marks the
    pixels of the object's hue `family`. The colour is the palette's when the median of those pixels inside
    the edge is a mix of it with at most 1 - BLUR_DILUTION of the background (blur dilutes a small shape's
    every pixel that much), else that median (an off-palette colour, or a paler one). A pixel of the family
    off the mixing line is a shade of its own (a rim, a tone) and stays; one of another hue or of none off the
    line is noise and goes."""
    inner = erode(mask) & own
    colour = np.median(pixels[inner if inner.any() else mask & own], axis=0).astype(np.float32)
    alpha, off_line = mix_of(colour, background, OBJECT_PALETTE[family])
    if off_line <= MIX_DISTANCE and BLUR_DILUTION <= alpha <= 1:
        colour = OBJECT_PALETTE[family]
    direction = colour - background
    length = float(direction @ direction)
    if length < COLOUR_THRESHOLD**2:
        return mask
    trimmed = mask.copy()
    for _ in range(MAX_TRIM):
        edge = trimmed & ~erode(trimmed)
        alpha, off_line = mix_of(pixels[edge], background, colour)
        keep = (alpha >= 0.5) | ((off_line > MIX_DISTANCE) & own[edge])
        if keep.all():
            break
        trimmed[edge] = keep
    return trimmed


def detect_objects(pixels: np.ndarray, background: np.ndarray) -> list[DetectedObject]:
    families = hue_families(pixels)
    objects = []
    for region in join_groups(merge_parts(regions(pixels, background, families))):
        for part in split_touching(region):
            votes = colour_votes(part, families)
            if not votes.any():
                continue  # grey: no object of the world
            family = int(votes.argmax())
            part = fill_holes(trim_edge(part, pixels, background, family, families == family))
            area = int(part.sum())
            # At least 3 px thick somewhere, so streaks of noise are not objects.
            if area < MIN_OBJECT_PX or depth(part) < 2:
                continue
            ys, xs = np.nonzero(part)
            box = (int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1))
            scores = shape_scores(part)
            rounded = {shape: round(score, 3) for shape, score in scores.items()}
            name = tuple(OBJECT_COLOURS)[family]
            objects.append(DetectedObject(name, classify_shape(scores), area, box, rounded))
    return objects


# --- Judgement ----------------------------------------------------------------------------------------------


def judge(image: Image.Image, prompt: Prompt) -> Rating:
    """The noiseless verdict on whether `image` shows `prompt`."""
    pixels = np.asarray(image.convert("RGB"))
    background_colour, background = border_background(pixels)
    objects = detect_objects(pixels, background_colour)
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
