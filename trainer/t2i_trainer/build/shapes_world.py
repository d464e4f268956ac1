"""The shapes world: a small, fully known stand-in for the paper's prompt set (issue #3).

Lee et al. 2023 build prompts from templates over objects, colours, counts and backgrounds, and ask people
whether an image matches. Here the objects are flat shapes on a plain background, drawn by a program, so that
a program (rater.py) can play the people: every prompt has an exact ground truth to draw and to check.

- Grammar: four categories, as in the paper. `Prompt` holds the attributes, `Prompt.text` writes the sentence
  and `parse_prompt` reads it back.
    colour        "a green triangle"
    count         "three circles"
    background    "a square on a yellow background"
    combination   "two blue stars on a white background"
- Split: some (shape, colour) and (shape, count) pairs never occur in training text, like the paper's held-out
  objects. `train_prompts()` and `heldout_prompts()` list the two sides.
- Negatives: `perturb` changes exactly one attribute, for the reward model's prompt-classification loss.
- Pretraining captions: `noisy_caption` gets the count wrong or leaves it out, as web captions do.
- Images: `render` draws a correct 64x64 image, `render_wrong` one with a chosen attribute wrong.

numpy and Pillow only, so it runs in the service's light `.venv`. Every random choice takes a numpy Generator:
the same seed gives the same prompts, captions and pixels.
"""

import argparse
import dataclasses
import functools
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# --- Vocabulary ---------------------------------------------------------------------------------------------

# Upright, filled shapes whose silhouettes differ enough for the rater to tell them apart at 14 px, blurred:
# drawn into the same box, no two overlap by more than 0.84 IoU (a square and its inscribed circle). Shapes
# like ellipses or hearts would blur into circles.
SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "diamond": "diamonds",
           "star": "stars", "cross": "crosses"}  # fmt: skip

# Saturated object colours, and pale or neutral background colours. The two sets share no colour and any two
# of the eleven are at least 100 apart in RGB (test_palette_is_well_separated), so the rater's segmentation
# is exact on renders and survives blur and a diffusion model's colour drift.
OBJECT_COLOURS = {
    "red": (220, 30, 30),
    "orange": (255, 140, 0),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "purple": (140, 40, 190),
    "cyan": (0, 200, 220),
}
BACKGROUND_COLOURS = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
    "yellow": (250, 225, 60),
    "pink": (255, 170, 200),
}
# A prompt that names no background is drawn on white. Any background satisfies it.
DEFAULT_BACKGROUND = "white"
# A prompt that names no colour gets each object's colour uniformly from OBJECT_COLOURS, independently per
# object. Any object colour satisfies it.

COUNTS = (1, 2, 3, 4)
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}

CATEGORIES = ("colour", "count", "background", "combination")

# Held out of every training prompt, caption and negative. Each shape loses one colour and one count, and each
# colour and each count (2-4) is held out with some shape, so every word still occurs in training: a held-out
# prompt tests new combinations of known words, not new words. Count 1 is never held out, because colour and
# background prompts all have one object.
HELDOUT_SHAPE_COLOURS = frozenset(
    {
        ("circle", "green"),
        ("square", "purple"),
        ("triangle", "blue"),
        ("diamond", "red"),
        ("star", "cyan"),
        ("cross", "orange"),
    }
)
HELDOUT_SHAPE_COUNTS = frozenset(
    {
        ("circle", 3),
        ("square", 4),
        ("triangle", 2),
        ("diamond", 3),
        ("star", 4),
        ("cross", 2),
    }
)

# --- Prompts ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prompt:
    """A prompt's attributes. None means the prompt does not say, so any value is correct.

    `count` is None only in noisy captions ("blue stars"): the world's own prompts always fix the count,
    since "a green triangle" means one.
    """

    shape: str
    colour: str | None = None
    count: int | None = 1
    background: str | None = None

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"shape must be one of {SHAPES}. Given: {self.shape!r}")
        if self.colour is not None and self.colour not in OBJECT_COLOURS:
            raise ValueError(f"colour must be one of {tuple(OBJECT_COLOURS)} or None. Given: {self.colour!r}")
        if self.count is not None and self.count not in COUNTS:
            raise ValueError(f"count must be one of {COUNTS} or None. Given: {self.count!r}")
        if self.background is not None and self.background not in BACKGROUND_COLOURS:
            raise ValueError(
                f"background must be one of {tuple(BACKGROUND_COLOURS)} or None. Given: {self.background!r}"
            )

    @property
    def category(self) -> str:
        # Derived rather than stored, so a prompt changed with dataclasses.replace can never disagree with it.
        if self.colour is not None and self.background is not None:
            return "combination"
        if self.colour is not None:
            return "colour"
        if self.background is not None:
            return "background"
        return "count"

    @property
    def text(self) -> str:
        noun = self.shape if self.count == 1 else PLURALS[self.shape]
        words = [self.colour, noun] if self.colour else [noun]
        if self.count == 1 and self.category != "count":
            words.insert(0, "an" if words[0][0] in "aeiou" else "a")
        elif self.count is not None:
            # A count prompt says "one circle": the number is what it tests.
            words.insert(0, NUMBER_WORDS[self.count])
        if self.background is not None:
            words.append(f"on a {self.background} background")
        return " ".join(words)

    def to_json(self) -> dict:
        return dataclasses.asdict(self) | {"category": self.category, "text": self.text}


WORD_COUNTS = {"a": 1, "an": 1} | {word: count for count, word in NUMBER_WORDS.items()}
SHAPE_WORDS = {shape: shape for shape in SHAPES} | {plural: shape for shape, plural in PLURALS.items()}


def parse_prompt(text: str) -> Prompt:
    """Read a prompt or caption of this world's grammar back into its attributes."""
    words = text.strip().lower().rstrip(".").split()
    background = None
    if len(words) >= 4 and words[-4:-2] == ["on", "a"] and words[-1] == "background":
        background = words[-2]
        words = words[:-4]
    count = None
    if words and words[0] in WORD_COUNTS:
        count = WORD_COUNTS[words.pop(0)]
    colour = words.pop(0) if len(words) == 2 else None
    if len(words) != 1 or words[0] not in SHAPE_WORDS:
        raise ValueError(f"not a prompt of the shapes world: {text!r}")
    return Prompt(shape=SHAPE_WORDS[words[0]], colour=colour, count=count, background=background)


def is_heldout(prompt: Prompt) -> bool:
    colour_pair, count_pair = (prompt.shape, prompt.colour), (prompt.shape, prompt.count)
    return colour_pair in HELDOUT_SHAPE_COLOURS or count_pair in HELDOUT_SHAPE_COUNTS


def all_prompts() -> list[Prompt]:
    """Every prompt of the four templates, in a fixed order: 36 + 24 + 30 + 720 = 810."""
    colour = [Prompt(s, colour=c) for s in SHAPES for c in OBJECT_COLOURS]
    count = [Prompt(s, count=n) for s in SHAPES for n in COUNTS]
    background = [Prompt(s, background=b) for s in SHAPES for b in BACKGROUND_COLOURS]
    combination = [
        Prompt(s, colour=c, count=n, background=b)
        for s in SHAPES
        for c in OBJECT_COLOURS
        for n in COUNTS
        for b in BACKGROUND_COLOURS
    ]
    return colour + count + background + combination


def train_prompts() -> list[Prompt]:
    return [prompt for prompt in all_prompts() if not is_heldout(prompt)]


def heldout_prompts() -> list[Prompt]:
    return [prompt for prompt in all_prompts() if is_heldout(prompt)]


# --- Negatives and noisy captions ---------------------------------------------------------------------------

PERTURBATION_KINDS = ("colour", "count", "shape", "background")
ATTRIBUTE_VALUES = {
    "colour": tuple(OBJECT_COLOURS),
    "count": COUNTS,
    "shape": SHAPES,
    "background": tuple(BACKGROUND_COLOURS),
}


def eval_prompts(prompts: list[Prompt], per_category: int, rng: np.random.Generator) -> list[Prompt]:
    """Up to `per_category` prompts of each category, chosen at random, in a fixed order."""
    chosen = []
    for category in CATEGORIES:
        pool = [prompt for prompt in prompts if prompt.category == category]
        picks = rng.choice(len(pool), size=min(per_category, len(pool)), replace=False) if pool else []
        chosen.extend(pool[index] for index in sorted(picks))
    return chosen


def perturbation_kinds(prompt: Prompt) -> list[str]:
    """The attributes a prompt states. Changing one it leaves open would not make the prompt wrong."""
    return [kind for kind in PERTURBATION_KINDS if getattr(prompt, kind) is not None]


def alternatives(prompt: Prompt, kind: str) -> list[Prompt]:
    """Every prompt that differs from `prompt` in `kind` alone.

    A training prompt's alternatives are training prompts too, so held-out pairs never reach training text
    through negatives or captions.
    """
    if kind not in perturbation_kinds(prompt):
        raise ValueError(f"{prompt.text!r} does not state a {kind}, so it cannot be made wrong in it")
    changed = [
        dataclasses.replace(prompt, **{kind: value})
        for value in ATTRIBUTE_VALUES[kind]
        if value != getattr(prompt, kind)
    ]
    if not is_heldout(prompt):
        changed = [candidate for candidate in changed if not is_heldout(candidate)]
    return changed


def perturb(prompt: Prompt, rng: np.random.Generator, kind: str) -> Prompt:
    """A prompt that is wrong for every correct image of `prompt`: one attribute changed."""
    candidates = alternatives(prompt, kind)
    return candidates[rng.integers(len(candidates))]


def negative_prompts(prompt: Prompt, rng: np.random.Generator, negatives: int) -> list[Prompt]:
    """`negatives` distinct one-attribute perturbations, spread over the kinds the prompt states."""
    pool = [candidate for kind in perturbation_kinds(prompt) for candidate in alternatives(prompt, kind)]
    if negatives > len(pool):
        raise ValueError(f"{prompt.text!r} has {len(pool)} one-attribute perturbations. Asked: {negatives}")
    return [pool[index] for index in rng.choice(len(pool), size=negatives, replace=False)]


def noisy_caption(prompt: Prompt, rng: np.random.Generator, count_noise: float = 0.5) -> str:
    """A web-style caption: with probability `count_noise` the count is wrong or missing (equally likely).

    Colour, shape and background stay right. Count is what web captions state least reliably, and the
    paper's weakest category (34.4% of images good), so pretraining on these captions should leave the base
    model bad at counting, as Stable Diffusion is, and leave the feedback something to fix.
    """
    if prompt.count is None or rng.random() >= count_noise:
        return prompt.text
    if rng.random() < 0.5:
        return dataclasses.replace(prompt, count=None).text
    return perturb(prompt, rng, "count").text


# --- Rendering ----------------------------------------------------------------------------------------------

IMAGE_SIZE = 64
# Shapes get a square box at least this wide: smaller stars and crosses lose their arms to a blur.
MIN_SHAPE_PX = 14
# The largest box for each count, so four shapes still fit with room to move.
MAX_SHAPE_PX = {1: 36, 2: 28, 3: 22, 4: 20}
# Free pixels between any two boxes, and between a box and the image edge: blurred shapes of one colour stay
# separate components, and the image border shows only background.
GAP_PX = 4
EDGE_PX = 2
CROSS_ARM = 1 / 3  # arm width over box width
STAR_INNER = 0.5  # inner radius over outer radius


@dataclass(frozen=True)
class DrawnObject:
    shape: str
    colour: str
    box: tuple[int, int, int]  # left, top, width (boxes are square)


def unit_outline(shape: str) -> list[tuple[float, float]]:
    """Vertices of a polygonal shape in the unit square; circles are drawn as ellipses instead."""
    if shape == "square":
        return [(0, 0), (1, 0), (1, 1), (0, 1)]
    if shape == "triangle":
        return [(0.5, 0), (1, 1), (0, 1)]
    if shape == "diamond":
        return [(0.5, 0), (1, 0.5), (0.5, 1), (0, 0.5)]
    if shape == "cross":
        low, high = 0.5 - CROSS_ARM / 2, 0.5 + CROSS_ARM / 2
        return [(low, 0), (high, 0), (high, low), (1, low), (1, high), (high, high),
                (high, 1), (low, 1), (low, high), (0, high), (0, low), (low, low)]  # fmt: skip
    if shape == "star":
        angles = -np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, 1.0, STAR_INNER)
        points = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
        # Stretch the star's own box (1.90 wide, 1.81 high) onto the unit square.
        points = (points - points.min(axis=0)) / (points.max(axis=0) - points.min(axis=0))
        return [(float(x), float(y)) for x, y in points]
    raise ValueError(f"{shape!r} is not a polygon shape")


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill) -> None:
    """Fill `shape` so that it touches all four sides of `box` (left, top, width, height) and stays inside."""
    left, top, width, height = box
    if shape == "circle":
        draw.ellipse([left, top, left + width - 1, top + height - 1], fill=fill)
        return
    # PIL fills the pixels whose centres the polygon covers, edges included, so the outline spans the
    # centres of the box's first and last pixels.
    outline = [(left + x * (width - 1), top + y * (height - 1)) for x, y in unit_outline(shape)]
    draw.polygon(outline, fill=fill)


@functools.lru_cache(maxsize=4096)
def shape_mask(shape: str, width: int, height: int) -> np.ndarray:
    """The pixels `render` would fill for `shape` in a width x height box: the rater's templates.

    Cached, since the rater asks for the same few sizes over and over; the array is read-only for that reason.
    """
    image = Image.new("1", (width, height), 0)
    draw_shape(ImageDraw.Draw(image), shape, (0, 0, width, height), 1)
    mask = np.array(image, dtype=bool)
    mask.flags.writeable = False
    return mask


def draw_objects(objects: Sequence[DrawnObject], background: str, size: int = IMAGE_SIZE) -> Image.Image:
    # ImageDraw fills without antialiasing, so every pixel is exactly a palette colour.
    image = Image.new("RGB", (size, size), BACKGROUND_COLOURS[background])
    draw = ImageDraw.Draw(image)
    for drawn in objects:
        left, top, width = drawn.box
        draw_shape(draw, drawn.shape, (left, top, width, width), OBJECT_COLOURS[drawn.colour])
    return image


Box = tuple[int, int, int]  # left, top, width (boxes are square)
# Proposes a box of `width` for shape `index`, given the boxes placed so far: (box or None when it found
# none, the index of the one placed box it may touch or None).
Proposal = Callable[[int, int, list[Box]], tuple[Box | None, int | None]]


def place_boxes(count: int, rng: np.random.Generator, size: int, propose: Proposal) -> list[Box]:
    """Boxes of random widths, one per shape, from `propose`, by rejection sampling: each keeps GAP_PX from
    every other box but the one it may touch."""
    largest = min(MAX_SHAPE_PX[count], size - 2 * EDGE_PX)
    for _ in range(1000):
        boxes: list[Box] = []
        for index in range(count):
            for _ in range(100):
                width = int(rng.integers(MIN_SHAPE_PX, largest + 1))
                box, partner = propose(index, width, boxes)
                others = [other for number, other in enumerate(boxes) if number != partner]
                if box is not None and all(boxes_apart(box, other) for other in others):
                    boxes.append(box)
                    break
            else:
                break  # this object did not fit: start the layout again
        if len(boxes) == count:
            return boxes
    raise RuntimeError(f"could not place {count} shapes in a {size}x{size} image")


def random_box(width: int, rng: np.random.Generator, size: int) -> Box:
    """A box of `width` anywhere EDGE_PX from the edges."""
    left, top = rng.integers(EDGE_PX, size - EDGE_PX - width + 1, size=2)
    return (int(left), int(top), width)


def layout_boxes(count: int, rng: np.random.Generator, size: int = IMAGE_SIZE) -> list[Box]:
    """Random square boxes that keep GAP_PX apart and EDGE_PX from the edges, by rejection sampling."""
    return place_boxes(count, rng, size, lambda index, width, boxes: (random_box(width, rng, size), None))


def boxes_apart(first: tuple[int, int, int], second: tuple[int, int, int]) -> bool:
    (x1, y1, w1), (x2, y2, w2) = first, second
    side_by_side = x1 + w1 + GAP_PX <= x2 or x2 + w2 + GAP_PX <= x1
    one_above_other = y1 + w1 + GAP_PX <= y2 or y2 + w2 + GAP_PX <= y1
    return side_by_side or one_above_other


def object_colours(prompt: Prompt, count: int, rng: np.random.Generator) -> list[str]:
    if prompt.colour is not None:
        return [prompt.colour] * count
    names = list(OBJECT_COLOURS)
    return [names[index] for index in rng.integers(len(names), size=count)]


# Places boxes for shapes: (shapes, rng, size) -> one (left, top, width) per shape. `spread_boxes` keeps them
# apart; the hard renders (hard_renders.py) also lay shapes out touching.
Layout = Callable[[Sequence[str], np.random.Generator, int], list[tuple[int, int, int]]]


def spread_boxes(shapes: Sequence[str], rng: np.random.Generator, size: int) -> list[tuple[int, int, int]]:
    return layout_boxes(len(shapes), rng, size)


@dataclass(frozen=True)
class Scene:
    """What an image shows, before it is drawn: the ground truth of a render."""

    objects: tuple[DrawnObject, ...]
    background: str

    def draw(self, size: int = IMAGE_SIZE) -> Image.Image:
        return draw_objects(self.objects, self.background, size)


def scene(
    prompt: Prompt, rng: np.random.Generator, size: int = IMAGE_SIZE, layout: Layout = spread_boxes
) -> Scene:
    """A correct scene for `prompt`. A caption with no count gets a random count."""
    count = prompt.count if prompt.count is not None else int(rng.choice(COUNTS))
    colours = object_colours(prompt, count, rng)
    shapes = [prompt.shape] * count
    boxes = layout(shapes, rng, size)
    objects = tuple(DrawnObject(*fields) for fields in zip(shapes, colours, boxes, strict=True))
    return Scene(objects, prompt.background or DEFAULT_BACKGROUND)


def wrong_scene(
    prompt: Prompt, rng: np.random.Generator, kind: str, size: int = IMAGE_SIZE, layout: Layout = spread_boxes
) -> Scene:
    """A scene that fails `prompt` in `kind` and matches it otherwise.

    Wrong colour or shape changes a random non-empty subset of the objects, the way a model gets one of three
    stars wrong; wrong count and background change the whole image.
    """
    if kind not in perturbation_kinds(prompt):
        raise ValueError(f"{prompt.text!r} does not state a {kind}, so no image can get it wrong")
    if kind in ("count", "background"):
        return scene(perturb(prompt, rng, kind), rng, size, layout)
    count = prompt.count
    colours = object_colours(prompt, count, rng)
    shapes = [prompt.shape] * count
    changed = rng.choice(count, size=int(rng.integers(1, count + 1)), replace=False)
    for index in changed:
        if kind == "colour":
            colours[index] = str(rng.choice([c for c in OBJECT_COLOURS if c != prompt.colour]))
        else:
            shapes[index] = str(rng.choice([s for s in SHAPES if s != prompt.shape]))
    boxes = layout(shapes, rng, size)
    objects = tuple(DrawnObject(*fields) for fields in zip(shapes, colours, boxes, strict=True))
    return Scene(objects, prompt.background or DEFAULT_BACKGROUND)


def render(prompt: Prompt, rng: np.random.Generator, size: int = IMAGE_SIZE) -> Image.Image:
    """A correct image of `prompt`. A caption with no count is drawn with a random count."""
    return scene(prompt, rng, size).draw(size)


def render_wrong(prompt: Prompt, rng: np.random.Generator, kind: str, size: int = IMAGE_SIZE) -> Image.Image:
    """An image that fails `prompt` in `kind` and matches it otherwise (see `wrong_scene`)."""
    return wrong_scene(prompt, rng, kind, size).draw(size)


# --- CLI ----------------------------------------------------------------------------------------------------

SPLITS = {"train": train_prompts, "heldout": heldout_prompts, "all": all_prompts}


def pretrain_renders(
    images: int, seed: int, count_noise: float = 0.5
) -> list[tuple[Prompt, Image.Image, str]]:
    """The pre-training data of a fine-tune job's `shapes_world` term: for each of `images`, a training prompt
    drawn at random, its render and its noisy caption, as (prompt, render, caption)."""
    prompts = train_prompts()
    rng = np.random.default_rng(seed)
    drawn = []
    for _ in range(images):
        prompt = prompts[rng.integers(len(prompts))]
        image = render(prompt, rng)
        drawn.append((prompt, image, noisy_caption(prompt, rng, count_noise)))
    return drawn


def sample_rng(seed: int, index: int) -> np.random.Generator:
    # One generator per sample: sample i is the same whatever --count is.
    return np.random.default_rng([seed, index])


def choose_prompts(split: str, count: int | None, per_category: int | None, seed: int) -> list[Prompt]:
    """A split's prompts: all of them, `count` distinct ones at random, or `per_category` of each category."""
    prompts = SPLITS[split]()
    rng = np.random.default_rng(seed)
    if per_category is not None:
        return eval_prompts(prompts, per_category, rng)
    if count is not None:
        picks = rng.choice(len(prompts), size=min(count, len(prompts)), replace=False)
        return [prompts[index] for index in sorted(picks)]
    return prompts


def write_samples(out: Path, count: int, seed: int, split: str, wrong: str | None) -> None:
    prompts = SPLITS[split]()
    if wrong is not None:
        prompts = [prompt for prompt in prompts if wrong in perturbation_kinds(prompt)]
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "prompts.jsonl", "w", encoding="utf-8") as lines:
        for index in range(count):
            rng = sample_rng(seed, index)
            prompt = prompts[rng.integers(len(prompts))]
            image = render(prompt, rng) if wrong is None else render_wrong(prompt, rng, wrong)
            name = f"{index:05d}.png"
            image.save(out / name)
            record = {"image": name, "prompt": prompt.text, "category": prompt.category, "wrong": wrong}
            lines.write(json.dumps(record) + "\n")


def add_sample_flags(sample: argparse.ArgumentParser) -> None:
    """--out, --count and --seed of a `sample` command (hard_renders.py's too)."""
    sample.add_argument("--out", type=Path, required=True, help="folder for NNNNN.png and prompts.jsonl")
    sample.add_argument("--count", type=int, default=10, help="number of images (default: 10)")
    sample.add_argument("--seed", type=int, default=0, help="image i depends only on (seed, i) (default: 0)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    sample = commands.add_parser("sample", help="render prompt/image pairs as PNGs plus prompts.jsonl")
    add_sample_flags(sample)
    sample.add_argument("--split", choices=tuple(SPLITS), default="train", help="prompt set (default: train)")
    sample.add_argument(
        "--wrong",
        choices=PERTURBATION_KINDS,
        help="draw images that get this attribute wrong, for testing a rater (default: correct images)",
    )
    listing = commands.add_parser("prompts", help="print the prompts of a split, one per line")
    listing.add_argument("--split", choices=tuple(SPLITS), default="train", help="(default: train)")
    listing.add_argument("--json", action="store_true", help="print JSON lines with the attributes")
    listing.add_argument("--count", type=int, help="only this many distinct prompts, drawn at random")
    listing.add_argument(
        "--per-category", type=int, help="only this many of each category, drawn at random (eval_prompts)"
    )
    listing.add_argument("--seed", type=int, default=0, help="seed of the draw (default: 0)")
    args = parser.parse_args(argv)
    if args.command == "prompts":
        for name in ("count", "per_category"):
            if getattr(args, name) is not None and getattr(args, name) < 1:
                parser.error(f"--{name.replace('_', '-')} must be at least 1. Given: {getattr(args, name)}")
        if args.count is not None and args.per_category is not None:
            parser.error("--count and --per-category cannot be used together")

    if args.command == "sample":
        write_samples(args.out, args.count, args.seed, args.split, args.wrong)
    else:
        for prompt in choose_prompts(args.split, args.count, args.per_category, args.seed):
            sys.stdout.write((json.dumps(prompt.to_json()) if args.json else prompt.text) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
