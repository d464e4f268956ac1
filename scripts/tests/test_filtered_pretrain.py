"""The caption accounting of t2i_scripts.eval.filtered_pretrain, and the renders it draws."""

from t2i_scripts.eval import filtered_pretrain


def test_captions_are_right_when_they_state_the_true_count():
    rows = [
        (2, "two red circles"),
        (3, "two red circles"),
        (1, "a red circle"),
        (2, "red circles"),  # no number: states no count, so not right
    ]
    figures = filtered_pretrain.accuracy(rows)
    assert (figures["captions"], figures["right"]) == (4, 2)
    table = figures["by_stated_count"]
    assert (table["2"]["captions"], table["2"]["right"]) == (2, 1)
    assert (table["1"]["captions"], table["1"]["right"]) == (1, 1)
    assert (table["none"]["captions"], table["none"]["right"]) == (1, 0)
    assert table["4"] == {"captions": 0, "right": 0, "interval": None}
    low, high = table["2"]["interval"]
    assert 0 < low < 50 < high < 100


def test_the_drawn_renders_are_a_jobs_pre_training_renders():
    from t2i_trainer.build.shapes_world import parse_prompt, pretrain_renders

    drawn = filtered_pretrain.draw(6, 3, 0.5)
    assert [(count, caption) for count, caption, _ in drawn] == [
        (prompt.count, caption) for prompt, _, caption in pretrain_renders(6, 3, 0.5)
    ]
    # Half the captions state a wrong count or none; the rest state the render's own.
    stated = [parse_prompt(caption).count for _, caption, _ in filtered_pretrain.draw(400, 0, 0.5)]
    truths = [count for count, _, _ in filtered_pretrain.draw(400, 0, 0.5)]
    right = sum(a == b for a, b in zip(stated, truths, strict=True))
    assert 150 < right < 250


def entry(count: tuple, colour: tuple, quality: tuple, minutes: float = 20.0) -> dict:
    metrics = {
        name: dict(zip(("gain", "low", "high"), values, strict=True))
        for name, values in (("count", count), ("colour", colour), ("quality", quality))
    }
    metrics |= {name: {"gain": 0.0, "low": -1.0, "high": 1.0} for name in ("background", "shape")}
    return {"metrics": metrics, "minutes": minutes, "gate": {"passed": False}, "file": "x.json"}


def test_the_comparison_says_only_what_the_intervals_settle():
    kept = entry((16.0, 12.0, 20.0), (-1.0, -2.5, 0.5), (-0.5, -2.0, 1.0))
    every = entry((5.0, 2.0, 8.0), (-1.5, -2.8, 0.0), (-3.0, -5.0, -1.5))
    lines = "\n".join(filtered_pretrain.comparison(kept, every))
    count = "**Count**: +16.0 points on the kept renders against +5.0 on all of them; the kept renders' "
    assert count + "interval lies above the other's" in lines
    colour = "**Colour**: -1.0 points on the kept renders against -1.5 on all of them; the intervals overlap"
    assert colour in lines
    assert "lower ends): met by kept renders." in lines
    slow = entry((16.0, 12.0, 20.0), (-1.0, -2.5, 0.5), (-0.5, -2.0, 1.0), minutes=61.0)
    assert "met by neither" in "\n".join(filtered_pretrain.comparison(slow, every))
    assert "lies below" in "\n".join(filtered_pretrain.comparison(every, kept))


def test_the_kept_shares_show_what_the_filter_dropped():
    drawn = ["a red circle on a black background"] * 4 + ["a red circle on a white background"] * 4
    kept = ["a red circle on a black background"] + ["a red circle on a white background"] * 3
    shares = filtered_pretrain.kept_shares(drawn, kept)
    assert shares["background"]["black"] == {"drawn": 4, "kept": 1, "ratio": 0.5}
    assert shares["background"]["white"] == {"drawn": 4, "kept": 3, "ratio": 1.5}
    assert shares["colour"]["red"]["ratio"] == 1.0
    text = "\n".join(filtered_pretrain.shares_lines(shares))
    assert "The filter kept least of background `black`: 1 of 4, 0.50 times" in text


def test_the_relative_rule_compares_a_caption_with_its_other_numbers():
    assert filtered_pretrain.count_variants("red circles") is None
    assert filtered_pretrain.count_variants("two red circles") == [
        "a red circle",  # the world writes one object of a stated colour so
        "two red circles",
        "three red circles",
        "four red circles",
    ]
    assert filtered_pretrain.relative_keep("two red circles", [0.1, 0.6, 0.5, 0.2])
    assert not filtered_pretrain.relative_keep("two red circles", [0.1, 0.6, 0.6, 0.2])  # a tie is no win
    assert not filtered_pretrain.relative_keep("three red circles", [0.1, 0.6, 0.5, 0.2])


def test_balancing_keeps_the_same_share_of_every_stated_number():
    drawn = ["one red circle"] * 4 + ["two red circles"] * 4 + ["red circles"] * 4
    keys = [filtered_pretrain.stated_key(caption) for caption in drawn]
    # The rule kept all four "one" captions but only two "two" captions (indices 5 and 7).
    kept = [0, 1, 2, 3, 5, 7, 8]
    chosen = filtered_pretrain.balance(keys, kept)
    # The least share kept of any number is 2 of 4: the first two kept of each number, none stating no number.
    assert chosen == [0, 1, 5, 7]
    assert filtered_pretrain.balance(["none"], []) == []
    assert filtered_pretrain.variant({"rule": "relative", "balance": True}) == "relative-balanced"
    assert filtered_pretrain.variant({"rule": "score"}) == "score"


def test_the_words_rule_swaps_the_number_word_alone_as_the_job_does():
    assert filtered_pretrain.word_variants("two red circles") == [
        "one red circles",
        "two red circles",
        "three red circles",
        "four red circles",
    ]
    assert filtered_pretrain.word_variants("a red circle") is None
    assert filtered_pretrain.word_variants("one red circle and two stars") is None
