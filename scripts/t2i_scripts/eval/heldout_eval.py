"""Every held-out prompt, for several model versions: the rater's accuracy and paired bootstrap intervals.

The fine-tune job's own evaluation (t2i_scripts.eval.finetune_loop) judges 28 held-out prompts, and
bench_reward's prompts are another 20: a 15-point target on count cannot be settled by either, since which
prompts are drawn moves count by several points. This judges all 282 held-out prompts of the shapes world
(6 colour, 6 count, 270 combination) for each version, through `/generate` with the same seeds for every
version, and reports each attribute's accuracy with the gain over the first version and its 95% interval from
a paired bootstrap over prompts (prompts resampled with replacement, the same draw for both versions); the
JSON's gains give diversity (the mean over prompts of a prompt's pairwise RMS distance) the same interval.

Each version is served on its own from its folder (an Optimum export, such as a registered version's
`<data-dir>/models/<id>/`; `t2i_scripts.eval.finetune_loop --keep-versions DIR` keeps the loop's).

Writes --json and the section between the markers below in --report.

Usage (the light .venv is enough):
    .venv/bin/python -m t2i_scripts.eval.heldout_eval --binary target/release/t2i-align \\
        --model pretrained=models/shapes-sd --model "round 1=build/loop/versions/round-1" ...
"""

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from t2i_scripts.bench import bench_reward
from t2i_scripts.report import write_report
from t2i_scripts.server import NO_RATE_LIMITS, ROOT, ServerProcess, serve_command
from t2i_trainer.build.shapes_world import heldout_prompts
from t2i_trainer.jobs.evaluate import judge_prompt

BEGIN = "<!-- heldout-eval:begin -->"
END = "<!-- heldout-eval:end -->"
ATTRIBUTES = ("count", "colour", "background", "shape")
# What gets a gain with an interval: the attributes, and the quality proxy of models/REPORT.md (images whose
# every object the rater could find and name).
MEASURES = (*ATTRIBUTES, "quality")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--binary", default="target/release/t2i-align", help="the t2i-align binary")
    parser.add_argument(
        "--model", action="append", required=True, metavar="NAME=FOLDER",
        help="a version to judge, by a name for the report and its folder; the first is the baseline",
    )  # fmt: skip
    parser.add_argument("--port", type=int, default=18097)
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (default: 2)")
    parser.add_argument("--images-per-prompt", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=None, help="only the first N held-out prompts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bootstrap", type=int, default=4000, help="bootstrap resamples (default: 4000)")
    parser.add_argument("--report", type=Path, default=ROOT / "models" / "REPORT.md")
    parser.add_argument("--json", type=Path, default=ROOT / "models" / "heldout-eval.json")
    args = parser.parse_args(argv)
    models = []
    for spec in args.model:
        name, sep, folder = spec.partition("=")
        if not sep or not name.strip() or not folder.strip():
            parser.error(f"--model must be NAME=FOLDER. Given: {spec!r}")
        if not (Path(folder) / "model_index.json").is_file():
            parser.error(f"--model {spec!r}: {folder} has no model_index.json (not a model folder)")
        models.append((name.strip(), folder.strip()))
    if len({name for name, _ in models}) != len(models):
        parser.error("--model names must differ")
    args.models = models
    if args.images_per_prompt < 1 or args.images_per_prompt > 8:
        parser.error(f"--images-per-prompt must be between 1 and 8. Given: {args.images_per_prompt}")
    return args


def judge_version(args: argparse.Namespace, folder: str, prompts: list) -> tuple[list[dict], float]:
    """Per prompt, t2i_trainer.jobs.evaluate's row: each attribute's [right, judged], the good images' and the
    quality proxy's [count, judged] and the images' diversity; and the seconds taken."""
    server = ServerProcess(
        serve_command(args.binary, folder, threads=args.threads, flags=NO_RATE_LIMITS), args.port
    )
    started = time.perf_counter()

    def one(index: int) -> dict:
        prompt = prompts[index]
        body = {"prompt": prompt.text, "n": args.images_per_prompt, "seed": args.seed + 1000 * index}
        _, payload = server.post("/generate", body)
        pixels = [np.asarray(bench_reward.png_image(image["png_base64"])) for image in payload["images"]]
        return judge_prompt(prompt.text, pixels)

    try:
        # A few requests in flight: the server batches their denoising steps.
        with ThreadPoolExecutor(max_workers=4) as pool:
            rows = list(pool.map(one, range(len(prompts))))
    finally:
        server.stop()
    return rows, time.perf_counter() - started


def counts(rows: list[dict], measure: str) -> tuple[np.ndarray, np.ndarray]:
    """Per prompt, [right, judged] of an attribute or of the quality proxy. A prompt that does not state the
    attribute judged none of it: t2i_trainer.jobs.evaluate.judge_prompt leaves it out of the row."""
    pairs = [
        row["quality"] if measure == "quality" else row["attributes"].get(measure, (0, 0)) for row in rows
    ]
    right = np.array([pair[0] for pair in pairs], dtype=np.float64)
    judged = np.array([pair[1] for pair in pairs], dtype=np.float64)
    return right, judged


def diversity(rows: list[dict]) -> float | None:
    values = [row["diversity"] for row in rows if row.get("diversity") is not None]
    return float(np.mean(values)) if values else None


def share(rows: list[dict], attribute: str) -> float | None:
    right, judged = counts(rows, attribute)
    return float(right.sum() / judged.sum()) if judged.sum() else None


def paired_gain(
    base: list[dict], other: list[dict], attribute: str, resamples: int, seed: int
) -> dict | None:
    """other's accuracy minus base's, and the 2.5th and 97.5th percentiles of that difference when the
    prompts are resampled with replacement (the same draw for both: the seeds are shared)."""
    base_right, judged = counts(base, attribute)
    other_right, other_judged = counts(other, attribute)
    if not np.array_equal(judged, other_judged):
        raise ValueError(f"{attribute}: the versions were judged on different images")
    if not judged.sum():
        return None
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(judged), size=(resamples, len(judged)))
    totals = judged[draws].sum(axis=1)
    keep = totals > 0
    differences = (other_right[draws].sum(axis=1) - base_right[draws].sum(axis=1))[keep] / totals[keep]
    low, high = np.percentile(differences, [2.5, 97.5])
    return {
        "gain": float((other_right.sum() - base_right.sum()) / judged.sum()),
        "low": float(low),
        "high": float(high),
    }


def paired_diversity_gain(base: list[dict], other: list[dict], resamples: int, seed: int) -> dict | None:
    """other's mean diversity minus base's, over the prompts where both have one, and the 2.5th and 97.5th
    percentiles of that difference when those prompts are resampled with replacement (the same draw for
    both)."""
    pairs = [
        (before["diversity"], after["diversity"])
        for before, after in zip(base, other, strict=True)
        if before.get("diversity") is not None and after.get("diversity") is not None
    ]
    if not pairs:
        return None
    differences = np.array([after - before for before, after in pairs], dtype=np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(differences), size=(resamples, len(differences)))
    low, high = np.percentile(differences[draws].mean(axis=1), [2.5, 97.5])
    return {"gain": float(differences.mean()), "low": float(low), "high": float(high)}


def summarise(results: dict, args: argparse.Namespace) -> dict:
    names = list(results)
    base = results[names[0]]["rows"]
    summary = {}
    for name in names:
        rows = results[name]["rows"]
        summary[name] = {
            "folder": results[name]["folder"],
            "seconds": round(results[name]["seconds"], 1),
            "attributes": {attribute: share(rows, attribute) for attribute in ATTRIBUTES},
            "good": sum(row["good"][0] for row in rows) / (len(rows) * args.images_per_prompt),
            "quality": share(rows, "quality"),
            "diversity": diversity(rows),
            "gains": {}
            if name == names[0]
            else {
                **{
                    measure: paired_gain(base, rows, measure, args.bootstrap, args.seed)
                    for measure in MEASURES
                },
                "diversity": paired_diversity_gain(base, rows, args.bootstrap, args.seed),
            },
        }
    return summary


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def interval(gain: dict | None) -> str:
    if gain is None:
        return "n/a"
    return f"{100 * gain['gain']:+.1f} ({100 * gain['low']:+.1f} to {100 * gain['high']:+.1f})"


def markdown(data: dict) -> str:
    summary = data["summary"]
    names = list(summary)
    header = ["version", *ATTRIBUTES, "all right", "quality", "diversity"]
    lines = [
        BEGIN,
        "## Every held-out prompt (issue #5)",
        "",
        f"Measured by `{data['command']}` on {data['machine']}: each version served on its own, "
        f"{'all ' if data['prompts'] == len(heldout_prompts()) else ''}{data['prompts']} held-out prompts × "
        f"{data['images_per_prompt']} images, the same seeds for every "
        "version, judged by the simulated rater. An attribute's share is over the images whose prompt "
        "states it (background: the combination prompts). Quality is the share of images whose every object "
        "the rater could find and name; diversity the mean over prompts of the mean pairwise RMS distance "
        "between a prompt's images. Gains are points over the first row, with the 95% interval of a paired "
        f"bootstrap over prompts ({data['bootstrap']} resamples).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for name in names:
        row = summary[name]
        cells = [f"{name} (`{row['folder']}`)"]
        cells += [percent(row["attributes"][attribute]) for attribute in ATTRIBUTES]
        cells += [percent(row["good"]), percent(row.get("quality"))]
        cells.append("n/a" if row.get("diversity") is None else f"{row['diversity']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "| gain over " + names[0] + " | " + " | ".join(MEASURES) + " |",
        "|---|" + "---|" * len(MEASURES),
    ]
    for name in names[1:]:
        gains = summary[name]["gains"]
        lines.append("| " + name + " | " + " | ".join(interval(gains.get(m)) for m in MEASURES) + " |")
    lines.append(END)
    return "\n".join(lines)


def to_json(data: dict) -> str:
    """The figures indented, and the per-prompt rows that back them one to a line."""
    head = json.dumps({key: value for key, value in data.items() if key != "rows"}, indent=2)
    models = [
        f"    {json.dumps(name)}: [\n"
        + ",\n".join("      " + json.dumps(row, separators=(",", ":")) for row in rows)
        + "\n    ]"
        for name, rows in data["rows"].items()
    ]
    return head[:-2] + ',\n  "rows": {\n' + ",\n".join(models) + "\n  }\n}\n"


def run(argv=None) -> dict:
    """Judges the versions, writes --json and the report's section, and returns what it wrote."""
    args = parse_args(argv)
    if not Path(args.binary).is_file():
        sys.exit(f"--binary {args.binary} does not exist; run `make build` first")
    prompts = heldout_prompts()[: args.prompts]
    results = {}
    for name, folder in args.models:
        rows, seconds = judge_version(args, folder, prompts)
        results[name] = {"folder": folder, "rows": rows, "seconds": seconds}
        print(json.dumps({"event": "judged", "model": name, "seconds": round(seconds, 1)}), flush=True)
    data = {
        "command": "python -m t2i_scripts.eval.heldout_eval "
        + " ".join(f"--model '{n}={f}'" for n, f in args.models),
        "machine": f"{os.cpu_count()} CPUs",
        "prompts": len(prompts),
        "images_per_prompt": args.images_per_prompt,
        "bootstrap": args.bootstrap,
        "seed": args.seed,
        "summary": summarise(results, args),
        "rows": {name: result["rows"] for name, result in results.items()},
    }
    args.json.write_text(to_json(data))
    write_report(args.report, markdown(data), BEGIN, END)
    print(json.dumps({"event": "done", "report": str(args.report)}), flush=True)
    return data


def main(argv=None) -> int:
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
