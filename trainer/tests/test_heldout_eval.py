"""t2i_scripts.eval.heldout_eval's figures: shares, the paired bootstrap's gain and interval, the report's
rows, and its refusals of a bad --model."""

import argparse
import json

import pytest

from t2i_scripts.eval import heldout_eval


def row(count: tuple[int, int], colour: tuple[int, int], good: int = 0) -> dict:
    attributes = {name: [0, 0] for name in heldout_eval.ATTRIBUTES}
    attributes["count"], attributes["colour"] = list(count), list(colour)
    return {
        "prompt": "p",
        "category": "combination",
        "good": [good, 4],
        "attributes": attributes,
        "quality": [good, 4],
        "diversity": 0.1 + good / 100,
    }


def test_the_gain_is_the_pooled_difference_and_its_interval_holds_it():
    base = [row((1, 4), (4, 4)), row((0, 4), (3, 4)), row((2, 4), (4, 4)), row((1, 4), (4, 4))]
    other = [row((3, 4), (4, 4)), row((1, 4), (3, 4)), row((2, 4), (3, 4)), row((4, 4), (4, 4))]
    gain = heldout_eval.paired_gain(base, other, "count", resamples=2000, seed=0)
    assert gain["gain"] == pytest.approx((10 - 4) / 16)
    assert gain["low"] <= gain["gain"] <= gain["high"]
    assert gain["low"] > 0, "every prompt gained or held, so no resample can show a loss"
    colour = heldout_eval.paired_gain(base, other, "colour", resamples=2000, seed=0)
    assert colour["gain"] == pytest.approx(-1 / 16)
    assert colour["high"] <= 0
    assert heldout_eval.paired_gain(base, other, "background", resamples=10, seed=0) is None


def test_diversity_gets_a_paired_interval_over_the_prompts_both_versions_judged():
    base = [row((1, 4), (4, 4), good=g) for g in (0, 1, 2, 3)]
    other = [row((1, 4), (4, 4), good=g + 1) for g in (0, 1, 2, 3)]
    other[3]["diversity"] = None  # a prompt without a diversity is left out of both sides
    gain = heldout_eval.paired_diversity_gain(base, other, resamples=500, seed=0)
    assert gain["gain"] == pytest.approx(0.01)
    # Every prompt gained exactly 0.01, so every resample does too.
    assert gain["low"] == pytest.approx(0.01) and gain["high"] == pytest.approx(0.01)
    mixed = [row((1, 4), (4, 4), good=g) for g in (2, 0, 3, 1)]
    spread = heldout_eval.paired_diversity_gain(base, mixed, resamples=2000, seed=0)
    assert spread["gain"] == pytest.approx(0.0) and spread["low"] < 0 < spread["high"]
    assert heldout_eval.paired_diversity_gain(base, [dict(r, diversity=None) for r in base], 10, 0) is None


def test_an_attribute_a_prompt_does_not_state_counts_as_judged_on_none_of_its_images():
    # judge_prompt's rows name only the attributes the prompt states: a colour prompt has no background.
    colour_only = row((1, 4), (4, 4))
    del colour_only["attributes"]["background"]
    rows = [colour_only, row((2, 4), (3, 4))]
    rows[1]["attributes"]["background"] = [3, 4]
    right, judged = heldout_eval.counts(rows, "background")
    assert right.tolist() == [0, 3] and judged.tolist() == [0, 4]
    assert heldout_eval.share(rows, "background") == pytest.approx(3 / 4)


def test_the_same_version_gains_nothing_and_different_images_are_refused():
    rows = [row((1, 4), (4, 4)), row((3, 4), (2, 4))]
    same = heldout_eval.paired_gain(rows, rows, "count", resamples=500, seed=1)
    assert same == {"gain": 0.0, "low": 0.0, "high": 0.0}
    with pytest.raises(ValueError, match="different images"):
        heldout_eval.paired_gain(rows, [row((1, 3), (4, 4)), row((3, 4), (2, 4))], "count", 10, 0)


def test_the_report_lists_every_version_and_the_gains_over_the_first():
    args = argparse.Namespace(images_per_prompt=4, bootstrap=200, seed=0)
    base = [row((1, 4), (4, 4), good=1), row((0, 4), (3, 4))]
    better = [row((3, 4), (4, 4), good=3), row((2, 4), (3, 4), good=2)]
    results = {
        "pretrained": {"folder": "models/shapes-sd", "rows": base, "seconds": 10.0},
        "round 1": {"folder": "build/round-1", "rows": better, "seconds": 11.0},
    }
    summary = heldout_eval.summarise(results, args)
    assert summary["pretrained"]["attributes"]["count"] == pytest.approx(1 / 8)
    assert summary["round 1"]["good"] == pytest.approx(5 / 8)
    assert summary["round 1"]["quality"] == pytest.approx(5 / 8)
    assert summary["round 1"]["gains"]["quality"]["gain"] == pytest.approx(4 / 8)
    assert summary["pretrained"]["diversity"] == pytest.approx(0.105)
    data = {
        "command": "python -m t2i_scripts.eval.heldout_eval",
        "machine": "2 CPUs",
        "prompts": 2,
        "images_per_prompt": 4,
        "bootstrap": 200,
        "summary": summary,
    }
    text = heldout_eval.markdown(data)
    assert text.startswith(heldout_eval.BEGIN) and text.endswith(heldout_eval.END)
    assert "| pretrained (`models/shapes-sd`) | 12.5% | 87.5% | n/a | n/a | 12.5% | 12.5% | 0.105 |" in text
    assert "| round 1 | +50.0 (" in text
    assert ", 2 held-out prompts × 4 images" in text


@pytest.mark.parametrize("spec", ["no-equals-sign", "=models/shapes-sd", "x=/no/such/folder"])
def test_a_bad_model_argument_is_refused(spec, capsys):
    with pytest.raises(SystemExit):
        heldout_eval.parse_args(["--model", spec])
    assert "--model" in capsys.readouterr().err


def test_the_json_reads_back_whole():
    data = {"prompts": 1, "summary": {"a": {"gains": {}}}, "rows": {"a": [row((1, 4), (4, 4))], "b": []}}
    assert json.loads(heldout_eval.to_json(data)) == data
