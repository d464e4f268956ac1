"""The hard renders' ground truth: what each condition draws, and that its truth says what the image shows."""

import json
from collections import Counter

import numpy as np
import pytest

from t2i_trainer.build.hard_renders import (
    CONDITIONS,
    HALF_HUE_GAPS,
    MAX_CONTACT_PX,
    PALETTE_HUES,
    dilate,
    erode,
    hard_render,
    hue,
    hue_distance,
    main,
    nearest_colour,
    off_palette,
    paint_object,
    sample_hard,
    shade,
    touching_boxes,
)
from t2i_trainer.build.shapes_world import (
    BACKGROUND_COLOURS,
    IMAGE_SIZE,
    OBJECT_COLOURS,
    SHAPES,
    Prompt,
    boxes_apart,
    shape_mask,
)


def full_mask(shape: str, box: tuple[int, int, int]) -> np.ndarray:
    left, top, width = box
    mask = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
    mask[top : top + width, left : left + width] = shape_mask(shape, width, width)
    return mask


def test_the_same_seed_draws_the_same_render():
    for condition in CONDITIONS:
        first = sample_hard(condition, np.random.default_rng([3, 1]))
        again = sample_hard(condition, np.random.default_rng([3, 1]))
        assert first.image.tobytes() == again.image.tobytes() and first.truth == again.truth


@pytest.mark.parametrize("condition", CONDITIONS)
def test_the_truth_matches_the_prompt_except_in_the_wrong_attribute(condition):
    kinds = Counter()
    for index in range(60):
        render = sample_hard(condition, np.random.default_rng([4, index]))
        prompt, truth = render.prompt, render.truth
        assert render.image.size == (IMAGE_SIZE, IMAGE_SIZE)
        kinds[render.wrong] += 1
        shapes = [drawn.shape for drawn in truth.objects]
        colours = [drawn.colour for drawn in truth.objects]
        assert (len(truth.objects) == prompt.count) == (render.wrong != "count")
        assert all(shape == prompt.shape for shape in shapes) == (render.wrong != "shape")
        if prompt.colour is not None:
            assert all(colour == prompt.colour for colour in colours) == (render.wrong != "colour")
        if prompt.background is not None:
            assert (truth.background == prompt.background) == (render.wrong != "background")
        assert render.label == ("good" if render.wrong is None else "bad")
        if condition == "touching":
            assert len(truth.objects) >= 2
    # About half of the renders are wrong in one attribute.
    assert 15 <= kinds[None] <= 45


@pytest.mark.parametrize("condition", CONDITIONS[1:])
def test_every_condition_draws_on_every_background(condition):
    backgrounds = Counter(
        sample_hard(condition, np.random.default_rng([5, i])).truth.background for i in range(150)
    )
    assert set(backgrounds) == set(BACKGROUND_COLOURS)
    assert min(backgrounds.values()) >= 15


def test_clean_is_the_worlds_own_render():
    render = hard_render(Prompt("star", "red", 2, "black"), np.random.default_rng(0), "clean")
    pixels = np.asarray(render.image).reshape(-1, 3)
    assert {tuple(colour) for colour in pixels} == {BACKGROUND_COLOURS["black"], OBJECT_COLOURS["red"]}


def test_touching_shapes_touch_without_overlapping():
    rng = np.random.default_rng(6)
    for index in range(120):
        shapes = [SHAPES[index % len(SHAPES)], SHAPES[(index // len(SHAPES)) % len(SHAPES)]] * (1 + index % 2)
        boxes = touching_boxes(shapes, rng, IMAGE_SIZE)
        masks = [full_mask(shape, box) for shape, box in zip(shapes, boxes, strict=True)]
        touching_pairs = 0
        for first in range(len(masks)):
            for second in range(first + 1, len(masks)):
                assert not (masks[first] & masks[second]).any()
                contact = int((dilate(masks[first]) & masks[second]).sum())
                assert contact <= MAX_CONTACT_PX
                touching_pairs += contact > 0
                # Shapes that do not touch keep the world's gap.
                assert contact or boxes_apart(boxes[first], boxes[second])
        assert touching_pairs >= 1
        for left, top, width in boxes:
            assert 2 <= left <= IMAGE_SIZE - 2 - width and 2 <= top <= IMAGE_SIZE - 2 - width


def test_off_palette_colours_keep_their_name_and_leave_the_palette():
    rng = np.random.default_rng(7)
    for name, palette in OBJECT_COLOURS.items():
        for _ in range(100):
            colour = off_palette(name, rng)
            assert nearest_colour(colour) == name
            assert hue_distance(hue(colour), PALETTE_HUES[name]) <= 0.6 * HALF_HUE_GAPS[name] + 1e-6
            assert np.linalg.norm(colour - np.array(palette)) >= 50


def test_shades_go_towards_black_and_white():
    assert shade((200, 100, 0), -0.5).tolist() == [100, 50, 0]
    assert shade((200, 100, 0), 0.5).tolist() == [227.5, 177.5, 127.5]
    assert shade((200, 100, 0), 0.0).tolist() == [200, 100, 0]


def test_erode_and_dilate():
    mask = np.zeros((9, 9), dtype=bool)
    mask[2:7, 2:7] = True
    assert erode(mask, 1).sum() == 9 and erode(mask, 2).sum() == 1 and not erode(mask, 3).any()
    assert dilate(mask).sum() == 49


def painted(effect: str, seed: int, shape: str = "square", width: int = 30) -> tuple[np.ndarray, np.ndarray]:
    mask = np.array(shape_mask(shape, width, width))
    return mask, paint_object(mask, "blue", (effect,), np.random.default_rng(seed))


def test_shading_darkens_and_lightens_within_the_colours_own_hues():
    for seed in range(10):
        mask, fill = painted("shading", seed, shape="circle")
        pixels = fill[mask]
        assert all(hue_distance(hue(pixel), PALETTE_HUES["blue"]) <= 15.5 for pixel in pixels)
        brightness = pixels.max(axis=-1)
        assert (
            brightness.min() < 0.8 * max(OBJECT_COLOURS["blue"]) and brightness.max() > brightness.min() + 30
        )


def test_a_rim_is_a_band_at_the_edge_in_another_shade():
    for seed in range(10):
        mask, fill = painted("rims", seed)
        base = np.array(OBJECT_COLOURS["blue"], dtype=float)
        changed = mask & (np.abs(fill - base).sum(axis=-1) > 1)
        assert changed.any() and not (changed & erode(mask, 3)).any()
        assert (changed == (mask & ~erode(mask, int(changed[15, :15].sum())))).all()


def test_a_highlight_is_inside_the_shape():
    for seed in range(10):
        mask, fill = painted("highlights", seed, shape="circle")
        changed = mask & (np.abs(fill - np.array(OBJECT_COLOURS["blue"])).sum(axis=-1) > 1)
        assert changed.any() and (changed <= erode(mask, 2)).all()


def test_two_tone_paints_a_fifth_to_two_fifths_in_the_second_tone():
    for seed in range(10):
        mask, fill = painted("two-tone", seed, shape="circle")
        changed = mask & (np.abs(fill - np.array(OBJECT_COLOURS["blue"])).sum(axis=-1) > 1)
        assert 0.18 <= changed.sum() / mask.sum() <= 0.42


def test_cli_writes_renders_with_their_truth(tmp_path):
    assert (
        main(["sample", "--condition", "touching", "--count", "4", "--seed", "1", "--out", str(tmp_path)])
        == 0
    )
    records = [json.loads(line) for line in (tmp_path / "prompts.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all((tmp_path / record["image"]).is_file() for record in records)
    assert all(record["condition"] == "touching" and len(record["objects"]) >= 2 for record in records)
