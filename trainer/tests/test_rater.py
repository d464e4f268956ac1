"""The simulated rater must agree with the renderer's ground truth, on clean, wrong and degraded images.

Accuracies are printed (pytest -s shows them); trainer/README.md quotes them.
"""

import json

import numpy as np
import pytest
from PIL import Image, ImageFilter

from t2i_trainer.build.rater import Rater, components, judge, main
from t2i_trainer.build.shapes_world import (
    CATEGORIES,
    DrawnObject,
    Prompt,
    all_prompts,
    draw_objects,
    perturbation_kinds,
    render,
    render_wrong,
)
from t2i_trainer.build.shapes_world import main as world_main

PROMPTS_BY_CATEGORY = {
    category: [p for p in all_prompts() if p.category == category] for category in CATEGORIES
}


def sample_prompt(rng: np.random.Generator, wrong: str | None = None) -> Prompt:
    """A category uniformly, then a prompt of it that can be made wrong in `wrong`, so the 36 colour prompts
    count as much as the 720 combinations."""
    while True:
        category = PROMPTS_BY_CATEGORY[CATEGORIES[rng.integers(len(CATEGORIES))]]
        prompt = category[rng.integers(len(category))]
        if wrong is None or wrong in perturbation_kinds(prompt):
            return prompt


def accuracy(samples: int, seed: int, wrong: str | None = None, degrade=None) -> float:
    expected = "good" if wrong is None else "bad"
    agreed = 0
    for index in range(samples):
        rng = np.random.default_rng([seed, index])
        prompt = sample_prompt(rng, wrong)
        image = render(prompt, rng) if wrong is None else render_wrong(prompt, rng, wrong)
        if degrade is not None:
            image = degrade(image, rng)
        agreed += judge(image, prompt).label == expected
    return agreed / samples


def blur(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(1))


def pixel_noise(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    noisy = np.asarray(image, dtype=np.float32) + rng.normal(0.0, 20.0, size=(image.height, image.width, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def test_rater_says_good_on_clean_renders():
    rate = accuracy(300, seed=1)
    print(f"\nrater on clean renders: {rate:.1%} good")
    assert rate >= 0.98


@pytest.mark.parametrize(
    ("wrong", "samples"), [("count", 200), ("colour", 200), ("shape", 100), ("background", 100)]
)
def test_rater_says_bad_on_wrong_renders(wrong, samples):
    rate = accuracy(samples, seed=2, wrong=wrong)
    print(f"\nrater on renders with the wrong {wrong}: {rate:.1%} bad")
    assert rate >= 0.98


def test_rater_tolerates_blur():
    # A small diffusion model's images are soft; GaussianBlur(1) is a stand-in.
    good = accuracy(200, seed=3, degrade=blur)
    bad = accuracy(100, seed=4, wrong="count", degrade=blur)
    print(f"\nrater on blurred renders: {good:.1%} good when right, {bad:.1%} bad when the count is wrong")
    assert good >= 0.90 and bad >= 0.90


def test_rater_tolerates_pixel_noise():
    rate = accuracy(100, seed=5, degrade=pixel_noise)
    print(f"\nrater on renders with Gaussian pixel noise (sd 20): {rate:.1%} good")
    assert rate >= 0.90


def test_reasons_name_the_failing_attribute():
    prompt = Prompt("star", "blue", 2, "white")
    image = draw_objects(
        [DrawnObject("star", "blue", (4, 4, 20)), DrawnObject("star", "red", (30, 30, 20)),
         DrawnObject("cross", "blue", (4, 40, 16))],
        "white",
    )  # fmt: skip
    rating = judge(image, prompt)
    assert rating.label == "bad" and rating.background == "white"
    assert {name: check.ok for name, check in rating.reasons.items()} == {
        "shape": False,
        "count": False,
        "colour": False,
        "background": True,
    }
    assert rating.reasons["count"].detail == "expected 2, found 3"
    assert sorted((found.colour, found.shape) for found in rating.objects) == [
        ("blue", "cross"),
        ("blue", "star"),
        ("red", "star"),
    ]


def test_unstated_attributes_are_not_checked():
    image = draw_objects(
        [DrawnObject("circle", "red", (10, 10, 20)), DrawnObject("circle", "cyan", (36, 36, 20))], "black"
    )
    rating = judge(image, Prompt("circle", count=2))
    assert rating.label == "good" and set(rating.reasons) == {"shape", "count"}


def test_blur_rings_are_not_objects():
    # Blurred red on yellow passes through orange, an object colour; a plain nearest-colour rater would see
    # an orange ring.
    image = draw_objects([DrawnObject("square", "red", (10, 10, 30))], "yellow").filter(
        ImageFilter.GaussianBlur(1)
    )
    rating = judge(image, Prompt("square", "red", 1, "yellow"))
    assert [(found.colour, found.shape) for found in rating.objects] == [("red", "square")]


def test_components_join_diagonal_neighbours():
    mask = np.zeros((6, 6), dtype=bool)
    mask[0, 0] = mask[1, 1] = mask[2, 2] = True
    mask[4:, 4:] = True
    assert sorted(int(component.sum()) for component in components(mask)) == [3, 4]


def test_label_noise_flips_about_that_share():
    rating = judge(render(Prompt("circle", count=2), np.random.default_rng(0)), Prompt("circle", count=2))
    assert rating.label == "good"
    rater = Rater(label_noise=0.2, seed=0)
    labels = [rater.add_noise(rating) for _ in range(4000)]
    flipped = sum(label.label == "bad" for label in labels) / len(labels)
    print(f"\nlabel noise 0.2 flipped {flipped:.1%}")
    assert abs(flipped - 0.2) < 0.03
    assert all(label.flipped == (label.label == "bad") and label.true_label == "good" for label in labels)
    # Seeded: the same seed gives the same labels.
    again = Rater(label_noise=0.2, seed=0)
    assert [again.add_noise(rating).label for _ in range(4000)] == [label.label for label in labels]


def test_skip_rate_skips_about_that_share():
    rating = judge(render(Prompt("square", count=1), np.random.default_rng(0)), Prompt("square", count=3))
    assert rating.label == "bad"
    rater = Rater(skip_rate=0.05, seed=1)
    labels = [rater.add_noise(rating).label for _ in range(4000)]
    assert abs(labels.count("skip") / len(labels) - 0.05) < 0.015
    assert set(labels) == {"bad", "skip"}


def test_noise_settings_are_validated():
    with pytest.raises(ValueError, match="`label_noise` must be between 0 and 1. Given: 1.5"):
        Rater(label_noise=1.5)


def test_cli_rates_a_sampled_folder(tmp_path, capsys):
    assert world_main(["sample", "--count", "8", "--seed", "0", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["rate", "--images", str(tmp_path)]) == 0
    results = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(results) == 8
    assert all(result["label"] == "good" and result["reasons"]["shape"]["ok"] for result in results)
