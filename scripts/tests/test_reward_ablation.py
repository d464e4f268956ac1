"""t2i_scripts.eval.reward_ablation's figures and sentences: the t interval, the pairing by seed, and
conclusions that follow the intervals."""

import math

import pytest

from t2i_scripts.eval import reward_ablation


def runs(seen: dict, unseen: dict) -> list[dict]:
    """Runs from per-lambda accuracy lists, one value per seed, on the two splits."""
    out = []
    for weight in seen:
        for seed, (a, b) in enumerate(zip(seen[weight], unseen[weight], strict=True)):
            out.append({"seed": seed, "aux_weight": weight, "eval": {"eval_seen": a, "eval_unseen": b}})
    return out


def test_the_interval_is_students_t_over_seeds():
    figure = reward_ablation.mean_interval([0.80, 0.82, 0.84])
    half = 4.303 * 0.02 / math.sqrt(3)
    assert figure["mean"] == pytest.approx(0.82)
    assert (figure["low"], figure["high"]) == (pytest.approx(0.82 - half), pytest.approx(0.82 + half))
    assert reward_ablation.mean_interval([0.5])["low"] is None


def test_the_difference_is_paired_by_seed():
    # Seeds vary a lot, but lambda 0.5 is 2 points below lambda 0 at every seed: paired, that is settled.
    data = runs(
        {0.0: [0.80, 0.90, 0.70], 0.5: [0.78, 0.88, 0.68]},
        {0.0: [0.85, 0.86, 0.87], 0.5: [0.85, 0.86, 0.87]},
    )
    summary = reward_ablation.summarise(data, [0.0, 0.5])
    seen = summary["eval_seen"]["difference"]
    assert seen["mean"] == pytest.approx(-0.02) and seen["high"] < 0
    # The unpaired intervals overlap widely.
    assert summary["eval_seen"]["accuracy"]["0.5"]["high"] > summary["eval_seen"]["accuracy"]["0.0"]["low"]
    assert summary["eval_unseen"]["difference"]["mean"] == pytest.approx(0.0)
    assert "scores lower than lambda = 0.0" in reward_ablation.verdict(seen, 0.0, 0.5, "seen prompts")
    assert "not settled" in reward_ablation.verdict(summary["eval_unseen"]["difference"], 0.0, 0.5, "x")
    sentence = reward_ablation.recommendation(summary, 0.0, 0.5, 0.5)
    assert sentence.startswith("The measurement supports lambda = 0.0, better on one split and not worse")


@pytest.mark.parametrize(
    ("seen_shift", "unseen_shift", "supported"),
    [
        (0.03, 0.02, "lambda = 0.5, which is better on both splits"),
        (-0.03, -0.02, "lambda = 0.0, which is better on both splits"),
        (0.03, -0.02, "neither lambda over the other"),
    ],
)
def test_the_recommendation_follows_the_intervals(seen_shift, unseen_shift, supported):
    base = [0.80, 0.81, 0.82]
    data = runs(
        {0.0: base, 0.5: [value + seen_shift + 0.001 * i for i, value in enumerate(base)]},
        {0.0: base, 0.5: [value + unseen_shift - 0.001 * i for i, value in enumerate(base)]},
    )
    summary = reward_ablation.summarise(data, [0.0, 0.5])
    assert supported in reward_ablation.recommendation(summary, 0.0, 0.5, 0.5)


def test_the_section_holds_the_table_and_the_sentences():
    data = {
        "machine": "2 torch threads",
        "minutes": 30.0,
        "seeds": [0, 1, 2],
        "aux_weights": [0.0, 0.5],
        "train_images": 4224,
        "pairs": {"eval_seen": 2127, "eval_unseen": 687},
        "shipped_aux_weight": 0.5,
        "summary": reward_ablation.summarise(
            runs(
                {0.0: [0.90, 0.91, 0.89], 0.5: [0.89, 0.90, 0.88]},
                {0.0: [0.89, 0.88, 0.9], 0.5: [0.86, 0.85, 0.87]},
            ),
            [0.0, 0.5],
        ),
    }
    section = reward_ablation.markdown(data)
    assert section.startswith(reward_ablation.BEGIN) and section.endswith(reward_ablation.END)
    assert (
        "| seen prompts | 2127 | 90.0 (87.5 to 92.5) | 89.0 (86.5 to 91.5) | -1.0 (-1.0 to -1.0) |" in section
    )
    assert "On held-out prompts, lambda = 0.5 scores lower than lambda = 0.0" in section
    assert "The measurement supports lambda = 0.0, which is better on both splits" in section
