"""The fine-tune trials' report: held-out and seen-split trials go to their own tables, with the columns that
tell the trials apart (samples, pre-training captions), and trial specs keep repository-relative paths."""

import json
import sys

from repo_files import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "scripts"))

import finetune_loop  # noqa: E402

import finetune_trials  # noqa: E402


def trial(name: str, split: str | None, **spec) -> dict:
    result = {
        "name": name,
        "spec": spec or None,
        "attributes": {"count": 0.25, "colour": 0.9, "background": 0.95, "shape": 0.5},
        "good": 0.2,
        "quality": 0.8,
        "diversity": 0.25,
    }
    if split:
        result["split"] = split
    return result


def rows_of(lines: list[str], first_cell: str) -> list[str]:
    return [line for line in lines if line.startswith(f"| {first_cell} |")]


def test_seen_trials_get_their_own_table(tmp_path):
    path = tmp_path / "trials.jsonl"
    trials = [
        trial("base", None),
        trial("a", None, steps=600, samples="build/finetune-trials/samples/samples.jsonl"),
        trial("k", "heldout", steps=1500, samples="build/train-samples/samples-rater.jsonl",
              pretrain={"kind": "shapes_world", "count_noise": 0.0}, pretrain_fraction=0.75),
        trial("k", "seen", steps=1500, samples="build/train-samples/samples-rater.jsonl",
              pretrain={"kind": "shapes_world", "count_noise": 0.0}, pretrain_fraction=0.75),
    ]  # fmt: skip
    path.write_text("".join(json.dumps(t) + "\n" for t in trials))
    text = "\n".join(finetune_loop.trials_table(path)).splitlines()
    tables = [index for index, line in enumerate(text) if line.startswith("| trial |")]
    assert len(tables) == 2, "a held-out table and a seen table"
    held_out, seen = text[tables[0] : tables[1]], text[tables[1] :]
    assert len(rows_of(held_out, "base")) == 1 and len(rows_of(held_out, "a")) == 1
    assert rows_of(held_out, "k")[0].split(" | ")[1:2] == ["8,448 served"]
    assert "0.75, exact" in rows_of(held_out, "k")[0]
    assert "0.5, noisy" in rows_of(held_out, "a")[0]
    assert len(rows_of(seen, "k")) == 1 and not rows_of(seen, "a")


def test_samples_name_the_reward_and_the_round():
    served = "build/train-samples/samples-rater.jsonl"
    assert finetune_loop.trial_samples({"samples": served}) == "8,448 served"
    oracle = {"samples": "build/train-samples/samples-count.jsonl"}
    assert finetune_loop.trial_samples(oracle) == "8,448 served, count-only oracle"
    scores = {"samples": "build/train-samples/samples-reward.jsonl"}
    assert finetune_loop.trial_samples(scores) == "8,448 served, reward-model scores"
    second = {
        "samples": "build/train-samples-n/samples-rater.jsonl",
        "base": "build/finetune-trials/run-n/diffusers",
    }
    assert finetune_loop.trial_samples(second) == "4,224 served by n, starting from n"
    row = finetune_loop.trial_row(trial("o", "heldout", samples=served, unet_layers="cross_attention"))
    assert row[5] == "cross-attention"
    row = finetune_loop.trial_row(trial("j", "heldout", samples=served, train_text_encoder=True))
    assert row[5] == "UNet + text encoder"


def test_no_seen_table_without_seen_trials(tmp_path):
    path = tmp_path / "trials.jsonl"
    path.write_text(json.dumps(trial("base", None)) + "\n")
    text = "\n".join(finetune_loop.trials_table(path))
    assert text.count("| trial |") == 1
    assert finetune_loop.trials_table(tmp_path / "missing.jsonl") == []


def test_committed_trials_render():
    lines = "\n".join(
        finetune_loop.trials_table(REPO_ROOT / "models" / "fine-tune-trials.jsonl")
    ).splitlines()
    names = [json.loads(line)["name"] for line in (REPO_ROOT / "models" / "fine-tune-trials.jsonl").open()]
    for name in set(names):
        assert rows_of(lines, name), f"trial {name} is missing from the report"


def test_specs_keep_repository_relative_paths():
    samples = REPO_ROOT / "build" / "train-samples" / "samples-rater.jsonl"
    spec = {"base": str(REPO_ROOT / "models" / "shapes-sd" / "diffusers"), "out": "/elsewhere/run-x",
            "samples": str(samples), "steps": 5}  # fmt: skip
    relative = finetune_trials.relative_paths(spec)
    assert relative == {"base": "models/shapes-sd/diffusers", "out": "/elsewhere/run-x",
                        "samples": "build/train-samples/samples-rater.jsonl", "steps": 5}  # fmt: skip
    assert finetune_trials.relative_paths(None) is None


def test_the_count_paragraph_names_trials_that_meet_both_targets():
    def result(name: str, split: str, count: float, colour: float) -> dict:
        row = trial(name, split, steps=1500, samples="build/train-samples/samples-rater.jsonl")
        row["attributes"] = {"count": count, "colour": colour, "background": 0.95, "shape": 0.5}
        return row

    trials = [
        result(name, split, 0.25, 0.9) for name in ("base", "h", "j", "k") for split in ("heldout", "seen")
    ]
    trials += [result(name, "heldout", 0.3, 0.8) for name in ("m", "n", "o")]
    text = " ".join(finetune_loop.count_limit(trials))
    assert "None meets both targets" in text
    text = " ".join(finetune_loop.count_limit(trials + [result("z", "heldout", 0.45, 0.88)]))
    assert "Trials meeting both targets: z." in text
    assert "the largest held-out count gain is count +20.0 (trial z)" in text


def evaluation(count: float, colour: float, quality: float = 0.8) -> dict:
    return {
        "attributes": {"count": count, "colour": colour, "background": 0.97, "shape": 0.55},
        "good": 0.2,
        "quality": quality,
        "diversity": 0.25,
        "mean_reward": 0.3,
    }


def job_record(
    result: str, base: str, base_eval: dict, candidate: dict, passed: bool = True, spec: dict | None = None
) -> dict:
    metrics = {
        "evaluation": {"base": base_eval, "candidate": candidate},
        "gate": {"passed": passed, "reasons": [] if passed else ["quality fell 9.0 points"]},
    }
    job = {"result_model": result, "base_model": base, "metrics": metrics, "spec": spec or {}}
    return {"seconds": 600.0, "stages": {"sample": 300.0, "train": 280.0}, "job": job}


def test_the_loop_report_measures_the_last_round_against_the_pretrained_model():
    pretrained, first, second = evaluation(0.22, 0.92), evaluation(0.30, 0.90), evaluation(0.40, 0.88)
    rounds = [{"job_prompts": 528, "images_per_prompt": 16}, {"job_prompts": 528, "images_per_prompt": 8}]
    rated = {
        "prompts": 150,
        "images": 1200,
        "labels": {"good": 200, "bad": 1000},
        "generate_seconds": 80,
        "rate_seconds": 5,
    }
    data = {
        "command": "make finetune-loop",
        "machine": "2 CPUs",
        "settings": finetune_loop.FULL | {"rounds": rounds},
        "rated": [rated | {"model": "shapes-sd"}, rated | {"model": "v1"}],
        "loop_seconds": 2400.0,
        "jobs": {
            "round 1": job_record("v1", "shapes-sd", pretrained, first),
            # The ablation runs between the rounds, on round 1's data; the table still lists the rounds first.
            "beta 0 (ablation)": job_record("v3", "shapes-sd", pretrained, evaluation(0.3, 0.85, 0.7), False),
            # Round 2's own base is round 1's version; the report still compares with the pretrained model.
            "round 2": job_record("v2", "v1", first, second, spec={"feedback_filter": {"model": "v1"}}),
            "learning rate too high": job_record(
                "v4", "shapes-sd", pretrained, evaluation(0.1, 0.5, 0.4), False
            ),
        },
        "comparison": {"pretrained, one image": {"attributes": {"count": 0.2}, "seconds_per_image": 0.1}},
        "active_after_bad": "v2",
    }
    assert "On every held-out prompt" not in finetune_loop.markdown(data, [])
    gain = {"gain": 0.1, "low": 0.05, "high": 0.15}
    heldout = {
        "prompts": 282,
        "images_per_prompt": 4,
        "summary": {
            "round 2": {
                "gains": {
                    "count": gain,
                    "colour": gain | {"gain": -0.06},
                    "background": None,
                    "quality": gain,
                }
            }
        },
    }
    for base_eval in (pretrained, first):
        base_eval["prompts"] = 28
    text = finetune_loop.markdown(data, [], heldout)
    assert (
        "- **On every held-out prompt** (282 × 4 images, section below), round 2 against the pretrained "
        "model: count +10.0 (+5.0 to +15.0), colour -6.0 (+5.0 to +15.0), quality +10.0 (+5.0 to +15.0) "
        "points (95% intervals). The jobs' evaluation above, on 28 of those prompts, read count +18.0, "
        "colour -4.0, background +0.0, quality +0.0: "
    ) in text
    assert "count +18.0 points on held-out prompts after round 2" in text
    assert "round 1 alone: +8.0" in text
    assert "colour -4.0 points" in text
    assert "Quality proxy 70.0%, against 80.0% at beta = 0.1" in text
    assert "colour accuracy 85.0%, against 90.0% and 92.0%; count 30.0%, against 30.0% and 22.0%" in text
    assert "the gate refused it (quality fell 9.0 points), and the active version stayed `v2`" in text
    assert "- **Round 2**, from `v1`: 150 training prompts × 8 served images" in text
    assert "Then a job on these ratings (`feedback_filter`: the base's own images) plus 528" in text
    assert "Then a job on every rating so far plus 528" in text
    assert "The loop took 40.0 min" in text
    assert "its 2 rounds together; the ablation ran after round 1 and is not counted" in text
    table_rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert table_rows[1].startswith("| pretrained (shapes-sd) | 22.0% | 92.0% |")
    assert table_rows[3].startswith("| round 2: `v2`, from `v1` | 40.0% | 88.0% |")
