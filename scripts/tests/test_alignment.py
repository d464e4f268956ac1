"""t2i_scripts.eval.alignment's pure parts (#26): the job request per configuration, an entry of
models/alignment.json built from a job as GET /fine-tunes/{id} returns it, the target's verdict, and the
report's sentences, which must follow the figures. No server."""

from __future__ import annotations

import argparse
import copy
import json

import pytest

from t2i_scripts.eval import alignment
from t2i_scripts.report import write_report
from t2i_scripts.server import ROOT

# The pretrained shapes-sd on the whole held-out split (models/heldout-eval.json), as fractions.
BASE = {
    "reward": 0.1489,
    "good": 0.1303,
    "quality": 0.8812,
    "count": 0.2385,
    "colour": 0.9330,
    "background": 0.9889,
    "shape": 0.5417,
    "diversity": 0.2346,
}
RULE = {
    "min_reward_gain": 0.0,
    "max_drop": {"quality": 0.03, "colour": 0.03, "background": 0.03, "shape": 0.03, "diversity": 0.02},
    "confidence": 0.95,
    "resamples": 2000,
}


def gate(gains: dict[str, tuple[float, float, float]], reasons: list[str], base_cached: bool) -> dict:
    """metrics.gate as the server stores it: per metric (gain, low, high) as fractions over BASE."""
    table = []
    for metric, before in BASE.items():
        gain, low, high = gains[metric]
        role = "gain" if metric == "reward" else "guard" if metric in RULE["max_drop"] else "shown"
        bound = 0.0 if role == "gain" else -RULE["max_drop"][metric] if role == "guard" else None
        table.append(
            {
                "metric": metric,
                "base": before,
                "candidate": before + gain,
                "gain": gain,
                "low": low,
                "high": high,
                "prompts": 6 if metric in ("colour", "count") else 270 if metric == "background" else 282,
                "role": role,
                "bound": bound,
                "passed": None if bound is None else (low > bound if role == "gain" else low >= bound),
            }
        )
    return {
        "passed": not reasons,
        "rule": RULE,
        "prompts": 282,
        "base_cached": base_cached,
        "reasons": reasons,
        "table": table,
    }


GAINS = {
    "reward": (0.0312, 0.0251, 0.0374),
    "good": (0.0452, 0.0301, 0.0610),
    "quality": (-0.0161, -0.0288, -0.0032),
    "count": (0.1134, 0.0712, 0.1561),
    "colour": (-0.0104, -0.0262, 0.0051),
    "background": (0.0021, -0.0040, 0.0085),
    "shape": (-0.0079, -0.0213, 0.0060),
    "diversity": (-0.0032, -0.0071, 0.0006),
}


def job(
    job_id: str = "ft_1b2c",
    hyperparameters: dict | None = None,
    gains: dict | None = None,
    reasons: list[str] | None = None,
    base_model: str = "shapes-sd",
    base_cached: bool = True,
    status: str = "succeeded",
) -> dict:
    """A finished job as GET /fine-tunes/{id} returns it on the gate branch (the server fills the spec)."""
    record = {
        "id": job_id,
        "object": "fine_tune",
        "status": status,
        "stage": "register",
        "progress": 1.0,
        "base_model": base_model,
        "spec": {
            "base_model": base_model,
            "prompts": {"generator": "shapes_world", "split": "train", "count": 528, "per_category": None},
            "images_per_prompt": 2,
            "use_feedback": True,
            "feedback_filter": {"model": base_model, "rater": None},
            "retrain_reward_model": False,
            "reward_model": None,
            "hyperparameters": {
                "beta": 0.1,
                "learning_rate": 3e-4,
                "lr_schedule": "cosine",
                "steps": 1500,
                "batch_size": 32,
                "pretrain_fraction": 0.25,
                "ema_decay": 0.999,
                "caption_dropout": 0.1,
                "train_text_encoder": True,
            }
            | (hyperparameters or {}),
            "pretrain_data": {"kind": "shapes_world", "images": 4096, "path": None},
            "eval_prompts": {"generator": "shapes_world", "split": "heldout", "count": None},
            "eval_images_per_prompt": 4,
            "seed": 0,
            "eval_seed": 1000000007,
            "activate_on_success": False,
            "gate": RULE,
        },
        "result_model": f"{base_model}-ft-{job_id[3:]}" if status == "succeeded" else None,
        "error": None if status == "succeeded" else "objective dpo has nothing to train on",
        "metrics": {},
    }
    if status == "succeeded":
        record["metrics"] = {
            "samples": {"images": 1056, "mean_reward": 0.188, "reward_model": "shapes-reward"},
            "gate": gate(gains or GAINS, reasons or [], base_cached),
            "activated": False,
        }
    return record


RATED = {
    "model": "shapes-sd",
    "prompts": 528,
    "images": 4752,
    "labels": {"bad": 3910, "good": 842},
    "generate_seconds": 360.7,
    "rate_seconds": 26.6,
}


def run(record: dict, seconds: float = 744.0, rating: dict = RATED) -> dict:
    """One round as the script keeps it: run_job's record plus the rating it trained on."""
    stages = {"prompts": 0.4, "sample": 97.0, "label": 1.0, "train": 548.0, "evaluate": 97.0, "register": 0.5}
    return {"id": record["id"], "seconds": seconds, "stages": stages, "job": record, "rating": rating}


LORA = {"lora_rank": 16, "lora_alpha": 16, "learning_rate": 1e-3}


def test_an_entry_holds_the_gate_table_in_points_over_the_pretrained_model():
    record = job(hyperparameters={"objective": "rwr", **LORA}, base_cached=False)
    entry = alignment.build_entry("rwr-lora", {"objective": "rwr", "lora_rank": 16}, [run(record)])
    assert (entry["name"], entry["objective"], entry["lora_rank"]) == ("rwr-lora", "rwr", 16)
    assert (entry["job_id"], entry["version"], entry["status"]) == (
        "ft_1b2c",
        "shapes-sd-ft-1b2c",
        "succeeded",
    )
    # Rating (360.7 + 26.6 s) and the job (744 s), in minutes.
    assert entry["minutes"] == round((360.7 + 26.6 + 744.0) / 60, 1) == 18.9
    assert entry["settings"]["compute"] == 1500 * 32
    assert entry["settings"]["hyperparameters"]["learning_rate"] == 1e-3
    assert entry["time"]["rounds"][0]["base_cached"] is False
    assert entry["gate"] == {"passed": True, "reasons": []}
    count = entry["metrics"]["count"]
    assert (count["gain"], count["low"], count["high"]) == (11.34, 7.12, 15.61)
    assert (count["base"], count["candidate"], count["prompts"]) == (23.85, 35.19, 6)
    # Diversity and reward stay in their own units.
    assert entry["metrics"]["diversity"]["gain"] == -0.0032
    assert entry["metrics"]["reward"]["low"] == 0.0251
    assert set(entry["metrics"]) == set(alignment.METRICS)
    # Count +11.3 is short of +15: the target is missed, while the gate passed it.
    assert entry["target"]["met"] is False
    assert entry["target"]["misses"] == ["count +11.3 points, short of +15"]
    assert entry["gate_agrees"] is False


def test_a_spec_without_the_new_fields_reads_as_their_defaults_and_a_mismatch_is_refused():
    entry = alignment.build_entry("rwr-full", {"objective": "rwr", "lora_rank": 0}, [run(job())])
    assert (entry["objective"], entry["lora_rank"]) == ("rwr", 0)
    # A server that dropped the objective would have trained rwr: the entry must not be called dpo.
    with pytest.raises(ValueError, match="dpo-full: the job ran objective 'rwr'"):
        alignment.build_entry("dpo-full", {"objective": "dpo", "lora_rank": 0}, [run(job())])


def test_a_refused_version_keeps_the_gates_reasons():
    reason = "colour changed by -4.1 points (95% interval -6.0 to -2.2): it may fall by at most 3.0 points"
    gains = GAINS | {"count": (0.171, 0.152, 0.190), "colour": (-0.041, -0.060, -0.022)}
    record = job(hyperparameters={"objective": "kto"}, gains=gains, reasons=[reason])
    entry = alignment.build_entry("kto-full", {"objective": "kto", "lora_rank": 0}, [run(record)])
    assert entry["gate"] == {"passed": False, "reasons": [reason]}
    assert entry["target"]["misses"] == ["colour's interval reaches -6.0 points, past -3"]
    assert entry["target"]["count_settled"] is True
    assert entry["gate_agrees"] is True


def test_a_failed_job_is_an_entry_without_figures():
    record = job(hyperparameters={"objective": "dpo"}, status="failed")
    entry = alignment.build_entry("dpo-full", {"objective": "dpo", "lora_rank": 0}, [run(record, 120.0)])
    assert entry["gate"] is None and entry["metrics"] == {} and entry["gate_agrees"] is None
    assert entry["target"] == {
        "met": False,
        "misses": ["the job failed"],
        "count_settled": False,
        "far_goal": False,
    }


def entry_with(minutes: float = 20.0, **gains: tuple[float, float, float]) -> dict:
    """An entry whose figures (points) are given per metric as (gain, low, high)."""
    metrics = {name: {"gain": g, "low": lo, "high": hi} for name, (g, lo, hi) in gains.items()}
    return {"status": "succeeded", "metrics": metrics, "minutes": minutes}


def test_the_target_verdict_holds_each_limit_at_its_bound():
    at_bounds = entry_with(count=(15.0, 9.0, 21.0), colour=(-1.0, -3.0, 1.0), quality=(-1.0, -3.0, 1.0))
    at_bounds["minutes"] = 60
    verdict = alignment.target_verdict(at_bounds)
    assert verdict == {"met": True, "misses": [], "count_settled": False, "far_goal": False}
    short = entry_with(61.0, count=(14.99, 9.0, 21.0), colour=(0.0, -3.01, 1.0), quality=(0.0, -2.0, 2.0))
    assert alignment.target_verdict(short)["misses"] == [
        "count +15.0 points, short of +15",
        "colour's interval reaches -3.0 points, past -3",
        "61 minutes, over 60",
    ]
    far = entry_with(count=(26.0, 15.0, 30.0), colour=(0.0, -1.0, 1.0))
    verdict = alignment.target_verdict(far)
    assert verdict["far_goal"] and verdict["count_settled"]
    assert verdict["misses"] == ["quality has no interval"]


def test_the_requests_share_the_compute_and_leave_defaults_out():
    settings = alignment.FULL
    configs = alignment.configurations(settings)
    assert list(configs) == ["rwr-full", "rwr-lora", "dpo-full", "dpo-lora", "kto-full", "kto-lora"]
    bodies = {
        name: alignment.job_request(settings, config, "shapes-sd", 0) for name, config in configs.items()
    }
    assert {(b["hyperparameters"]["steps"], b["hyperparameters"]["batch_size"]) for b in bodies.values()} == {
        (1500, 32)
    }
    full = bodies["rwr-full"]
    # rwr with full weights is what a server without the new fields trains: nothing new is sent.
    assert not {"objective", "lora_rank", "lora_alpha", "objective_beta", "pretrain_target"} & set(
        full["hyperparameters"]
    )
    assert full["hyperparameters"]["learning_rate"] == 3e-4
    assert full["activate_on_success"] is False and "gate" not in full
    assert full["eval_prompts"] == {"generator": "shapes_world", "split": "heldout"}
    assert full["feedback_filter"] == {"model": "shapes-sd"}
    dpo = bodies["dpo-lora"]["hyperparameters"]
    assert (dpo["objective"], dpo["lora_rank"], dpo["lora_alpha"], dpo["learning_rate"]) == (
        "dpo",
        16,
        16,
        1e-3,
    )
    assert "objective_beta" not in dpo  # None: the trainer's default for the objective
    beta = copy.deepcopy(settings) | {"objective_beta": {"kto": 500.0}}
    assert alignment.hyperparameters(beta, configs["kto-full"])["objective_beta"] == 500.0
    smoke = alignment.job_request(alignment.SMOKE, configs["rwr-full"], "shapes-sd", 3)
    assert smoke["eval_prompts"] == {"generator": "shapes_world", "split": "heldout", "count": 6, "seed": 3}
    # `relabel` is off unless set, and then goes into the request as it is.
    assert "relabel" not in full
    words = {"words": ["one", "two"], "threshold": 0.5}
    relabelled = alignment.job_request(settings | {"relabel": words}, configs["rwr-full"], "shapes-sd", 0)
    assert relabelled["relabel"] == words
    # Pre-training renders unless `pretrain_data` names other data; a relative folder is the repository's.
    assert full["pretrain_data"] == {"kind": "shapes_world", "images": 4096}
    folder = {"kind": "folder", "path": "build/filtered-pretrain"}
    other = alignment.job_request(settings | {"pretrain_data": folder}, configs["rwr-full"], "shapes-sd", 0)
    expected = str(alignment.ROOT / "build" / "filtered-pretrain")
    assert other["pretrain_data"] == {"kind": "folder", "path": expected}
    assert folder["path"] == "build/filtered-pretrain"  # the settings, as the report shows them, keep it
    assert "`{" in alignment.pretrain_words(settings | {"pretrain_data": folder})


def document(entries: list[dict]) -> dict:
    args = argparse.Namespace(
        smoke=False, configs=None, rounds=None, settings=alignment.FULL, model="models/shapes-sd"
    )
    runs = {entry["name"]: entry.pop("_runs") for entry in entries}
    judged = alignment.evaluation(entries, runs, None)
    return alignment.document(args, RATED, entries, judged)


def built(name: str, objective: str, rank: int, gains: dict, reasons=(), seconds=744.0, cached=True) -> dict:
    extra = {"objective": objective} | (LORA if rank else {})
    record = job(f"ft_{name}", extra, gains, list(reasons), base_cached=cached)
    runs = [run(record, seconds)]
    entry = alignment.build_entry(name, {"objective": objective, "lora_rank": rank}, runs)
    return entry | {"_runs": runs}


def entries(count_lora: float = 0.1134, colour_kto=(-0.041, -0.060, -0.022)) -> list[dict]:
    reason = "colour changed by -4.1 points (95% interval -6.0 to -2.2): it may fall by at most 3.0 points"
    return [
        built("rwr-full", "rwr", 0, GAINS | {"count": (0.082, 0.051, 0.113)}, cached=False),
        built("rwr-lora", "rwr", 16, GAINS | {"count": (count_lora, count_lora - 0.04, count_lora + 0.04)}),
        built("kto-full", "kto", 0, GAINS | {"count": (0.171, 0.152, 0.190), "colour": colour_kto}, [reason]),
    ]


def test_the_document_names_the_evaluation_and_the_base():
    data = document(entries())
    assert data["command"] == "make finetune-loop"
    assert (data["prompts"], data["images_per_prompt"], data["confidence"], data["resamples"]) == (
        282,
        4,
        0.95,
        2000,
    )
    assert data["evaluation"]["base"]["count"] == 23.85 and data["evaluation"]["base"]["reward"] == 0.1489
    assert data["equal_compute"] is True
    assert data["fields"]["lora_rank"] == "lora_rank"


def test_the_sentences_follow_the_figures():
    data = document(entries())
    text = alignment.markdown(data)
    assert text.startswith(alignment.BEGIN) and text.endswith(alignment.END)
    assert "| kto-full | kto | full | 18.9 | +17.1 (+15.2 to +19.0) | -4.1 (-6.0 to -2.2) |" in text
    assert "| rwr-lora | rwr | 16 | 18.9 | +11.3 (+7.3 to +15.3) |" in text
    assert (
        "- **Largest count gain**: kto-full, +17.1 points (95% interval +15.2 to +19.0); against the target "
        "of +15 that is met." in text
    )
    assert (
        "- **The gate refused** kto-full (colour changed by -4.1 points (95% interval -6.0 to -2.2)" in text
    )
    assert "It passed rwr-full and rwr-lora." in text
    assert "no entry meets it (rwr-full: count +8.2 points, short of +15; rwr-lora: count +11.3" in text
    assert "kto-full: colour's interval reaches -6.0 points, past -3)" in text
    assert (
        "- **Gate and target** agree on 1 of 3 entries: it passed rwr-full and rwr-lora, which miss the"
        in text
    )
    assert "- **Minutes**: each entry counts the shared rating (6.5 min) and its jobs: 18.9 each." in text
    assert "- **Far goal** (count +25): no entry reaches it." in text
    assert (
        "rwr-full's job sampled the pretrained model's evaluation (1.6 min of evaluation); 2 of the others "
        "took it from the server's cache." in text
    )
    assert (
        "learning rate 0.0003 for full weights and 0.001 for LoRA (alpha 16, text encoder adapted too)"
        in text
    )
    assert "The pretrained model: count 23.9%, colour 93.3%" in text

    # LoRA's count rises past kto's and past the far goal, and kto keeps its colour: the sentences change.
    changed = alignment.markdown(document(entries(count_lora=0.262, colour_kto=(-0.01, -0.025, 0.005))))
    assert changed != text
    assert "- **Largest count gain**: rwr-lora, +26.2 points (95% interval +22.2 to +30.2)" in changed
    assert "- **Far goal** (count +25): reached by rwr-lora." in changed
    assert (
        "met by rwr-lora and kto-full; count's whole interval is past +15 for rwr-lora and kto-full."
        in changed
    )
    assert "- **The gate refused** kto-full" in changed  # its stored verdict is what the server said
    agreement = "agree on 1 of 3 entries: it passed rwr-full, which misses the target; it refused kto-full, "
    assert agreement + "which meets it." in changed

    # A count whose interval spans the target is not settled, whatever its gain.
    spans = alignment.markdown(document(entries(count_lora=0.18)[:2]))
    assert (
        "rwr-lora, +18.0 points (95% interval +14.0 to +22.0); against the target of +15 that is not settled"
        in (spans)
    )
    assert "- **The gate** passed every entry." in spans
    alone = alignment.markdown(document(entries()[:1]))
    assert "learning rate 0.0003 for full weights. Judged by" in alone
    assert "sampled the pretrained model's evaluation (1.6 min of evaluation)." in alone


def test_the_section_replaces_its_markers_in_the_report(tmp_path):
    report = tmp_path / "REPORT.md"
    report.write_text("# Report\n\nbefore\n")
    first = alignment.markdown(document(entries()))
    write_report(report, first, alignment.BEGIN, alignment.END)
    second = alignment.markdown(document(entries(count_lora=0.262)))
    write_report(report, second, alignment.BEGIN, alignment.END)
    text = report.read_text()
    assert text.startswith("# Report\n\nbefore\n") and text.count(alignment.BEGIN) == 1
    assert second in text and first not in text


def test_a_tuning_run_writes_its_own_section_and_leaves_the_comparison_alone(tmp_path):
    report = tmp_path / "REPORT.md"
    comparison = alignment.markdown(document(entries()))
    write_report(report, comparison, alignment.BEGIN, alignment.END)
    data = document(entries(count_lora=0.262)) | {"section": "alignment-dpo-tuning", "title": "DPO, tuned"}
    tuning = alignment.markdown(data)
    assert tuning.startswith("<!-- alignment-dpo-tuning:begin -->\n## DPO, tuned\n")
    write_report(report, tuning, *alignment.markers("alignment-dpo-tuning"))
    text = report.read_text()
    assert comparison in text and tuning in text

    saved = tmp_path / "tuning.json"
    saved.write_text(json.dumps(document(entries())))
    argv = ["--render-only", "--json", str(saved), "--report", str(report)]
    argv += ["--section", "alignment-dpo-tuning"]
    assert alignment.main(argv + ["--title", "DPO, tuned again"]) == 0
    text = report.read_text()
    assert comparison in text and "## DPO, tuned again" in text and tuning not in text
    assert json.loads(saved.read_text())["section"] == "alignment-dpo-tuning"
    # A new section alone keeps the stored title.
    assert (
        alignment.main(["--render-only", "--json", str(saved), "--report", str(report), "--section", "other"])
        == 0
    )
    assert json.loads(saved.read_text())["title"] == "DPO, tuned again"
    with pytest.raises(SystemExit):
        alignment.parse_args(["--render-only", "--section", "Not A Key"])


def test_rounds_take_their_gains_from_the_held_out_evaluation():
    first = job("ft_r1", {"objective": "rwr"})
    second = job(
        "ft_r2",
        {"objective": "rwr"},
        reasons=["quality changed by -4.0 points"],
        base_model=first["result_model"],
    )
    later = RATED | {"model": first["result_model"], "generate_seconds": 400.0, "rate_seconds": 30.0}
    summary = {
        "pretrained": {"attributes": {"count": 0.2385, "colour": 0.933, "background": 0.9889,
                                      "shape": 0.5417},
                       "good": 0.1303, "quality": 0.8812, "diversity": 0.2346, "gains": {}},
        "rwr-full": {"attributes": {"count": 0.33, "colour": 0.91, "background": 0.99, "shape": 0.53},
                     "good": 0.17, "quality": 0.85, "diversity": 0.231,
                     "gains": {"count": {"gain": 0.0915, "low": 0.06, "high": 0.12},
                               "colour": {"gain": -0.023, "low": -0.04, "high": -0.006},
                               "background": {"gain": 0.0011, "low": -0.004, "high": 0.006},
                               "shape": {"gain": -0.0117, "low": -0.03, "high": 0.007},
                               "quality": {"gain": -0.0312, "low": -0.05, "high": -0.012}}},
    }  # fmt: skip
    heldout = {"prompts": 282, "images_per_prompt": 4, "bootstrap": 4000, "summary": summary}
    runs = [run(first), run(second, 760.0, later)]
    entry = alignment.build_entry("rwr-full", {"objective": "rwr", "lora_rank": 0}, runs, heldout)
    assert entry["gate"] == {"passed": False, "reasons": ["round 2: quality changed by -4.0 points"]}
    assert entry["minutes"] == round((360.7 + 26.6 + 744.0 + 430.0 + 760.0) / 60, 1)
    assert entry["version"] == second["result_model"] and entry["settings"]["rounds"] == 2
    assert (entry["metrics"]["count"]["gain"], entry["metrics"]["count"]["low"]) == (9.15, 6.0)
    assert entry["metrics"]["good"] == {
        "gain": 3.97, "low": None, "high": None, "base": 13.03, "candidate": 17.0, "prompts": None
    }  # fmt: skip
    assert "reward" not in entry["metrics"]
    assert entry["target"]["misses"] == [
        "count +9.2 points, short of +15",
        "colour's interval reaches -4.0 points, past -3",
        "quality's interval reaches -5.0 points, past -3",
    ]
    judged = alignment.evaluation([entry], {"rwr-full": runs}, heldout)
    assert judged["base"]["count"] == 23.85 and judged["resamples"] == 4000


def test_the_flags_choose_configurations_and_the_smoke_run_writes_beside_the_report(tmp_path):
    binary = tmp_path / "t2i-align"
    binary.write_text("")
    model = ["--model", str(ROOT / "models" / "shapes-sd")]
    args = alignment.parse_args(["--smoke", "--configs", "rwr-full", "--binary", str(binary), *model])
    assert args.configurations == {"rwr-full": {"objective": "rwr", "lora_rank": 0}}
    assert (args.json.name, args.report.name) == ("alignment-smoke.json", "REPORT-smoke.md")
    assert args.settings["steps"] == 5 and args.settings["eval_prompts"] == 6
    assert alignment.run_command(args) == "python -m t2i_scripts.eval.alignment --smoke --configs rwr-full"
    rounds = alignment.parse_args(["--rounds", "2", "--binary", str(binary), *model])
    assert rounds.settings["rounds"] == 2 and list(rounds.configurations)[-1] == "kto-lora"
    assert rounds.configurations["dpo-lora"]["lora_rank"] == 16
    with pytest.raises(SystemExit):
        alignment.parse_args(["--configs", "ppo-full", "--binary", str(binary), *model])


def test_set_overrides_a_setting_for_every_configuration_and_refuses_what_is_not_one(tmp_path):
    binary = tmp_path / "t2i-align"
    binary.write_text("")
    common = ["--binary", str(binary), "--model", str(ROOT / "models" / "shapes-sd"), "--configs", "dpo-full"]
    args = alignment.parse_args(
        [*common, "--set", "beta=1", "--set", "objective_beta.dpo=5000", "--set", "learning_rate=1e-4"]
    )
    assert (args.settings["beta"], args.settings["learning_rate"]) == (1, 1e-4)
    assert args.settings["objective_beta"] == {"dpo": 5000, "kto": None}
    # The module's settings are untouched, and the request carries the overrides.
    assert alignment.FULL["beta"] == 0.1 and alignment.FULL["objective_beta"]["dpo"] is None
    values = alignment.hyperparameters(args.settings, args.configurations["dpo-full"])
    assert (values["beta"], values["learning_rate"], values["objective_beta"]) == (1, 1e-4, 5000)
    assert alignment.run_command(args).endswith(
        "--configs dpo-full --set beta=1 --set objective_beta.dpo=5000 --set learning_rate=1e-4"
    )
    # The pre-training term's target goes into the request only away from the server's default (data).
    anchored = alignment.parse_args([*common, "--set", "pretrain_target=base"])
    assert alignment.hyperparameters(anchored.settings, anchored.configurations["dpo-full"])[
        "pretrain_target"
    ] == ("base")
    assert "pretrain_target" not in values
    for wrong in ("betta=1", "beta", "beta=fast", "lora.rank.x=1", "steps=1.5", "pretrain_target=1"):
        with pytest.raises(SystemExit):
            alignment.parse_args([*common, "--set", wrong])
