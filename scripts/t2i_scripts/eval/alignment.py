"""Issue #26's comparison, measured through the service: every objective at equal training compute, with full
weights and with LoRA, each judged on the whole held-out split with 95% intervals.

1. Serve: `t2i-align serve` with shapes-sd and shapes-reward, on a fresh data directory.
2. Rate once: the simulated rater labels images that the pretrained model serves for training prompts
   (POST /generate, then POST /feedback through t2i_scripts.eval.simulate_raters), as `make finetune-rounds`
   does in its first round.
3. One job per configuration (`configurations`: rwr, dpo and kto, each with full weights and with a LoRA
   adapter), from the pretrained model, on those ratings and the same reward-scored samples (one job seed),
   with the same steps x batch size; LoRA at its own learning rate (settings' `lora`). No job activates its
   version, so they do not chain. Each job's evaluate stage judges base and candidate on every held-out prompt
   with the same seeds, and its gate (the server's default rule) decides from paired bootstrap intervals; the
   pretrained model's evaluation is sampled by the first job and taken from the server's cache by the others.
   With --rounds N (N > 1) each configuration goes on for N rounds, each rating the images of the version
   before it and training from it; the last versions are then judged against the pretrained model on every
   held-out prompt by t2i_scripts.eval.heldout_eval (the jobs' gates compare a round with the one before it).
4. Writes models/alignment.json: one entry per configuration with the gains over the pretrained model and
   their intervals, the minutes of rounds (rating plus jobs, wall time), the gate's verdict and the target's
   verdict, computed from those figures; and the section between the markers below in models/REPORT.md, whose
   sentences are computed from the same figures.

The field names that other branches add to the job's `hyperparameters` are in FIELDS; fields at the value
the server takes when they are absent (DEFAULTS) are left out of the request, so that `--configs rwr-full`
runs on a server that does not know them.

Usage:
    make finetune-loop
    .venv-trainer/bin/python -m t2i_scripts.eval.alignment --binary target/release/t2i-align
    .venv-trainer/bin/python -m t2i_scripts.eval.alignment --smoke --configs rwr-full   # a few minutes
    .venv-trainer/bin/python -m t2i_scripts.eval.alignment --render-only   # the section from the JSON
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from t2i_scripts.eval import finetune_loop, heldout_eval
from t2i_scripts.eval.finetune_loop import (
    Server,
    copy_version,
    emit,
    loop_arguments,
    rate_served_images,
    relative,
    run_job,
    table,
)
from t2i_scripts.report import markers, verdict, write_report
from t2i_scripts.server import ROOT

SECTION = "alignment"
TITLE = "Objectives and LoRA at equal compute (issue #26)"


BEGIN, END = markers(SECTION)
# The jobs' records so far, while the run goes on (removed at the end).
PARTIAL = ROOT / "build" / "alignment" / "runs.json"

# The job request's hyperparameters that other branches are adding (#26), by what they mean here. Adjust the
# names here when they settle. The text encoder's LoRA follows `train_text_encoder` on the lora branch.
FIELDS = {
    "objective": "objective",
    "objective_beta": "objective_beta",
    "lora_rank": "lora_rank",
    "lora_alpha": "lora_alpha",
    "lora_text_encoder": "train_text_encoder",
    "pretrain_target": "pretrain_target",
}
# What the server takes when a field is absent; such values are not sent (and an absent field in a job's
# stored spec reads as this).
DEFAULTS = {"objective": "rwr", "lora_rank": 0, "pretrain_target": "data"}
OBJECTIVES = ("rwr", "dpo", "kto")

# The measured run. The job's settings are `make finetune-rounds`' (chosen by the trials in
# models/REPORT.md): 1500 steps of 32 rows, a quarter of them pre-training renders, cosine learning rate 3e-4,
# beta 0.1, EMA, text encoder trained, 528 training prompts. The rater labels 9 served images of each, as in
# that loop's first round, and each job scores 2 more per prompt with the reward model.
SHARED = ("rated_prompts", "steps", "batch_size", "learning_rate", "lr_schedule", "beta", "pretrain_fraction")
SHARED += ("pretrain_images", "ema_decay", "train_text_encoder")
FULL = {key: finetune_loop.FULL[key] for key in SHARED} | {
    "rated_images": finetune_loop.FULL["rounds"][0]["rated_images"],
    "later_rated_images": 8,  # per configuration, in rounds after the first (--rounds)
    "rounds": 1,
    "job_prompts": finetune_loop.FULL["rounds"][0]["job_prompts"],
    "images_per_prompt": finetune_loop.FULL["rounds"][0]["images_per_prompt"],
    # β of dpo and kto; None leaves it to the trainer's default for the objective.
    "objective_beta": {"dpo": None, "kto": None},
    # The pre-training term's target: `data` (the paper's) or `base` (the frozen base's prediction).
    "pretrain_target": "data",
    # The job's `relabel` (hindsight relabelling by the reward model), e.g.
    # {"words": ["one", "two", "three", "four"], "threshold": 0.5}; None leaves it off.
    "relabel": None,
    # The job's `pretrain_data` instead of `pretrain_images` renders with the pretraining's noisy captions,
    # e.g. {"kind": "folder", "path": "build/filtered-pretrain"} (t2i_scripts.eval.filtered_pretrain); a
    # relative path is read from the repository's root.
    "pretrain_data": None,
    # The LoRA configurations: rank and alpha (scale alpha / rank = 1), a higher learning rate than full
    # weights, and an adapter on the text encoder too.
    "lora": {"rank": 16, "alpha": 16, "learning_rate": 1e-3, "text_encoder": True},
    # None: the job's default, every held-out prompt (282); a number draws that many.
    "eval_prompts": None,
    "eval_images": 4,
}
SMOKE = FULL | {
    "rated_prompts": 4,
    "rated_images": 4,
    "later_rated_images": 2,
    "job_prompts": 6,
    "images_per_prompt": 2,
    "steps": 5,
    "batch_size": 8,
    "pretrain_images": 16,
    "lora": {"rank": 4, "alpha": 4, "learning_rate": 1e-3, "text_encoder": True},
    "eval_prompts": 6,
    "eval_images": 2,
}

# Issue #26's target: count up 15 points or more, colour and quality each at most 3 points down at their
# interval's lower end, within 60 minutes of rounds. The far goal is count +25.
TARGET = {
    "count_gain": 15.0,
    "far_count_gain": 25.0,
    "max_drop": {"colour": 3.0, "quality": 3.0},
    "minutes": 60,
}

SHARES = ("count", "colour", "background", "shape", "quality", "good")
METRICS = (*SHARES[:5], "diversity", "good", "reward")
SHOWN = ("count", "colour", "background", "shape", "quality", "diversity")
UNITS = {
    **{metric: "points (percentage points of a share of images)" for metric in SHARES},
    "diversity": "mean pairwise RMS distance between a prompt's images (0 to 1)",
    "reward": "mean reward-model score",
}


def configurations(settings: dict) -> dict[str, dict]:
    """Every configuration by name: each objective with full weights (`-full`) and with LoRA (`-lora`)."""
    return {
        f"{objective}-{kind}": {"objective": objective, "lora_rank": 0 if kind == "full" else rank}
        for objective in OBJECTIVES
        for kind, rank in (("full", 0), ("lora", settings["lora"]["rank"]))
    }


def parse_args(argv=None) -> argparse.Namespace:
    parser = loop_arguments(__doc__, 18099, "alignment.json")
    parser.add_argument(
        "--configs", help="comma-separated configurations to run (default: all of "
        f"{', '.join(configurations(FULL))})",
    )  # fmt: skip
    parser.add_argument(
        "--rounds", type=int, help="rounds of rating and fine-tuning per configuration (default 1)"
    )
    parser.add_argument(
        "--keep-versions", type=Path, default=ROOT / "build" / "alignment" / "versions",
        help="with --rounds above 1: where the last versions are copied for the held-out evaluation",
    )  # fmt: skip
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override a setting for every configuration (VALUE read as JSON; a dotted KEY reaches into a "
        "nested setting), e.g. --set beta=1.0 --set objective_beta.dpo=5000",
    )  # fmt: skip
    parser.add_argument(
        "--section", help=f"the report section to write (default {SECTION}); a tuning run gets its own, so "
        "that it does not replace the comparison's",
    )  # fmt: skip
    parser.add_argument("--title", help=f"that section's heading (default: {TITLE})")
    args = parser.parse_args(argv)
    if args.section is not None and not re.fullmatch(r"[a-z0-9][a-z0-9-]*", args.section):
        parser.error(f"--section must be lower-case letters, digits and dashes, got {args.section!r}")
    if args.smoke:
        if args.report.name == "REPORT.md":
            args.report = args.report.with_name("REPORT-smoke.md")
        if args.json.name == "alignment.json":
            args.json = args.json.with_name("alignment-smoke.json")
    if args.render_only:
        return args
    settings = SMOKE if args.smoke else FULL
    if args.rounds is not None:
        if args.rounds < 1:
            parser.error(f"--rounds must be at least 1, got {args.rounds}")
        settings = settings | {"rounds": args.rounds}
    try:
        settings = overridden(settings, args.set)
    except ValueError as error:
        parser.error(f"--set: {error}")
    args.settings = settings
    known = configurations(settings)
    names = [name.strip() for name in args.configs.split(",")] if args.configs else list(known)
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        parser.error(f"--configs: unknown {', '.join(unknown) or '(none given)'}; known: {', '.join(known)}")
    args.configurations = {name: known[name] for name in names}
    if not Path(args.binary).is_file():
        parser.error(f"--binary {args.binary} does not exist; run `make build` first")
    if not (Path(args.model) / "model_index.json").is_file():
        parser.error(f"--model {args.model} is not a model folder")
    return args


def overridden(settings: dict, assignments: list[str]) -> dict:
    """`settings` with each KEY=VALUE applied: VALUE as JSON (a bare word as a string), KEY an existing
    setting, dotted to reach into a nested one; a value replaces one of the same type (an int may replace a
    float, and null any)."""
    settings = json.loads(json.dumps(settings))
    for assignment in assignments:
        key, equals, text = assignment.partition("=")
        if not equals or not key:
            raise ValueError(f"{assignment!r} is not KEY=VALUE")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        *path, last = key.split(".")
        place = settings
        for part in path:
            place = place.get(part) if isinstance(place, dict) else None
            if not isinstance(place, dict):
                raise ValueError(f"{key}: {part} is not a group of settings")
        if last not in place:
            raise ValueError(f"{key} is not a setting; known here: {', '.join(sorted(place))}")
        old = place[last]
        same = old is None or value is None or isinstance(value, type(old))
        same = same or (isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool))
        if not same:
            raise ValueError(f"{key} takes a {type(old).__name__}, got {text}")
        place[last] = value
    return settings


def hyperparameters(settings: dict, config: dict) -> dict:
    """The job's `hyperparameters` for a configuration: the same steps x batch size for all; LoRA's learning
    rate for LoRA; the objective's fields (FIELDS) unless at the server's default (DEFAULTS)."""
    lora = config["lora_rank"] > 0
    values = {
        "beta": settings["beta"],
        "learning_rate": settings["lora"]["learning_rate"] if lora else settings["learning_rate"],
        **{key: settings[key] for key in finetune_loop.JOB_HYPERPARAMETERS},
    }
    wanted = {
        "objective": config["objective"],
        "objective_beta": settings["objective_beta"].get(config["objective"]),
        "lora_rank": config["lora_rank"],
        "pretrain_target": settings["pretrain_target"],
    }
    if lora:
        wanted |= {
            "lora_alpha": settings["lora"]["alpha"],
            "lora_text_encoder": settings["lora"]["text_encoder"],
        }
    for key, value in wanted.items():
        if value is not None and DEFAULTS.get(key, object()) != value:
            values[FIELDS[key]] = value
    return values


def job_request(settings: dict, config: dict, base_model: str, seed: int) -> dict:
    """POST /fine-tunes for one configuration from `base_model`: the ratings of the base's own images, the
    same prompts and samples in every configuration (one seed), the gate's default rule, not activated."""
    eval_prompts = {"generator": "shapes_world", "split": "heldout"}
    if settings["eval_prompts"] is not None:
        eval_prompts |= {"count": settings["eval_prompts"], "seed": seed}
    relabel = {} if settings["relabel"] is None else {"relabel": settings["relabel"]}
    return relabel | {
        "base_model": base_model,
        "prompts": {"generator": "shapes_world", "split": "train", "count": settings["job_prompts"]},
        "images_per_prompt": settings["images_per_prompt"],
        "use_feedback": True,
        "feedback_filter": {"model": base_model},
        "hyperparameters": hyperparameters(settings, config),
        "pretrain_data": pretrain_data(settings),
        "eval_prompts": eval_prompts,
        "eval_images_per_prompt": settings["eval_images"],
        "seed": seed,
        "activate_on_success": False,
    }


def pretrain_data(settings: dict) -> dict:
    """The job's pre-training data: `pretrain_data` when set (a relative folder read from the repository's
    root, where the server can find it), else `pretrain_images` renders with the pretraining's captions."""
    data = settings.get("pretrain_data")
    if data is None:
        return {"kind": "shapes_world", "images": settings["pretrain_images"]}
    data = dict(data)
    if data.get("kind") == "folder" and not Path(data.get("path", "")).is_absolute():
        data["path"] = str(ROOT / data["path"])
    return data


def pretrain_words(settings: dict) -> str:
    """What the pre-training rows are, for the report."""
    data = settings.get("pretrain_data")
    if data is None:
        return "pre-training renders"
    return f"pre-training images from `{json.dumps(data, sort_keys=True)}`"


def figures(row: dict) -> dict:
    """A gate-table row (fractions for shares) in the report's units: points for shares, rounded to 0.01;
    diversity and reward in their own units, to 4 decimals."""
    scale, digits = (100.0, 2) if row["metric"] in SHARES else (1.0, 4)

    def value(key: str) -> float | None:
        number = row.get(key)
        return None if number is None else round(number * scale, digits)

    return {key: value(key) for key in ("gain", "low", "high", "base", "candidate")} | {
        "prompts": row.get("prompts")
    }


def heldout_table(summary: dict, base_name: str, name: str) -> list[dict]:
    """t2i_scripts.eval.heldout_eval's figures for `name` against `base_name`, as gate-table rows:
    intervals for the attributes, quality and diversity; good as a figure alone; no reward (it does not
    score)."""
    base, other = summary[base_name], summary[name]

    def share(entry: dict, metric: str) -> float | None:
        return entry["attributes"].get(metric) if metric in entry["attributes"] else entry.get(metric)

    rows = []
    for metric in METRICS:
        if metric == "reward":
            continue
        before, after = share(base, metric), share(other, metric)
        gain = other["gains"].get(metric) or {}
        difference = None if before is None or after is None else after - before
        rows.append(
            {"metric": metric, "base": before, "candidate": after, "gain": gain.get("gain", difference)}
            | {"low": gain.get("low"), "high": gain.get("high")}
        )
    return rows


def spec_value(hyperparameters: dict, key: str):
    """A hyperparameter of a job's stored spec by its meaning (FIELDS), the server's default when absent."""
    value = hyperparameters.get(FIELDS[key])
    return DEFAULTS.get(key) if value is None else value


def target_verdict(entry: dict, target: dict = TARGET) -> dict:
    """Whether an entry meets the target, from its figures: count's gain at or past `count_gain`, each guarded
    metric's interval lower end at or above minus its drop, and its minutes within the limit. `misses` says
    what fell short; `count_settled` whether count's whole interval is past the target."""
    if entry["status"] != "succeeded":
        return {
            "met": False,
            "misses": [f"the job {entry['status']}"],
            "count_settled": False,
            "far_goal": False,
        }
    metrics = entry["metrics"]
    count = metrics.get("count") or {}
    misses = []
    if count.get("gain") is None:
        misses.append("count not measured")
    elif count["gain"] < target["count_gain"]:
        misses.append(f"count {count['gain']:+.1f} points, short of +{target['count_gain']:g}")
    for metric, drop in target["max_drop"].items():
        low = (metrics.get(metric) or {}).get("low")
        if low is None:
            misses.append(f"{metric} has no interval")
        elif low < -drop:
            misses.append(f"{metric}'s interval reaches {low:+.1f} points, past -{drop:g}")
    if entry["minutes"] > target["minutes"]:
        misses.append(f"{entry['minutes']:.0f} minutes, over {target['minutes']:g}")
    return {
        "met": not misses,
        "misses": misses,
        "count_settled": count.get("low") is not None and count["low"] >= target["count_gain"],
        "far_goal": count.get("gain") is not None and count["gain"] >= target["far_count_gain"],
    }


def build_entry(name: str, config: dict, runs: list[dict], heldout: dict | None = None) -> dict:
    """One configuration's entry from its rounds (`runs`: each `run_job`'s record plus the round's `rating`,
    the round's rating summary, whose time counts towards the entry's even when ratings are shared). The gains
    are the last job's gate table against the pretrained model, or, after several rounds, `heldout`: a
    t2i_scripts.eval.heldout_eval result whose first version is the pretrained model and which judged this
    entry's last version under `name`."""
    jobs = [run["job"] for run in runs]
    last = jobs[-1]
    spec = last.get("spec") or {}
    settings = spec.get("hyperparameters") or {}
    objective, lora_rank = spec_value(settings, "objective"), spec_value(settings, "lora_rank")
    if (objective, lora_rank) != (config["objective"], config["lora_rank"]):
        raise ValueError(
            f"{name}: the job ran objective {objective!r} with lora_rank {lora_rank}, not "
            f"{config['objective']!r} with {config['lora_rank']}: does the server know FIELDS {FIELDS}?"
        )
    rate_seconds = sum(run["rating"]["generate_seconds"] + run["rating"]["rate_seconds"] for run in runs)
    job_seconds = sum(run["seconds"] for run in runs)
    entry = {
        "name": name,
        "objective": objective,
        "lora_rank": lora_rank,
        "status": last["status"],
        "error": last.get("error"),
        "settings": {
            "hyperparameters": settings,
            "compute": settings.get("steps", 0) * settings.get("batch_size", 0),
            "job_prompts": (spec.get("prompts") or {}).get("count"),
            "images_per_prompt": spec.get("images_per_prompt"),
            "rounds": len(runs),
        },
        "minutes": round((rate_seconds + job_seconds) / 60, 1),
        "time": {
            "rate_seconds": round(rate_seconds, 1),
            "job_seconds": round(job_seconds, 1),
            "rounds": [
                {
                    "job_id": job["id"],
                    "base_model": job.get("base_model"),
                    "version": job.get("result_model"),
                    "seconds": run["seconds"],
                    "stages": run["stages"],
                    "base_cached": ((job.get("metrics") or {}).get("gate") or {}).get("base_cached"),
                }
                for run, job in zip(runs, jobs, strict=True)
            ],
        },
        "job_id": last["id"],
        "version": last.get("result_model"),
        "gate": None,
        "metrics": {},
    }
    gates = [(job.get("metrics") or {}).get("gate") for job in jobs]
    if last["status"] == "succeeded" and all(gates):
        several = len(gates) > 1
        entry["gate"] = {
            "passed": all(gate["passed"] for gate in gates),
            "reasons": [
                f"round {number}: {reason}" if several else reason
                for number, gate in enumerate(gates, start=1)
                for reason in gate["reasons"]
            ],
        }
        rows = gates[-1]["table"] if not several else heldout_table(heldout["summary"], "pretrained", name)
        entry["metrics"] = {row["metric"]: figures(row) for row in rows if row["metric"] in METRICS}
    entry["target"] = target_verdict(entry)
    entry["gate_agrees"] = (
        None if entry["gate"] is None else entry["gate"]["passed"] == entry["target"]["met"]
    )
    return entry


def evaluation(entries: list[dict], runs: dict[str, list[dict]], heldout: dict | None) -> dict:
    """How the entries were judged: where the figures come from, on how many prompts and images, the
    intervals' confidence, and the pretrained model's figures."""
    measured = [entry for entry in entries if entry["metrics"]]
    if heldout is not None:
        summary = heldout["summary"]
        other = next(name for name in summary if name != "pretrained")
        base = {row["metric"]: figures(row)["base"] for row in heldout_table(summary, "pretrained", other)}
        return {
            "source": "t2i_scripts.eval.heldout_eval, each configuration's last version served on its own",
            "prompts": heldout["prompts"],
            "images_per_prompt": heldout["images_per_prompt"],
            "confidence": 0.95,
            "resamples": heldout["bootstrap"],
            "base": base,
        }
    if not measured:
        return {"source": "the jobs' gate", "prompts": None, "images_per_prompt": None, "base": {}}
    first = runs[measured[0]["name"]][-1]["job"]
    gate = first["metrics"]["gate"]
    return {
        "source": "the jobs' gate: base and candidate on the same prompts and seeds",
        "prompts": gate["prompts"],
        "images_per_prompt": first["spec"]["eval_images_per_prompt"],
        "confidence": gate["rule"]["confidence"],
        "resamples": gate["rule"]["resamples"],
        "rule": gate["rule"],
        "base": {metric: figure["base"] for metric, figure in measured[0]["metrics"].items()},
    }


def document(args: argparse.Namespace, rated: dict, entries: list[dict], judged: dict) -> dict:
    """models/alignment.json."""
    return {
        "machine": f"{os.cpu_count()} CPUs",
        "command": run_command(args),
        "settings": args.settings,
        "fields": FIELDS,
        "base_model": Path(args.model).name,
        "rated": rated,
        **{key: judged.get(key) for key in ("prompts", "images_per_prompt", "confidence", "resamples")},
        "evaluation": judged,
        "units": UNITS,
        "target": TARGET,
        "equal_compute": len({entry["settings"]["compute"] for entry in entries}) <= 1,
        "entries": entries,
        "section": getattr(args, "section", None) or SECTION,
        "title": getattr(args, "title", None) or TITLE,
    }


def run_command(args: argparse.Namespace) -> str:
    """How to run this measurement again."""
    assignments = getattr(args, "set", None) or []
    if not args.smoke and args.configs is None and args.rounds is None and not assignments:
        return "make finetune-loop"
    command = "python -m t2i_scripts.eval.alignment" + (" --smoke" if args.smoke else "")
    if args.configs is not None:
        command += f" --configs {','.join(args.configurations)}"
    command += "".join(f" --set {assignment}" for assignment in assignments)
    return command + (f" --rounds {args.rounds}" if args.rounds is not None else "")


# The report's section.


def shown(figure: dict | None, metric: str) -> str:
    """`gain (low to high)`: points to 0.1 for shares, 3 decimals for diversity and reward."""
    if not figure or figure.get("gain") is None:
        return "n/a"
    digits = 1 if metric in SHARES else 3
    text = f"{figure['gain']:+.{digits}f}"
    if figure.get("low") is None or figure.get("high") is None:
        return text
    return f"{text} ({figure['low']:+.{digits}f} to {figure['high']:+.{digits}f})"


def gate_cell(entry: dict) -> str:
    if entry["gate"] is None:
        return f"job {entry['status']}"
    return "passed" if entry["gate"]["passed"] else "refused"


def entry_rows(data: dict) -> list[list[str]]:
    return [
        [
            entry["name"],
            entry["objective"],
            "full" if not entry["lora_rank"] else str(entry["lora_rank"]),
            f"{entry['minutes']:.1f}",
            *(shown(entry["metrics"].get(metric), metric) for metric in SHOWN),
            gate_cell(entry),
            "met" if entry["target"]["met"] else "missed",
        ]
        for entry in data["entries"]
    ]


def names(entries: list[dict]) -> str:
    listed = [entry["name"] for entry in entries]
    return listed[0] if len(listed) == 1 else ", ".join(listed[:-1]) + " and " + listed[-1]


def findings(data: dict) -> list[str]:
    """The section's conclusions, each computed from the entries' figures and intervals."""
    target = data["target"]
    entries = data["entries"]
    measured = [entry for entry in entries if (entry["metrics"].get("count") or {}).get("gain") is not None]
    lines = [
        f"- **The job of {entry['name']} {entry['status']}**: {entry['error'] or 'no error given'}."
        for entry in entries
        if entry["status"] != "succeeded"
    ]
    percent = round(100 * (data.get("confidence") or 0.95))
    if measured:
        best = max(measured, key=lambda entry: entry["metrics"]["count"]["gain"])
        count = best["metrics"]["count"]
        interval = None if count.get("low") is None else (count["low"], count["high"])
        said = verdict(
            count["gain"], target["count_gain"], at_most=False, interval=interval, alone="the gain"
        )
        span = "" if interval is None else f" ({percent}% interval {interval[0]:+.1f} to {interval[1]:+.1f})"
        lines.append(
            f"- **Largest count gain**: {best['name']}, {count['gain']:+.1f} points{span}; against the "
            f"target of +{target['count_gain']:g} that is {said}."
        )
        far = [entry for entry in measured if entry["target"]["far_goal"]]
        lines.append(
            f"- **Far goal** (count +{target['far_count_gain']:g}): reached by {names(far)}."
            if far
            else f"- **Far goal** (count +{target['far_count_gain']:g}): no entry reaches it."
        )
    judged = [entry for entry in entries if entry["gate"] is not None]
    refused = [entry for entry in judged if not entry["gate"]["passed"]]
    if judged and not refused:
        lines.append("- **The gate** passed every entry.")
    elif refused:
        why = "; ".join(f"{entry['name']} ({'; '.join(entry['gate']['reasons'])})" for entry in refused)
        passed = [entry for entry in judged if entry["gate"]["passed"]]
        tail = f" It passed {names(passed)}." if passed else " It passed none."
        lines.append(f"- **The gate refused** {why}.{tail}")
    met = [entry for entry in entries if entry["target"]["met"]]
    limits = (
        f"count +{target['count_gain']:g} points or more, "
        + " and ".join(
            f"{metric}'s interval no lower than -{drop:g}" for metric, drop in target["max_drop"].items()
        )
        + f", within {target['minutes']:g} minutes of rounds"
    )
    if met:
        settled = [entry for entry in met if entry["target"]["count_settled"]]
        lines.append(
            f"- **Target** ({limits}): met by {names(met)}; count's whole interval is past "
            f"+{target['count_gain']:g} for {names(settled) if settled else 'none of them'}."
        )
    else:
        misses = "; ".join(f"{entry['name']}: {', '.join(entry['target']['misses'])}" for entry in entries)
        lines.append(f"- **Target** ({limits}): no entry meets it ({misses}).")
    if judged:
        agree = [entry for entry in judged if entry["gate_agrees"]]
        if len(agree) == len(judged):
            lines.append("- **Gate and target** agree on every entry the gate judged.")
        else:
            wrong = [entry for entry in judged if not entry["gate_agrees"]]
            passed_wrongly = [entry for entry in wrong if entry["gate"]["passed"]]
            refused_wrongly = [entry for entry in wrong if not entry["gate"]["passed"]]
            parts = []
            if passed_wrongly:
                verb = "misses" if len(passed_wrongly) == 1 else "miss"
                parts.append(f"it passed {names(passed_wrongly)}, which {verb} the target")
            if refused_wrongly:
                verb = "meets" if len(refused_wrongly) == 1 else "meet"
                parts.append(f"it refused {names(refused_wrongly)}, which {verb} it")
            lines.append(
                f"- **Gate and target** agree on {len(agree)} of {len(judged)} entries: {'; '.join(parts)}."
            )
    return lines


def timing(data: dict) -> list[str]:
    """Where the minutes went: the shared rating, and the job that sampled the pretrained model's
    evaluation."""
    entries = data["entries"]
    if not entries:
        return []
    rated = data["rated"]
    rating = (rated["generate_seconds"] + rated["rate_seconds"]) / 60
    # The first round of each entry starts from the pretrained model, whose evaluation the server caches.
    firsts = [(entry["name"], entry["time"]["rounds"][0]) for entry in entries]
    sampled_by = [(name, stage) for name, stage in firsts if stage["base_cached"] is False]
    cached = [name for name, stage in firsts if stage["base_cached"]]
    sampled = ""
    if sampled_by:
        name, stage = sampled_by[0]
        evaluate = stage["stages"].get("evaluate")
        spent = f" ({evaluate / 60:.1f} min of evaluation)" if evaluate is not None else ""
        sampled = f" {name}'s job sampled the pretrained model's evaluation{spent}"
        sampled += (
            f"; {len(cached)} of the others took it from the server's cache." if len(firsts) > 1 else "."
        )
    fastest = min(entries, key=lambda entry: entry["minutes"])
    slowest = max(entries, key=lambda entry: entry["minutes"])
    span = (
        f"{fastest['minutes']:.1f} each"
        if fastest["minutes"] == slowest["minutes"]
        else f"from {fastest['minutes']:.1f} ({fastest['name']}) to {slowest['minutes']:.1f} "
        f"({slowest['name']})"
    )
    own = ", its own later ratings" if data["settings"]["rounds"] > 1 else ""
    return [
        f"- **Minutes**: each entry counts the shared rating ({rating:.1f} min){own} and its jobs: {span}."
        + sampled
    ]


def markdown(data: dict) -> str:
    s = data["settings"]
    lora = s["lora"]
    rated = data["rated"]
    labels = ", ".join(f"{count} {label}" for label, count in sorted(rated["labels"].items()))
    base = data["evaluation"].get("base") or {}
    base_line = ", ".join(
        f"{metric} {base[metric]:.1f}%" if metric in SHARES else f"{metric} {base[metric]:.3f}"
        for metric in (*SHOWN, "reward")
        if base.get(metric) is not None
    )
    rounds = s["rounds"]
    compute = "the same" if data["equal_compute"] else "**not** the same"
    begin, end = markers(data.get("section", SECTION))
    lines = [
        begin,
        f"## {data.get('title', TITLE)}",
        "",
        f"Measured by `{data['command']}` on {data['machine']}, through the service. The simulated rater "
        f"labelled {rated['images'] // max(rated['prompts'], 1)} images that `{data['base_model']}` served "
        f"for each of {rated['prompts']} training prompts ({labels}). Each configuration then ran "
        + (
            "one job from the pretrained model"
            if rounds == 1
            else f"{rounds} rounds, each rating its base's images again and training from it"
        )
        + f" on those ratings plus {s['job_prompts']} training prompts × {s['images_per_prompt']} samples "
        f"scored by the reward model, {s['steps']} steps of {s['batch_size']} rows ({compute} for every "
        f"entry), {s['pretrain_fraction']:.0%} {pretrain_words(s)} at beta {s['beta']}; learning rate "
        f"{s['learning_rate']} for full weights"
        + (
            f" and {lora['learning_rate']} for LoRA (alpha {lora['alpha']}, text encoder "
            f"{'adapted too' if lora['text_encoder'] else 'frozen'})"
            if any(entry["lora_rank"] for entry in data["entries"])
            else ""
        )
        + ". Judged by "
        f"{data['evaluation']['source']}, on {data['prompts'] or 'no'} held-out prompts × "
        f"{data['images_per_prompt']} images: gains over the pretrained model with "
        f"{round(100 * (data['confidence'] or 0.95))}% paired-bootstrap intervals over prompts "
        f"({data['resamples']} resamples), in points for shares and in its own units for diversity (mean "
        "pairwise RMS distance). Minutes are wall time of rating and jobs on this machine.",
        "",
        f"The pretrained model: {base_line}." if base_line else "",
        "",
        table(
            ["entry", "objective", "LoRA rank", "minutes", *SHOWN, "gate", "target"],
            entry_rows(data),
        ),
        "",
        *findings(data),
        *timing(data),
        "",
        end,
    ]
    return "\n".join(lines)


def render(args: argparse.Namespace, data: dict) -> None:
    args.json.write_text(json.dumps(data, indent=2) + "\n")
    write_report(args.report, markdown(data), *markers(data["section"]))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.render_only:
        data = json.loads(args.json.read_text())
        if args.section or args.title:
            section = args.section or data.get("section", SECTION)
            data |= {"section": section, "title": args.title or data.get("title", TITLE)}
            args.json.write_text(json.dumps(data, indent=2) + "\n")
        write_report(args.report, markdown(data), *markers(data.get("section", SECTION)))
        return 0
    settings = args.settings
    base_model = Path(args.model).name  # the served folder's name is its version's id
    runs: dict[str, list[dict]] = {}
    kept: list[tuple[str, str]] = []
    server = Server(args)
    try:
        rated = rate_served_images(server, args, base_model, 1, {"rated_images": settings["rated_images"]})
        emit("rated", round=1, **rated)
        for name, config in args.configurations.items():
            runs[name], model = [], base_model
            for number in range(1, settings["rounds"] + 1):
                rating = rated
                if number > 1:
                    later = {"rated_images": settings["later_rated_images"]}
                    rating = rate_served_images(server, args, model, number, later)
                    emit("rated", name=name, round=number, **rating)
                body = job_request(settings, config, model, args.seed)
                record = run_job(server, body, f"{name} round {number}", must_succeed=False)
                runs[name].append(record | {"rating": rating})
                if record["job"]["status"] != "succeeded":
                    break
                model = record["job"]["result_model"]
            if settings["rounds"] > 1 and runs[name][-1]["job"]["status"] == "succeeded":
                kept.append((name, copy_version(server, model, args.keep_versions / name)))
            # What has run so far is kept, in case a later configuration stops the script.
            PARTIAL.parent.mkdir(parents=True, exist_ok=True)
            PARTIAL.write_text(json.dumps({"rated": rated, "runs": runs}, indent=2) + "\n")
    finally:
        server.stop()
    heldout = None
    if kept:
        command = [f"--model=pretrained={args.model}", *(f"--model={name}={folder}" for name, folder in kept)]
        scratch = ROOT / "build" / "alignment"
        command += ["--binary", args.binary, "--threads", str(args.threads)]
        command += [
            "--report",
            str(scratch / "heldout-eval.md"),
            "--json",
            str(scratch / "heldout-eval.json"),
        ]
        if args.smoke:
            command += ["--prompts", "6", "--images-per-prompt", "1", "--bootstrap", "100"]
        heldout = heldout_eval.run(command)
    entries = [
        build_entry(name, args.configurations[name], records, heldout if kept else None)
        for name, records in runs.items()
    ]
    data = document(args, rated, entries, evaluation(entries, runs, heldout))
    render(args, data)
    PARTIAL.unlink(missing_ok=True)
    emit("done", report=relative(args.report), json=relative(args.json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
