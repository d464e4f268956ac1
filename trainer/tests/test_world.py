"""The shapes world: grammar, held-out split, negatives, noisy captions and renderer (numpy + Pillow only)."""

import dataclasses
import itertools
import json

import numpy as np
import pytest

from t2i_trainer.build.rater import components
from t2i_trainer.build.shapes_world import (
    BACKGROUND_COLOURS,
    CATEGORIES,
    COUNTS,
    EDGE_PX,
    HELDOUT_SHAPE_COLOURS,
    HELDOUT_SHAPE_COUNTS,
    IMAGE_SIZE,
    MIN_SHAPE_PX,
    OBJECT_COLOURS,
    PERTURBATION_KINDS,
    SHAPES,
    Prompt,
    all_prompts,
    boxes_apart,
    heldout_prompts,
    is_heldout,
    layout_boxes,
    main,
    negative_prompts,
    noisy_caption,
    parse_prompt,
    perturb,
    perturbation_kinds,
    render,
    render_wrong,
    train_prompts,
)

ATTRIBUTES = ("shape", "colour", "count", "background")


def changed_attributes(first: Prompt, second: Prompt) -> list[str]:
    return [name for name in ATTRIBUTES if getattr(first, name) != getattr(second, name)]


# --- Grammar -----------------------------------------------------------------------------------------------


def test_vocabulary_has_the_sizes_issue_3_asks_for():
    assert len(SHAPES) >= 5
    assert len(OBJECT_COLOURS) >= 6
    assert COUNTS == (1, 2, 3, 4)
    assert len(BACKGROUND_COLOURS) >= 5


def test_palette_is_well_separated():
    # The rater segments by colour: object and background colours must never be confused, even blurred.
    assert not set(OBJECT_COLOURS) & set(BACKGROUND_COLOURS)
    colours = list(OBJECT_COLOURS.values()) + list(BACKGROUND_COLOURS.values())
    closest = min(np.linalg.norm(np.subtract(a, b)) for a, b in itertools.combinations(colours, 2))
    assert closest >= 100, f"two palette colours are only {closest:.0f} apart"


@pytest.mark.parametrize(
    ("prompt", "text", "category"),
    [
        (Prompt("triangle", colour="green"), "a green triangle", "colour"),
        (Prompt("cross", colour="orange"), "an orange cross", "colour"),
        (Prompt("circle", count=3), "three circles", "count"),
        (Prompt("circle", count=1), "one circle", "count"),
        (Prompt("square", background="yellow"), "a square on a yellow background", "background"),
        (Prompt("star", "blue", 2, "white"), "two blue stars on a white background", "combination"),
        (Prompt("diamond", "red", 1, "pink"), "a red diamond on a pink background", "combination"),
        (Prompt("star", "blue", None, "white"), "blue stars on a white background", "combination"),
    ],
)
def test_prompt_text_follows_the_paper_templates(prompt, text, category):
    assert prompt.text == text
    assert prompt.category == category
    assert parse_prompt(text) == prompt


def test_all_prompts_cover_the_four_categories():
    prompts = all_prompts()
    assert {prompt.category for prompt in prompts} == set(CATEGORIES)
    assert len(prompts) == len(set(prompts)) == len({prompt.text for prompt in prompts})
    assert all(prompt.count is not None for prompt in prompts)


def test_every_prompt_and_caption_reads_back_to_itself():
    prompts = all_prompts()
    prompts += [dataclasses.replace(prompt, count=None) for prompt in prompts]
    for prompt in prompts:
        parsed = parse_prompt(prompt.text)
        assert parsed == prompt, prompt.text
        assert parsed.text == prompt.text
        assert parsed.category == prompt.category


@pytest.mark.parametrize(
    "text", ["", "three", "a purple elephant", "two green", "a circle on a blue background", "a big red star"]
)
def test_parse_rejects_text_outside_the_grammar(text):
    with pytest.raises(ValueError):
        parse_prompt(text)


# --- Held-out split ----------------------------------------------------------------------------------------


def test_heldout_split_is_disjoint_complete_and_fixed():
    train, heldout = train_prompts(), heldout_prompts()
    assert train and heldout
    assert not set(train) & set(heldout)
    assert set(train) | set(heldout) == set(all_prompts())
    assert train == train_prompts() and heldout == heldout_prompts()
    print(f"\nshapes world: {len(train)} train prompts, {len(heldout)} held-out prompts")


def test_heldout_pairs_never_occur_in_training_prompts():
    for prompt in train_prompts():
        assert (prompt.shape, prompt.colour) not in HELDOUT_SHAPE_COLOURS
        assert (prompt.shape, prompt.count) not in HELDOUT_SHAPE_COUNTS
    heldout_pairs = {(p.shape, p.colour) for p in heldout_prompts()} | {
        (p.shape, p.count) for p in heldout_prompts()
    }
    assert HELDOUT_SHAPE_COLOURS | HELDOUT_SHAPE_COUNTS <= heldout_pairs


def test_every_word_still_occurs_in_training():
    # Held-out prompts combine known words in new ways; none of their words is new.
    train = train_prompts()
    assert {p.shape for p in train} == set(SHAPES)
    assert {p.colour for p in train} - {None} == set(OBJECT_COLOURS)
    assert {p.count for p in train} == set(COUNTS)
    assert {p.background for p in train} - {None} == set(BACKGROUND_COLOURS)


# --- Negatives and captions --------------------------------------------------------------------------------


def test_perturb_changes_exactly_the_requested_attribute():
    rng = np.random.default_rng(0)
    for prompt in all_prompts():
        for kind in perturbation_kinds(prompt):
            changed = perturb(prompt, rng, kind)
            assert changed_attributes(prompt, changed) == [kind], (prompt.text, changed.text)
            # Negatives of training prompts stay in training, so held-out pairs never reach training text.
            if not is_heldout(prompt):
                assert not is_heldout(changed), (prompt.text, changed.text)


def test_perturb_refuses_attributes_the_prompt_leaves_open():
    prompt = Prompt("circle", count=3)
    assert perturbation_kinds(prompt) == ["count", "shape"]
    for kind in ("colour", "background"):
        with pytest.raises(ValueError, match="does not state"):
            perturb(prompt, np.random.default_rng(0), kind)


def test_negative_prompts_are_distinct_one_attribute_changes():
    rng = np.random.default_rng(0)
    for prompt in train_prompts()[::7]:
        negatives = negative_prompts(prompt, rng, 3)
        assert len(set(negatives)) == 3 and prompt not in negatives
        assert all(len(changed_attributes(prompt, negative)) == 1 for negative in negatives)
    combination = Prompt("star", "blue", 2, "white")
    assert len(negative_prompts(combination, rng, 7)) == 7
    with pytest.raises(ValueError, match="Asked: 99"):
        negative_prompts(combination, rng, 99)


def test_noisy_captions_touch_only_the_count():
    rng = np.random.default_rng(0)
    prompts = train_prompts()
    noisy = 0
    for index in range(2000):
        prompt = prompts[index % len(prompts)]
        caption = parse_prompt(noisy_caption(prompt, rng, count_noise=0.5))
        assert changed_attributes(prompt, caption) in ([], ["count"])
        assert not is_heldout(caption), caption.text
        noisy += caption.count != prompt.count
    assert 0.45 < noisy / 2000 < 0.55


def test_noisy_caption_noise_levels():
    rng = np.random.default_rng(1)
    prompt = Prompt("star", "blue", 2, "white")
    assert {noisy_caption(prompt, rng, count_noise=0.0) for _ in range(50)} == {prompt.text}
    captions = {noisy_caption(prompt, rng, count_noise=1.0) for _ in range(200)}
    assert prompt.text not in captions
    # Dropped and wrong counts both occur; "four" is not offered because (star, 4) is held out.
    assert captions == {"blue stars on a white background", "a blue star on a white background",
                        "three blue stars on a white background"}  # fmt: skip


# --- Renderer ----------------------------------------------------------------------------------------------


def sample_prompts(count: int, seed: int) -> list[tuple[Prompt, np.random.Generator]]:
    prompts = all_prompts()
    rngs = [np.random.default_rng([seed, index]) for index in range(count)]
    return [(prompts[rng.integers(len(prompts))], rng) for rng in rngs]


def test_layout_keeps_shapes_apart_inside_the_image():
    rng = np.random.default_rng(0)
    for count in COUNTS * 50:
        boxes = layout_boxes(count, rng)
        assert len(boxes) == count
        for left, top, width in boxes:
            assert width >= MIN_SHAPE_PX
            assert EDGE_PX <= left and left + width <= IMAGE_SIZE - EDGE_PX
            assert EDGE_PX <= top and top + width <= IMAGE_SIZE - EDGE_PX
        assert all(boxes_apart(first, second) for first, second in itertools.combinations(boxes, 2))


def test_render_is_deterministic_by_seed():
    prompt = Prompt("star", "blue", 2, "white")
    first = render(prompt, np.random.default_rng(3)).tobytes()
    assert render(prompt, np.random.default_rng(3)).tobytes() == first
    assert render(prompt, np.random.default_rng(4)).tobytes() != first


def test_render_draws_exact_colours_and_separate_objects():
    for prompt, rng in sample_prompts(200, seed=0):
        pixels = np.asarray(render(prompt, rng))
        assert pixels.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
        background = BACKGROUND_COLOURS[prompt.background or "white"]
        assert (pixels[0, 0] == background).all()
        # No antialiasing: every pixel is the background or a palette object colour.
        colours = {tuple(int(v) for v in colour) for colour in np.unique(pixels.reshape(-1, 3), axis=0)}
        allowed = {background} | (
            {OBJECT_COLOURS[prompt.colour]} if prompt.colour else set(OBJECT_COLOURS.values())
        )
        assert colours - {background} and colours <= allowed, prompt.text
        # One connected component per object: nothing overlaps or touches.
        objects = (pixels != background).any(axis=-1)
        assert len(components(objects)) == prompt.count, prompt.text


def test_render_wrong_refuses_attributes_the_prompt_leaves_open():
    with pytest.raises(ValueError, match="does not state"):
        render_wrong(Prompt("circle", count=2), np.random.default_rng(0), "colour")
    assert set(PERTURBATION_KINDS) == set(perturbation_kinds(Prompt("star", "blue", 2, "white")))


# --- CLI ---------------------------------------------------------------------------------------------------


def test_cli_lists_prompts_and_writes_samples(tmp_path, capsys):
    assert main(["prompts", "--split", "heldout"]) == 0
    assert capsys.readouterr().out.splitlines() == [prompt.text for prompt in heldout_prompts()]
    assert main(["sample", "--count", "5", "--seed", "0", "--out", str(tmp_path)]) == 0
    records = [json.loads(line) for line in (tmp_path / "prompts.jsonl").read_text().splitlines()]
    assert [record["image"] for record in records] == [f"{index:05d}.png" for index in range(5)]
    assert all((tmp_path / record["image"]).exists() for record in records)
    assert all(not is_heldout(parse_prompt(record["prompt"])) for record in records)


def test_prompt_listing_draws_distinct_prompts_reproducibly(capsys):
    from t2i_trainer.build.shapes_world import choose_prompts, heldout_prompts, main, train_prompts

    drawn = choose_prompts("train", 50, None, seed=3)
    assert len(drawn) == len(set(drawn)) == 50
    assert set(drawn) <= set(train_prompts())
    assert drawn == choose_prompts("train", 50, None, seed=3)
    assert drawn != choose_prompts("train", 50, None, seed=4)
    per_category = choose_prompts("heldout", None, 2, seed=0)
    assert set(per_category) <= set(heldout_prompts())
    assert main(["prompts", "--split", "train", "--count", "5", "--seed", "3"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        prompt.text for prompt in choose_prompts("train", 5, None, 3)
    ]
    with pytest.raises(SystemExit):
        main(["prompts", "--count", "0"])
