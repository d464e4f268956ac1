"""Hard renders: the shapes world drawn the way a diffusion model draws it, with a known ground truth (#26).

`shapes_world.render` fills each shape with one exact palette colour. The model's images are not like that,
and the rater has to judge those. Each condition here draws the renderer's own shapes, boxes and colours
(`shapes_world.scene` or `wrong_scene`, so what the image should show is known), then changes how they are
painted:

    clean         shapes_world.render itself: flat palette colours, white when the prompt names no background
    shading       a linear gradient across the shape, from a darker to a lighter shade of its colour, its hue
                  drifting up to 15° either way
    rims          the outer 1-3 px of the shape in a dim or bright shade of its colour, hue shifted up to 20°
    highlights    an inner patch in a lighter (or darker) shade, hue shifted up to 25°
    two-tone      a straight cut through the shape; the smaller side (20-40%) in another shade, hue up to 12°
    off-palette   each object's colour moved off the palette in hue, saturation and value, 50+ RGB away,
                  its hue still nearest its own palette colour's
    touching      two to four shapes, at least two of them touching at a corner or along at most 4 px
    combined      two or more of the above at once

Every condition but clean draws on any of the five backgrounds (the prompt's own when it names one, else one
at random) and softens the image with a Gaussian blur of radius 0-0.8, as a small diffusion model's images
are soft. A shade is the colour mixed towards black or white; a rim or patch is part of its object, so an
object's colour is always the palette colour it was drawn from, and touching shapes are still as many
objects as were drawn. That is what a careful person counting by eye would answer.

`hard_render(prompt, rng, condition, wrong)` returns the image and its truth; `sample_hard(...)` draws the
prompt too, half of the time with one stated attribute made wrong, so that a rater that always says "good"
scores 50%. numpy and Pillow only, like the world and the rater.

Usage (PNGs and prompts.jsonl, as `shapes_world.py sample` writes, so `rater.py rate` reads the folder):
    python -m t2i_trainer.build.hard_renders sample --condition rims --count 20 --out /tmp/rims
"""

import argparse
import colorsys
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from t2i_trainer.build.shapes_world import (
    BACKGROUND_COLOURS,
    CATEGORIES,
    EDGE_PX,
    IMAGE_SIZE,
    OBJECT_COLOURS,
    Box,
    Prompt,
    Scene,
    add_sample_flags,
    all_prompts,
    perturbation_kinds,
    place_boxes,
    random_box,
    scene,
    shape_mask,
    spread_boxes,
    wrong_scene,
)

EFFECTS = ("shading", "rims", "highlights", "two-tone", "off-palette", "touching")
CONDITIONS = ("clean", *EFFECTS, "combined")
# Softening of every condition but clean: a Gaussian blur of radius up to this.
MAX_BLUR = 0.8
# Touching shapes share at most this many pixels of contact, so that a person still sees two shapes (two
# squares side by side along a whole edge would be one rectangle).
MAX_CONTACT_PX = 4


# --- Colours ------------------------------------------------------------------------------------------------


def hue(rgb: Sequence[float]) -> float:
    """HSV hue in degrees."""
    return colorsys.rgb_to_hsv(*(channel / 255 for channel in rgb))[0] * 360


def hue_distance(first: float, second: float) -> float:
    difference = abs(first - second) % 360
    return min(difference, 360 - difference)


PALETTE_HUES = {name: hue(rgb) for name, rgb in OBJECT_COLOURS.items()}
# Half the hue distance to the nearest other object colour: a hue within it is nearest its own colour.
HALF_HUE_GAPS = {
    name: min(hue_distance(own, other) for other_name, other in PALETTE_HUES.items() if other_name != name)
    / 2
    for name, own in PALETTE_HUES.items()
}


def nearest_colour(rgb: Sequence[float]) -> str:
    """The object colour whose hue is nearest: how the truth names an off-palette colour."""
    own = hue(rgb)
    return min(PALETTE_HUES, key=lambda name: hue_distance(own, PALETTE_HUES[name]))


def shade(rgb: Sequence[float], amount: float | np.ndarray) -> np.ndarray:
    """`rgb` mixed towards black (amount < 0) or white (amount > 0) by |amount|; per pixel for an array."""
    colour = np.asarray(rgb, dtype=np.float64)
    mix = np.asarray(amount, dtype=np.float64)[..., None]
    return np.where(mix < 0, colour * (1 + mix), colour + mix * (255 - colour))


def shift_hue(rgb: Sequence[float], degrees: float) -> np.ndarray:
    h, s, v = colorsys.rgb_to_hsv(*(channel / 255 for channel in rgb))
    return np.array(colorsys.hsv_to_rgb((h + degrees / 360) % 1.0, s, v)) * 255


def off_palette(name: str, rng: np.random.Generator) -> np.ndarray:
    """A colour a person would still call `name`: its hue within 60% of the way to the hue boundary with the
    nearest other colour, its saturation and value down to 60% and 65%, and at least 50 away from the
    palette colour in RGB."""
    palette = np.array(OBJECT_COLOURS[name], dtype=np.float64)
    h, s, v = colorsys.rgb_to_hsv(*(palette / 255))
    while True:
        degrees = rng.uniform(-0.6, 0.6) * HALF_HUE_GAPS[name]
        saturation = s * rng.uniform(0.6, 1.0)
        value = v * rng.uniform(0.65, 1.0)
        colour = np.array(colorsys.hsv_to_rgb((h + degrees / 360) % 1.0, saturation, value)) * 255
        if np.linalg.norm(colour - palette) >= 50:
            return colour


# --- Masks --------------------------------------------------------------------------------------------------


def erode(mask: np.ndarray, pixels: int) -> np.ndarray:
    """`mask` less every pixel within `pixels` (Chebyshev distance) of a pixel outside it."""
    if pixels <= 0:
        return mask.copy()
    padded = Image.fromarray(np.pad(mask, pixels).astype(np.uint8) * 255)
    eroded = np.asarray(padded.filter(ImageFilter.MinFilter(2 * pixels + 1))) > 0
    return eroded[pixels:-pixels, pixels:-pixels]


def dilate(mask: np.ndarray) -> np.ndarray:
    """`mask` and its 8 neighbours."""
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(3))) > 0


# --- Layout of touching shapes ------------------------------------------------------------------------------

DIRECTIONS = [(dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1) if (dx, dy) != (0, 0)]


def slide_into_contact(
    anchor_shape: str,
    anchor: Box,
    shape: str,
    width: int,
    rng: np.random.Generator,
    size: int,
) -> Box | None:
    """A box for `shape` that touches `anchor_shape` at `anchor` without overlapping it.

    The shape comes in from a random one of the eight directions (diagonals: corner to corner), off-centre by
    a random amount across the direction, one pixel at a time until it is 8-adjacent to the anchor. None when
    it ends outside the image or touches along more than MAX_CONTACT_PX pixels.
    """
    dx, dy = DIRECTIONS[rng.integers(len(DIRECTIONS))]
    left, top, anchor_width = anchor
    # The anchor's pixels and their neighbours, with room around them for the moving box.
    room = width + 2
    near = np.zeros((anchor_width + 2 * room, anchor_width + 2 * room), dtype=bool)
    near[room : room + anchor_width, room : room + anchor_width] = shape_mask(
        anchor_shape, anchor_width, anchor_width
    )
    near = dilate(near)
    mask = shape_mask(shape, width, width)
    across = np.array([-dy, dx]) * rng.uniform(-0.4, 0.4) * min(width, anchor_width)
    start = np.floor((anchor_width - width) / 2 + across + 0.5).astype(int)
    for distance in range(anchor_width + width + 2, 0, -1):
        x, y = start + distance * np.array([dx, dy])
        if not (-room < x < anchor_width + room - width and -room < y < anchor_width + room - width):
            continue  # still too far away to touch
        contact = int((near[room + y : room + y + width, room + x : room + x + width] & mask).sum())
        if contact:
            box = (left + int(x), top + int(y), width)
            inside = all(EDGE_PX <= corner <= size - EDGE_PX - width for corner in box[:2])
            return box if inside and contact <= MAX_CONTACT_PX else None
    return None


def touching_boxes(shapes: Sequence[str], rng: np.random.Generator, size: int) -> list[Box]:
    """Boxes where shapes 1 to `touching` (1 to count-1 of them) each touch a random earlier one and the rest
    keep shapes_world's gaps. One shape cannot touch anything: it gets a plain layout."""
    count = len(shapes)
    if count < 2:
        return spread_boxes(shapes, rng, size)
    touching = int(rng.integers(1, count))

    def propose(index: int, width: int, boxes: list[Box]) -> tuple[Box | None, int | None]:
        if not 1 <= index <= touching:
            return random_box(width, rng, size), None
        partner = int(rng.integers(index))
        return slide_into_contact(shapes[partner], boxes[partner], shapes[index], width, rng, size), partner

    return place_boxes(count, rng, size, propose)


# --- Painting -----------------------------------------------------------------------------------------------


def paint_object(mask: np.ndarray, name: str, effects: Sequence[str], rng: np.random.Generator) -> np.ndarray:
    """RGB per pixel of one object's box (only `mask` is used), with `effects` applied."""
    width = mask.shape[1]
    base = off_palette(name, rng) if "off-palette" in effects else np.array(OBJECT_COLOURS[name], dtype=float)
    ys, xs = np.mgrid[0 : mask.shape[0], 0:width].astype(np.float64)
    fill = np.broadcast_to(base, (*mask.shape, 3)).copy()
    if "shading" in effects:
        angle = rng.uniform(0, 2 * np.pi)
        along = xs * np.cos(angle) + ys * np.sin(angle)
        low, high = along[mask].min(), along[mask].max()
        position = (along - low) / max(high - low, 1.0)
        dark, light = -rng.uniform(0.2, 0.55), rng.uniform(0.0, 0.3)
        # The hue drifts along the gradient too, by up to 15° either way: within the colour's own hue range.
        drift = rng.uniform(-15, 15)
        start, end = shift_hue(base, -drift), shift_hue(base, drift)
        fill = shade(start + (end - start) * position[..., None], dark + (light - dark) * position)
    if "two-tone" in effects:
        angle = rng.uniform(0, 2 * np.pi)
        along = xs * np.cos(angle) + ys * np.sin(angle)
        cut = np.quantile(along[mask], rng.uniform(0.6, 0.8))
        amount = rng.choice([-1, 1]) * rng.uniform(0.25, 0.5)
        fill[mask & (along > cut)] = shade(shift_hue(base, rng.uniform(-12, 12)), amount)
    if "highlights" in effects:
        inner = erode(mask, 2)
        if inner.any():
            rows, columns = np.nonzero(inner)
            middle = rng.integers(len(rows))
            radii = width * rng.uniform(0.12, 0.25, size=2)
            ellipse = ((ys - rows[middle]) / radii[0]) ** 2 + ((xs - columns[middle]) / radii[1]) ** 2 <= 1
            amount = rng.uniform(0.15, 0.55) if rng.random() < 0.7 else -rng.uniform(0.25, 0.5)
            fill[inner & ellipse] = shade(shift_hue(base, rng.uniform(-25, 25)), amount)
    if "rims" in effects:
        rim = mask & ~erode(mask, min(int(rng.integers(1, 4)), max(1, width // 8)))
        amount = -rng.uniform(0.25, 0.6) if rng.random() < 0.5 else rng.uniform(0.15, 0.5)
        fill[rim] = shade(shift_hue(base, rng.uniform(-20, 20)), amount)
    return fill


def paint(
    picture: Scene, effects: Sequence[str], rng: np.random.Generator, size: int = IMAGE_SIZE
) -> Image.Image:
    canvas = np.empty((size, size, 3), dtype=np.float64)
    canvas[:] = BACKGROUND_COLOURS[picture.background]
    for drawn in picture.objects:
        left, top, width = drawn.box
        mask = np.array(shape_mask(drawn.shape, width, width))
        region = canvas[top : top + width, left : left + width]
        region[mask] = paint_object(mask, drawn.colour, effects, rng)[mask]
    image = Image.fromarray(np.clip(np.round(canvas), 0, 255).astype(np.uint8))
    radius = rng.uniform(0.0, MAX_BLUR)
    return image.filter(ImageFilter.GaussianBlur(radius)) if radius >= 0.1 else image


# --- Samples ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HardRender:
    image: Image.Image
    prompt: Prompt
    condition: str
    wrong: str | None  # the stated attribute the image gets wrong, or None when it is a correct image
    truth: Scene  # the objects drawn (shape, palette colour name, box) and the background
    effects: tuple[str, ...]  # what was drawn: the condition's effect, several for "combined"

    @property
    def label(self) -> str:
        return "good" if self.wrong is None else "bad"

    def correct(self, attribute: str) -> bool:
        """Whether the image satisfies the prompt's `attribute` (the prompt must state it)."""
        return attribute != self.wrong


def condition_effects(condition: str, rng: np.random.Generator) -> tuple[str, ...]:
    if condition == "clean":
        return ()
    if condition != "combined":
        return (condition,)
    while True:
        chosen = tuple(effect for effect in EFFECTS if rng.random() < 0.5)
        if len(chosen) >= 2:
            return chosen


def hard_render(
    prompt: Prompt, rng: np.random.Generator, condition: str, wrong: str | None = None, size: int = IMAGE_SIZE
) -> HardRender:
    """An image of `prompt` (or, with `wrong`, one that fails it in that attribute) drawn in `condition`."""
    if condition not in CONDITIONS:
        raise ValueError(f"condition must be one of {CONDITIONS}. Given: {condition!r}")
    effects = condition_effects(condition, rng)
    layout = touching_boxes if "touching" in effects else spread_boxes
    truth = (
        scene(prompt, rng, size, layout) if wrong is None else wrong_scene(prompt, rng, wrong, size, layout)
    )
    if condition == "clean":
        return HardRender(truth.draw(size), prompt, condition, wrong, truth, effects)
    if prompt.background is None:
        # Any background satisfies the prompt (only a prompt that names one can get it wrong): draw on each of
        # them, not only on the default white.
        names = list(BACKGROUND_COLOURS)
        truth = Scene(truth.objects, names[rng.integers(len(names))])
    return HardRender(paint(truth, effects, rng, size), prompt, condition, wrong, truth, effects)


PROMPTS_BY_CATEGORY = {
    category: [p for p in all_prompts() if p.category == category] for category in CATEGORIES
}


def sample_hard(condition: str, rng: np.random.Generator, wrong_share: float = 0.5) -> HardRender:
    """A category uniformly (so the 36 colour prompts weigh as much as the 720 combinations), a prompt of it,
    and with probability `wrong_share` one of its stated attributes, uniformly, made wrong. Touching needs two
    shapes, so that condition draws only prompts, and wrong counts, of two or more."""
    while True:
        pool = PROMPTS_BY_CATEGORY[CATEGORIES[rng.integers(len(CATEGORIES))]]
        prompt = pool[rng.integers(len(pool))]
        if condition == "touching" and prompt.count == 1:
            continue
        wrong = None
        if rng.random() < wrong_share:
            kinds = perturbation_kinds(prompt)
            wrong = kinds[rng.integers(len(kinds))]
        render = hard_render(prompt, rng, condition, wrong)
        if condition != "touching" or len(render.truth.objects) >= 2:
            return render


# --- CLI ----------------------------------------------------------------------------------------------------


def write_samples(out: Path, condition: str, count: int, seed: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "prompts.jsonl", "w", encoding="utf-8") as lines:
        for index in range(count):
            render = sample_hard(condition, np.random.default_rng([seed, index]))
            name = f"{index:05d}.png"
            render.image.save(out / name)
            objects = [[drawn.shape, drawn.colour, list(drawn.box)] for drawn in render.truth.objects]
            record = {
                "image": name,
                "prompt": render.prompt.text,
                "condition": condition,
                "effects": list(render.effects),
                "wrong": render.wrong,
                "label": render.label,
                "background": render.truth.background,
                "objects": objects,
            }
            lines.write(json.dumps(record) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    sample = commands.add_parser("sample", help="hard renders as PNGs plus prompts.jsonl with their truth")
    add_sample_flags(sample)
    sample.add_argument("--condition", choices=CONDITIONS, required=True)
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error(f"--count must be at least 1. Given: {args.count}")
    write_samples(args.out, args.condition, args.count, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
