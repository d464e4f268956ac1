"""How often the reward model's hindsight relabels are right (#26; a job's `relabel`, docs/fine-tuning.md).

`t2i-align serve` with shapes-sd and shapes-reward serves `--images` images of each of `--prompts` training
prompts drawn at random (the served defaults). The simulated rater (t2i_trainer.build.rater.judge, without
label noise) judges each against its prompt. For every image it judges bad, and for each kind of word a job
could name in `relabel.words` (the number words, the object colours, the shape nouns, the background colours),
the image's siblings are the training prompts that differ from its prompt in that one attribute's word. The
reward model scores the image against its own prompt and each sibling (POST /score), and the job's rule picks
the best sibling when its score reaches the threshold and beats the own prompt's (`jobs::relabel::choose`).
A relabel is right when the rater judges the image good under the chosen sibling.

Writes --json (default models/relabel-accuracy.json) and its section of --report (models/REPORT.md): per kind
and threshold, the images relabelled, the share right with a 95% Wilson interval, and the images that have a
right sibling at all and how many of them were relabelled right.

Usage:
    .venv-trainer/bin/python -m t2i_scripts.eval.relabel_accuracy --binary target/release/t2i-align
"""

import argparse
import base64
import io
import json
import math
import platform
import random
import sys
import time
from pathlib import Path

from PIL import Image

from t2i_scripts.eval import rater_accuracy
from t2i_scripts.eval.sample_train_set import PER_REQUEST, served, server_arguments, start_server
from t2i_scripts.report import command_line
from t2i_scripts.server import ROOT, ServerProcess
from t2i_trainer.build.rater import judge
from t2i_trainer.build.shapes_world import Prompt, parse_prompt, train_prompts

SECTION = "relabel-accuracy"
KINDS = ("count", "colour", "shape", "background")
SCORES_PER_CALL = 32


def kind_of(own: Prompt, other: Prompt) -> str | None:
    """The one attribute two prompts differ in, when their texts differ in exactly one word; else None."""
    own_words, other_words = own.text.split(), other.text.split()
    if (
        len(own_words) != len(other_words)
        or sum(a != b for a, b in zip(own_words, other_words, strict=True)) != 1
    ):
        return None
    differs = [kind for kind in KINDS if getattr(own, kind) != getattr(other, kind)]
    return differs[0] if len(differs) == 1 else None


def siblings(prompts: list[Prompt]) -> dict[str, dict[str, list[str]]]:
    """Each prompt's siblings by kind: the prompts that differ from it in that attribute's word alone."""
    found: dict[str, dict[str, list[str]]] = {prompt.text: {} for prompt in prompts}
    for prompt in prompts:
        for other in prompts:
            kind = kind_of(prompt, other) if other != prompt else None
            if kind is not None:
                found[prompt.text].setdefault(kind, []).append(other.text)
    return found


def choose(own: float, scores: list[float], threshold: float) -> int | None:
    """jobs::relabel::choose: the best sibling if it reaches `threshold` and beats the own prompt's score."""
    finite = [(score, -index) for index, score in enumerate(scores) if math.isfinite(score)]
    if not finite:
        return None
    score, negative_index = max(finite)
    return -negative_index if score >= threshold and (score > own or not math.isfinite(own)) else None


def wilson(right: int, total: int) -> tuple[float, float] | None:
    """The 95% Wilson score interval of a share (rater_accuracy's), in points; None with no trials."""
    if total == 0:
        return None
    low, high = rater_accuracy.wilson(right, total)
    return round(100 * low, 1), round(100 * high, 1)


def score_all(server: ServerProcess, pairs: list[tuple[str, str]]) -> list[float]:
    """The reward model's score of each (base64 PNG, prompt) pair."""
    scores: list[float] = []
    for start in range(0, len(pairs), SCORES_PER_CALL):
        part = pairs[start : start + SCORES_PER_CALL]
        body = {"prompt": [prompt for _, prompt in part], "images": [image for image, _ in part]}
        scores += [float(score) for score in server.post("/score", body)[1]["scores"]]
    return scores


def measure(args: argparse.Namespace, argv: list[str] | None = None) -> dict:
    universe = train_prompts()
    related = siblings(universe)
    drawn = random.Random(args.seed).sample(universe, args.prompts)
    server = start_server(args)
    images = []
    started = time.perf_counter()
    try:
        for number, prompt in enumerate(drawn):
            for image in served(server, prompt.text, number, args.images, args.seed):
                pil = Image.open(io.BytesIO(base64.b64decode(image["png_base64"]))).convert("RGB")
                images.append({"prompt": prompt.text, "png": image["png_base64"], "pil": pil})
        bad = [image for image in images if judge(image["pil"], parse_prompt(image["prompt"])).label == "bad"]
        trials = []
        for image in bad:
            kinds = related[image["prompt"]]
            texts = [image["prompt"]] + [text for kind in KINDS for text in kinds.get(kind, [])]
            scores = dict(
                zip(texts, score_all(server, [(image["png"], text) for text in texts]), strict=True)
            )
            for kind in KINDS:
                others = kinds.get(kind, [])
                if not others:
                    continue
                right = [judge(image["pil"], parse_prompt(text)).label == "good" for text in others]
                trials.append(
                    {"kind": kind, "own": scores[image["prompt"]], "scores": [scores[t] for t in others],
                     "right": right}
                )  # fmt: skip
    finally:
        server.stop()
    table = []
    for kind in KINDS:
        of_kind = [trial for trial in trials if trial["kind"] == kind]
        reachable = sum(any(trial["right"]) for trial in of_kind)
        for threshold in args.thresholds:
            chosen = [(trial, choose(trial["own"], trial["scores"], threshold)) for trial in of_kind]
            relabelled = [(trial, index) for trial, index in chosen if index is not None]
            right = sum(trial["right"][index] for trial, index in relabelled)
            table.append(
                {"kind": kind, "threshold": threshold, "candidates": len(of_kind), "reachable": reachable,
                 "relabelled": len(relabelled), "right": right,
                 "right_share": round(100 * right / len(relabelled), 1) if relabelled else None,
                 "interval": wilson(right, len(relabelled))}
            )  # fmt: skip
    return {
        "command": command_line("t2i_scripts.eval.relabel_accuracy", sys.argv[1:] if argv is None else argv),
        "machine": f"{platform.platform()}, {args.threads} ONNX Runtime threads",
        "prompts": args.prompts,
        "images_per_prompt": args.images,
        "images": len(images),
        "bad": len(bad),
        "seed": args.seed,
        "seconds": round(time.perf_counter() - started, 1),
        "table": table,
    }


def section(data: dict) -> str:
    lines = [
        f"<!-- {SECTION}:begin -->",
        "## Hindsight relabelling: how often the reward model's relabels are right (issue #26)",
        "",
        f"Measured by `{data['command'].strip()}` ({data['machine']}, {data['seconds']} s): shapes-sd "
        f"served {data['images_per_prompt']} images of each of {data['prompts']} training prompts drawn at "
        f"random ({data['images']} images); the simulated rater, without label noise, judged {data['bad']} "
        "of them bad. For each bad image and each kind of word, the siblings are the training prompts that "
        "differ from its prompt in that attribute's word alone; shapes-reward scored the image against its "
        "own prompt and each sibling, and a job's `relabel` rule chose the best sibling when its score "
        "reached the threshold and beat the own prompt's. A relabel is right when the rater judges the image "
        "good under the chosen sibling. `with a right sibling`: the bad images of which some sibling is "
        "right. Intervals: 95% Wilson.",
        "",
        "| words | threshold | bad images with siblings | with a right sibling | relabelled | right "
        "| right share |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in data["table"]:
        share = "n/a"
        if row["right_share"] is not None:
            low, high = row["interval"]
            share = f"{row['right_share']:.1f}% ({low:.1f} to {high:.1f})"
        lines.append(
            f"| {row['kind']} | {row['threshold']} | {row['candidates']} | {row['reachable']} | "
            f"{row['relabelled']} | {row['right']} | {share} |"
        )
    best = {}
    for row in data["table"]:
        if row["interval"] is not None:
            best.setdefault(row["kind"], []).append(row)
    lines.append("")
    for kind, rows in best.items():
        above = [row["threshold"] for row in rows if row["interval"][0] > 50]
        if len(above) == len(rows):
            where = "every threshold measured"
        elif not above:
            where = "no threshold measured"
        else:
            where = "threshold " + ", ".join(str(threshold) for threshold in above) + " alone"
        lows = [row["interval"][0] for row in rows]
        lines.append(
            f"- **{kind}**: more than half of the relabels are right (the 95% interval's lower end above "
            f"50%) at {where}; the lower ends run from {min(lows):.1f}% to {max(lows):.1f}%."
        )
    lines.append(f"<!-- {SECTION}:end -->")
    return "\n".join(lines) + "\n"


def write_section(report: Path, text: str) -> None:
    begin, end = f"<!-- {SECTION}:begin -->", f"<!-- {SECTION}:end -->"
    old = report.read_text() if report.exists() else ""
    if begin in old and end in old:
        new = old[: old.index(begin)] + text.rstrip("\n") + old[old.index(end) + len(end) :]
    else:
        new = old.rstrip("\n") + "\n\n" + text
    report.write_text(new)


def main(argv: list[str] | None = None) -> int:
    parser = server_arguments(__doc__, 18131)
    parser.add_argument("--prompts", type=int, default=60, help="training prompts drawn at random")
    parser.add_argument(
        "--images", type=int, default=8, help=f"images per prompt, a multiple of {PER_REQUEST}"
    )
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, default=ROOT / "models" / "relabel-accuracy.json")
    parser.add_argument("--report", type=Path, default=ROOT / "models" / "REPORT.md")
    args = parser.parse_args(argv)
    if args.images < PER_REQUEST or args.images % PER_REQUEST:
        parser.error(f"--images must be a positive multiple of {PER_REQUEST}. Given: {args.images}")
    if not 1 <= args.prompts <= len(train_prompts()):
        parser.error(f"--prompts must be 1 to {len(train_prompts())}. Given: {args.prompts}")
    if not all(0 < threshold <= 1 for threshold in args.thresholds):
        parser.error(f"--thresholds must each be above 0 and at most 1. Given: {args.thresholds}")
    if not Path(args.binary).is_file():
        parser.error(f"--binary {args.binary} does not exist; run `make build` first")
    data = measure(args, argv)
    args.json.write_text(json.dumps(data, indent=2) + "\n")
    write_section(args.report, section(data))
    print(json.dumps({"event": "done", "json": str(args.json), "seconds": data["seconds"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
