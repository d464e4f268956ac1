"""t2i_scripts.eval.rater_accuracy's figures: Wilson intervals, tallies against the hard renders' truth, the
old rater loaded from git, and a report whose sentences come from the figures."""

import json
from types import SimpleNamespace

import pytest

from t2i_scripts.eval import rater_accuracy
from t2i_trainer.build.hard_renders import CONDITIONS
from t2i_trainer.build.rater import Check, judge


def test_wilson_intervals_match_known_values():
    assert rater_accuracy.wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert rater_accuracy.wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert rater_accuracy.wilson(100, 100) == pytest.approx((0.9630, 1.0), abs=1e-4)
    low, high = rater_accuracy.wilson(1900, 2000)
    assert low < 0.95 < high and high - low < 0.02


def always_good(image, prompt):
    reasons = {"shape": Check(True, "")}
    for attribute in ("colour", "count", "background"):
        if getattr(prompt, attribute) is not None:
            reasons[attribute] = Check(True, "")
    return SimpleNamespace(label="good", reasons=reasons)


def test_a_rater_that_always_says_good_is_right_on_the_correct_renders_only():
    results = rater_accuracy.measure({"always good": always_good, "new": judge}, samples=12, seed=3)
    rows = results["always good"]["rows"]
    assert results["always good"]["images"] == 12 * len(CONDITIONS)
    for condition in CONDITIONS:
        right, total = rows[condition]["verdict"]
        assert total == 12
        new_right, _ = results["new"]["rows"][condition]["verdict"]
        assert new_right >= right  # the real rater also says bad when it should
    # Every hard render is counted once in its condition, once in "all hard" and once in its background.
    hard = rows[rater_accuracy.HARD]["verdict"][1]
    assert hard == 12 * (len(CONDITIONS) - 1)
    assert (
        sum(rows[f"{name} background"]["verdict"][1] for name in ("white", "black", "gray", "yellow", "pink"))
        == hard
    )
    # Always "good" fails exactly the renders made wrong, so it is right on about half.
    assert 0.25 < rows[rater_accuracy.HARD]["verdict"][0] / hard < 0.75
    # Its colour check passes every render with the right colour.
    right, total = rows[rater_accuracy.HARD]["colour_when_right"]
    assert right == total > 0


def test_the_old_rater_comes_from_git_and_the_report_says_what_the_figures_say():
    old, commit = rater_accuracy.load_rater("HEAD")
    assert len(commit) == 40 and old.judge is not judge
    results = rater_accuracy.measure({"old": old.judge, "new": judge}, samples=6, seed=4)
    data = {
        "command": "python -m t2i_scripts.eval.rater_accuracy --samples 6",
        "machine": "2 CPUs",
        "samples": 6,
        "seed": 4,
        "baseline": commit,
        "conditions": list(CONDITIONS),
        "summary": rater_accuracy.summarise(results),
    }
    json.dumps(data)
    text = rater_accuracy.markdown(data)
    assert text.startswith(rater_accuracy.BEGIN) and text.endswith(rater_accuracy.END)
    assert f"`{commit[:12]}`" in text and "6 renders per condition, seed 4" in text
    summary = data["summary"]["new"]["rows"]
    weakest = min(CONDITIONS, key=lambda row: summary[row]["verdict"]["share"])
    assert (
        f"its weakest condition is {weakest} at {rater_accuracy.percent(summary[weakest]['verdict'])}" in text
    )
    for condition in CONDITIONS:
        assert text.count(f"| {condition} | old |") == 1 and text.count(f"| {condition} | new |") == 1


def test_a_bad_argument_is_refused(capsys):
    with pytest.raises(SystemExit):
        rater_accuracy.parse_args(["--samples", "0"])
    assert "--samples must be at least 1" in capsys.readouterr().err
