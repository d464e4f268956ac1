"""t2i_scripts.eval.relabel_accuracy's pure parts (#26): which prompts are siblings and of which kind, the
job's relabel rule, the interval and the report's sentences. No server."""

from __future__ import annotations

from t2i_scripts.eval import relabel_accuracy as ra
from t2i_trainer.build.shapes_world import parse_prompt, train_prompts


def test_siblings_differ_in_one_attributes_word():
    two, three = parse_prompt("two red circles"), parse_prompt("three red circles")
    assert ra.kind_of(two, three) == "count"
    assert ra.kind_of(parse_prompt("a red star"), parse_prompt("a blue star")) == "colour"
    assert ra.kind_of(parse_prompt("a red star"), parse_prompt("a red circle")) == "shape"
    assert (
        ra.kind_of(parse_prompt("a star on a black background"), parse_prompt("a star on a gray background"))
        == "background"
    )
    # "one circle" and "two circles" differ in two words: not siblings.
    assert ra.kind_of(parse_prompt("one circle"), parse_prompt("two circles")) is None
    found = ra.siblings(train_prompts())
    for text, kinds in found.items():
        for kind, others in kinds.items():
            assert text not in others
            assert all(ra.kind_of(parse_prompt(text), parse_prompt(other)) == kind for other in others)


def test_the_rule_is_the_jobs():
    assert ra.choose(0.1, [0.3, 0.8, 0.6], 0.5) == 1
    assert ra.choose(0.1, [0.3, 0.4], 0.5) is None
    assert ra.choose(0.9, [0.3, 0.8], 0.5) is None
    assert ra.choose(0.8, [0.8], 0.5) is None
    assert ra.choose(0.1, [0.7, 0.7], 0.5) == 0
    assert ra.choose(0.1, [float("nan"), 0.6], 0.5) == 1
    assert ra.choose(0.1, [], 0.5) is None


def test_the_wilson_interval_brackets_the_share():
    low, high = ra.wilson(23, 29)
    assert low < 100 * 23 / 29 < high and 0 <= low and high <= 100
    assert ra.wilson(0, 0) is None
    assert ra.wilson(10, 10)[1] == 100.0


def test_the_sentences_follow_the_intervals():
    def row(kind, interval):
        return {"kind": kind, "threshold": 0.5, "candidates": 10, "reachable": 5, "relabelled": 4, "right": 3,
                "right_share": 75.0, "interval": interval}  # fmt: skip

    data = {"command": "python -m t2i_scripts.eval.relabel_accuracy", "machine": "m", "seconds": 1.0,
            "images_per_prompt": 8, "prompts": 2, "images": 16, "bad": 12,
            "table": [row("count", [60.0, 90.0]), row("shape", [10.0, 70.0])]}  # fmt: skip
    text = ra.section(data)
    claim = "more than half of the relabels are right (the 95% interval's lower end above 50%) at"
    assert f"**count**: {claim} every threshold measured" in text
    assert f"**shape**: {claim} no threshold measured" in text
