"""The simulated rater's own accuracy on hard renders, where the truth is known (issue #26).

The fine-tune gate and every alignment figure rest on the rater (t2i_trainer.build.rater), so this measures
how often it is right on images drawn the way the diffusion model draws them: t2i_trainer.build.hard_renders'
conditions (clean, shading, rims, highlights, two-tone, off-palette, touching, combined), `--samples` renders
each, half of them correct and half wrong in one stated attribute. For each condition, and for each background
over all conditions but clean, it reports how often the verdict (good/bad) and each attribute's check
(colour, count, shape, background) agree with the truth, with 95% Wilson intervals; an attribute counts only
on renders whose prompt states it (shape always).

Two raters judge the same renders: the one in this tree ("new") and rater.py as committed at `--baseline`
("old", loaded from git), so a change to the rater is measured against what it replaced. Each one's judging
time per image is measured on the same renders.

Writes --json and the section between the markers below in --report.

Usage (the light .venv is enough: numpy, Pillow and git):
    make rater-accuracy
    .venv/bin/python -m t2i_scripts.eval.rater_accuracy --samples 2000 --seed 0
"""

import argparse
import importlib
import json
import math
import os
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np

from t2i_scripts.report import command_line, write_report
from t2i_scripts.server import ROOT
from t2i_trainer.build.hard_renders import CONDITIONS, sample_hard
from t2i_trainer.build.shapes_world import BACKGROUND_COLOURS

BEGIN = "<!-- rater-accuracy:begin -->"
END = "<!-- rater-accuracy:end -->"
ATTRIBUTES = ("colour", "count", "shape", "background")
RATER_PATH = "trainer/t2i_trainer/build/rater.py"
# The last commit before #26 changed the rater.
DEFAULT_BASELINE = "cc512264db38aaefa2496650b22acd7489e89a3f"
# Every condition but clean, pooled: the rows per background and "all hard" count these.
HARD = "all hard conditions"
# The seeds whose renders the rater was tuned on while #26 changed it: a measurement on them is optimistic.
TUNING_SEEDS = (0, 5)
Z_95 = 1.959963984540054


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=2000, help="renders per condition (default: 2000)")
    parser.add_argument(
        "--seed", type=int, default=1,
        help="render i of condition c is seeded by (seed, c, i); 0 and 5 tuned the rater (default: 1)",
    )  # fmt: skip
    parser.add_argument(
        "--baseline", default=DEFAULT_BASELINE,
        help="git revision whose rater.py is the old rater; 'none' measures the new one alone",
    )  # fmt: skip
    parser.add_argument("--report", type=Path, default=ROOT / "models" / "REPORT.md")
    parser.add_argument("--json", type=Path, default=ROOT / "models" / "rater-accuracy.json")
    args = parser.parse_args(argv)
    if args.samples < 1:
        parser.error(f"--samples must be at least 1. Given: {args.samples}")
    return args


# --- Figures ------------------------------------------------------------------------------------------------


def wilson(right: int, total: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a share right/total."""
    if total == 0:
        return (0.0, 1.0)
    share = right / total
    denominator = 1 + z * z / total
    centre = (share + z * z / (2 * total)) / denominator
    half = z * math.sqrt(share * (1 - share) / total + z * z / (4 * total * total)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def figure(tally: list[int]) -> dict:
    right, total = tally
    low, high = wilson(right, total)
    return {"right": right, "n": total, "share": right / total if total else None, "low": low, "high": high}


def empty_tally() -> dict:
    return {
        "verdict": [0, 0],
        "attributes": {attribute: [0, 0] for attribute in ATTRIBUTES},
        # The colour check on renders whose objects have the stated colour: how often a right one is failed.
        "colour_when_right": [0, 0],
    }


def count(tally: dict, render, rating) -> None:
    tally["verdict"][0] += rating.label == render.label
    tally["verdict"][1] += 1
    for attribute, check in rating.reasons.items():
        cell = tally["attributes"][attribute]
        cell[0] += check.ok == render.correct(attribute)
        cell[1] += 1
    if "colour" in rating.reasons and render.correct("colour"):
        tally["colour_when_right"][0] += rating.reasons["colour"].ok
        tally["colour_when_right"][1] += 1


def rows_of(render) -> list[str]:
    if render.condition == "clean":
        return ["clean"]
    return [render.condition, HARD, f"{render.truth.background} background"]


def load_rater(revision: str) -> tuple[types.ModuleType, str]:
    """rater.py as committed at `revision`, as a module of its own, and the commit's full hash. It imports
    the shapes world of this tree, as the old rater did of its own."""
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", f"{revision}^{{commit}}"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{commit}:{RATER_PATH}"], capture_output=True, text=True, check=True
    ).stdout
    name = f"t2i_trainer.build.rater_at_{commit[:12]}"
    module = types.ModuleType(name)
    module.__file__ = f"{commit}:{RATER_PATH}"
    sys.modules[name] = module  # dataclasses look their module up by name
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module, commit


def measure(
    raters: dict[str, Callable], samples: int, seed: int, progress: Callable[[str], None] | None = None
) -> dict:
    """Per rater: tallies per row, and the seconds spent judging."""
    results = {name: {"rows": {}, "seconds": 0.0, "images": 0} for name in raters}
    for number, condition in enumerate(CONDITIONS):
        for index in range(samples):
            render = sample_hard(condition, np.random.default_rng([seed, number, index]))
            for name, judge in raters.items():
                started = time.perf_counter()
                rating = judge(render.image, render.prompt)
                results[name]["seconds"] += time.perf_counter() - started
                results[name]["images"] += 1
                for row in rows_of(render):
                    count(results[name]["rows"].setdefault(row, empty_tally()), render, rating)
        if progress is not None:
            progress(condition)
    return results


def summarise(results: dict) -> dict:
    summary = {}
    for name, result in results.items():
        rows = {}
        for row, tally in result["rows"].items():
            rows[row] = {
                "verdict": figure(tally["verdict"]),
                "attributes": {attribute: figure(cell) for attribute, cell in tally["attributes"].items()},
                "colour_when_right": figure(tally["colour_when_right"]),
            }
        milliseconds = 1000 * result["seconds"] / max(result["images"], 1)
        summary[name] = {"rows": rows, "ms_per_image": round(milliseconds, 3), "images": result["images"]}
    return summary


# --- Report -------------------------------------------------------------------------------------------------


def row_order() -> list[str]:
    backgrounds = [f"{name} background" for name in BACKGROUND_COLOURS]
    return [*CONDITIONS, HARD, *backgrounds]


def cell(value: dict) -> str:
    if not value["n"]:
        return "n/a"
    return f"{100 * value['share']:.1f} ({100 * value['low']:.1f}–{100 * value['high']:.1f})"


def percent(value: dict) -> str:
    interval = f"{100 * value['low']:.1f}–{100 * value['high']:.1f}%"
    return f"{100 * value['share']:.1f}% ({interval}, n={value['n']})"


def table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body])


def weakest(rows: dict, names: list[str]) -> tuple[str, str, dict]:
    """The (row, measure, figure) with the lowest share among `names`' verdicts and attribute checks."""
    candidates = []
    for row in names:
        candidates.append((row, "verdict", rows[row]["verdict"]))
        candidates += [(row, attribute, value) for attribute, value in rows[row]["attributes"].items()]
    return min((c for c in candidates if c[2]["n"]), key=lambda c: c[2]["share"])


def comparison(summary: dict, names: list[str]) -> list[str]:
    """Sentences on where the new rater's intervals lie wholly above or below the old rater's."""
    above, below = [], []
    for row in names:
        for measure in ("verdict", *ATTRIBUTES):
            old, new = (
                summary[rater]["rows"][row]["verdict"]
                if measure == "verdict"
                else summary[rater]["rows"][row]["attributes"][measure]
                for rater in ("old", "new")
            )
            if not old["n"]:
                continue
            if new["low"] > old["high"]:
                above.append((row, measure))
            elif new["high"] < old["low"]:
                below.append((row, measure))
    cells = len(names) * (1 + len(ATTRIBUTES))
    verdicts = [row for row, measure in above if measure == "verdict"]
    named_below = f" ({', '.join(f'{measure} on {row}' for row, measure in below)})" if below else ""
    return [
        f"Of the {cells} cells above, the new rater's 95% interval lies wholly above the old rater's in "
        f"{len(above)} (the verdict on: {', '.join(verdicts) or 'none'}) and wholly below it in "
        f"{len(below)}{named_below}; the rest overlap."
    ]


def markdown(data: dict) -> str:
    summary = data["summary"]
    raters = list(summary)
    names = [row for row in row_order() if row in summary["new"]["rows"]]
    body = []
    for row in names:
        for rater in raters:
            values = summary[rater]["rows"][row]
            attributes = [cell(values["attributes"][attribute]) for attribute in ATTRIBUTES]
            sizes = [values["verdict"]["n"]] + [values["attributes"][a]["n"] for a in ATTRIBUTES]
            body.append([row, rater, cell(values["verdict"]), *attributes, " / ".join(map(str, sizes))])
    header = ["renders", "rater", "verdict", *ATTRIBUTES, "n (verdict / attributes)"]
    sentences = []
    for rater in raters:
        rows = summary[rater]["rows"]
        verdict_row = min(CONDITIONS, key=lambda row: rows[row]["verdict"]["share"])
        row, measure, value = weakest(rows, names)
        sentences.append(
            f"The {rater} rater's verdict is right on {percent(rows[HARD]['verdict'])} of the hard renders "
            f"(all conditions but clean); its weakest condition is {verdict_row} at "
            f"{percent(rows[verdict_row]['verdict'])}, and its weakest cell is {measure} on {row} at "
            f"{percent(value)}."
        )
        black = rows["black background"]["colour_when_right"]
        others = {"right": 0, "n": 0}
        for name in BACKGROUND_COLOURS:
            if name != "black":
                others["right"] += rows[f"{name} background"]["colour_when_right"]["right"]
                others["n"] += rows[f"{name} background"]["colour_when_right"]["n"]
        others = figure([others["right"], others["n"]])
        sentences.append(
            f"On hard renders whose objects have the stated colour, the {rater} rater fails the colour on "
            f"{100 * (1 - black['share']):.1f}% of black-background images (n={black['n']}) and on "
            f"{100 * (1 - others['share']):.1f}% of the other backgrounds' (n={others['n']})."
        )
    if "old" in summary:
        sentences += comparison(summary, names)
        old_ms, new_ms = summary["old"]["ms_per_image"], summary["new"]["ms_per_image"]
        sentences.append(
            f"Judging one 64 px image took {new_ms:.2f} ms with the new rater and {old_ms:.2f} ms with the "
            f"old one ({new_ms / old_ms:.2f}×), mean over the same {summary['new']['images']} renders on "
            f"this machine ({data['machine']}, one process)."
        )
    else:
        new_ms = summary["new"]["ms_per_image"]
        sentences.append(f"Judging one 64 px image took {new_ms:.2f} ms ({data['machine']}, one process).")
    if data["seed"] in TUNING_SEEDS:
        seed_note = "one the rater was tuned on while #26 changed it"
    else:
        seed_note = f"not {' or '.join(map(str, TUNING_SEEDS))}, which the rater was tuned on"
    old_line = ""
    if data["baseline"]:
        old_line = f'"old" is rater.py as committed at `{data["baseline"][:12]}`, loaded from git; "new" is '
        old_line += "this tree's. "
    return "\n".join(
        [
            BEGIN,
            "## The rater's own accuracy (issue #26)",
            "",
            "Measured by `t2i_scripts.eval.rater_accuracy` on hard renders "
            f"(`t2i_trainer.build.hard_renders`): {data['samples']} renders per condition, "
            f"seed {data['seed']} ({seed_note}), half of them correct and half wrong in one stated "
            "attribute. "
            "Every condition but clean is drawn on each of the five backgrounds, softened by a blur "
            "of radius 0-0.8; the rows per background pool those conditions. "
            f"{old_line}Each cell is the share (%) of renders on which the rater agrees with the truth, "
            "with its 95% Wilson interval; an attribute counts on the renders whose prompt states it "
            f"(shape always). Command: `{data['command']}`.",
            "",
            table(header, body),
            "",
            *[f"- {sentence}" for sentence in sentences],
            END,
        ]
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    new = importlib.import_module("t2i_trainer.build.rater")
    raters = {}
    commit = None
    if args.baseline != "none":
        old, commit = load_rater(args.baseline)
        raters["old"] = old.judge
    raters["new"] = new.judge
    started = time.perf_counter()

    def progress(condition: str) -> None:
        seconds = round(time.perf_counter() - started, 1)
        print(json.dumps({"event": "condition", "condition": condition, "seconds": seconds}), flush=True)

    results = measure(raters, args.samples, args.seed, progress)
    data = {
        "command": command_line("t2i_scripts.eval.rater_accuracy", sys.argv[1:] if argv is None else argv),
        "machine": f"{os.cpu_count()} CPUs",
        "samples": args.samples,
        "seed": args.seed,
        "baseline": commit,
        "conditions": list(CONDITIONS),
        "seconds": round(time.perf_counter() - started, 1),
        "summary": summarise(results),
    }
    args.json.write_text(json.dumps(data, indent=2) + "\n")
    write_report(args.report, markdown(data), BEGIN, END)
    print(json.dumps({"event": "done", "report": str(args.report), "json": str(args.json)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
