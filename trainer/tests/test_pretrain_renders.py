"""A job's pre-training renders on disk: the same draw the trainer makes, in the folder layout it reads."""

import dataclasses
import json

import numpy as np
import pytest

from t2i_trainer.build.shapes_world import NUMBER_WORDS, WORD_COUNTS, parse_prompt, pretrain_renders
from t2i_trainer.jobs.finetune import load_caption_folder
from t2i_trainer.jobs.pretrain_renders import count_variants, main


def test_the_folder_holds_the_trainers_own_draw(tmp_path, capsys):
    out = tmp_path / "renders"
    assert main(["--images", "6", "--seed", "3", "--out", str(out)]) == 0
    images, captions = load_caption_folder(out)
    drawn = pretrain_renders(6, 3, 0.5)
    assert captions == [caption for _, _, caption in drawn]
    for written, (_, image, _) in zip(images, drawn, strict=True):
        assert np.array_equal(written, np.asarray(image))
    assert not (tmp_path / "renders.partial").exists()
    event = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert event["event"] == "rendered" and event["images"] == 6


def test_a_caption_stating_a_number_carries_its_variants_in_the_worlds_grammar(tmp_path):
    out = tmp_path / "renders"
    main(["--images", "64", "--seed", "1", "--out", str(out)])
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    stating = [row for row in rows if parse_prompt(row["text"]).count is not None]
    assert 0 < len(stating) < len(rows), "the draw holds captions with and without a number"
    for row in rows:
        prompt = parse_prompt(row["text"])
        if prompt.count is None:
            assert "variants" not in row, row
            continue
        variants = row["variants"]
        assert list(variants) == ["one", "two", "three", "four"], row
        assert variants[NUMBER_WORDS[prompt.count]] == row["text"], row
        for word, text in variants.items():
            assert parse_prompt(text) == dataclasses.replace(prompt, count=WORD_COUNTS[word]), row
    # The world's singular: "a red circle" is judged against "two red circles", not "one red circles".
    assert count_variants("a red circle") == {
        "one": "a red circle",
        "two": "two red circles",
        "three": "three red circles",
        "four": "four red circles",
    }
    assert count_variants("one star")["two"] == "two stars"
    assert count_variants("red circles on a white background") is None


def test_a_second_run_replaces_the_folder(tmp_path):
    out = tmp_path / "renders"
    main(["--images", "4", "--out", str(out)])
    main(["--images", "2", "--out", str(out)])
    assert len(load_caption_folder(out)[1]) == 2


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--images", "0"], "--images must be between 1 and 1000000"),
        (["--images", "2", "--count-noise", "1.5"], "--count-noise must be between 0 and 1"),
    ],
)
def test_bad_arguments_are_refused_naming_the_flag(tmp_path, capsys, argv, says):
    with pytest.raises(SystemExit):
        main([*argv, "--out", str(tmp_path / "renders")])
    assert says in capsys.readouterr().err
