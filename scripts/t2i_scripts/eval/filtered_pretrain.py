"""Pre-training renders kept by the reward model's score of their own caption (#26, an experiment).

The job's pre-training term trains on renders of the training prompts with the pretraining's noisy captions
(half with a wrong or missing count, `shapes_world` pre-training data). A control trial with exact captions
moved count by +20.5 points (models/REPORT.md, trial k). This script asks whether the reward model, trained on
the ratings, can stand in for the exact captions by filtering: it draws `--images` renders and captions as a
job does (`shapes_world.pretrain_renders`: a training prompt at random, its render, its noisy caption), has
`t2i-align serve` with shapes-reward score each render against its caption (POST /score), and keeps those
scoring at least `--threshold` (`--rule score`). `--rule relative` instead keeps only renders whose caption
states a number, and of those the ones whose caption the reward model scores above the same caption with each
other number from one to four, written in the world's grammar: a comparison within the image, which an
image's overall score (low on some backgrounds) does not move. It is the rule a job's `pretrain_data.filter`
applies to its `shapes_world` renders, whose metadata carries these variants; `--rule words` is the job's word
swap, for data without variants. It keeps far more of the numbers it judges best (one, four) than of the
others; `--balance` then keeps of each stated number the same share of its drawn captions, the least share
the rule kept of any number, so that the kept renders have the drawn renders' mix of numbers (draw more
renders with `--images` to keep as many).

Writes the kept renders to `--out` as a job's `folder` pre-training data (PNG files and a metadata.jsonl of
`{file_name, text}`), and to `--json` how right the captions' counts are, with 95% Wilson intervals: over all
renders and over the kept ones, per stated count. A caption's count is right when it states the render's
number of objects; a caption without a number states none.

With `--runs FILTERED UNFILTERED` (two t2i_scripts.eval.alignment results: a configuration run on the kept
renders, and the same configuration on all the drawn renders, `--threshold` below every score) the section it
writes in `--report` (models/REPORT.md) also sets the two runs' gains over the pretrained model side by side;
`--render-only` writes that section from `--json` without drawing or scoring again.

Usage:
    .venv-trainer/bin/python -m t2i_scripts.eval.filtered_pretrain --binary target/release/t2i-align
    .venv-trainer/bin/python -m t2i_scripts.eval.alignment --configs rwr-full \\
        --set 'pretrain_data={"kind": "folder", "path": "build/filtered-pretrain"}'
"""

import json
import platform
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

from PIL import Image

from t2i_scripts.eval.relabel_accuracy import score_all, wilson
from t2i_scripts.eval.sample_train_set import server_arguments, start_server
from t2i_scripts.report import command_line, markers, repo_relative, write_report
from t2i_scripts.server import ROOT, png_base64
from t2i_trainer.build.shapes_world import COUNTS, parse_prompt, pretrain_renders
from t2i_trainer.jobs.pretrain_renders import count_variants as world_count_variants


def draw(images: int, seed: int, count_noise: float) -> list[tuple[int | None, str, Image.Image]]:
    """(the render's true count, its noisy caption, the render), drawn as a job draws its pre-training renders
    (`shapes_world.pretrain_renders`)."""
    return [
        (prompt.count, caption, image)
        for prompt, image, caption in pretrain_renders(images, seed, count_noise)
    ]


def accuracy(rows: list[tuple[int | None, str]]) -> dict:
    """How many captions state the right count, overall and per stated count (`none`: no number)."""
    by_stated: dict[str, list[bool]] = {}
    for truth, caption in rows:
        stated = parse_prompt(caption).count
        by_stated.setdefault(str(stated) if stated is not None else "none", []).append(stated == truth)
    table = {}
    for key in [str(count) for count in COUNTS] + ["none"]:
        right = by_stated.get(key, [])
        table[key] = {"captions": len(right), "right": sum(right), "interval": wilson(sum(right), len(right))}
    every = [right for values in by_stated.values() for right in values]
    return {
        "captions": len(every),
        "right": sum(every),
        "interval": wilson(sum(every), len(every)),
        "by_stated_count": table,
    }


def kept_shares(drawn: list[str], kept: list[str]) -> dict:
    """Per background and per object colour named in the captions: the renders drawn, those kept, and the
    kept share over the drawn share (1: the filter kept that kind as often as any other; `none`: the caption
    names none)."""
    table = {}
    for attribute in ("background", "colour"):
        every = Counter(getattr(parse_prompt(caption), attribute) or "none" for caption in drawn)
        chosen = Counter(getattr(parse_prompt(caption), attribute) or "none" for caption in kept)
        table[attribute] = {
            value: {
                "drawn": every[value],
                "kept": chosen[value],
                "ratio": round((chosen[value] / max(len(kept), 1)) / (every[value] / len(drawn)), 2),
            }
            for value in sorted(every)
        }
    return table


def count_variants(caption: str) -> list[str] | None:
    """The caption with each number from one to four, in order (its own among them), or None when it states
    no number: the variants a job's `shapes_world` renders carry (`t2i_trainer.jobs.pretrain_renders`)."""
    variants = world_count_variants(caption)
    return None if variants is None else list(variants.values())


NUMBER_WORDS = ("one", "two", "three", "four")


def word_variants(caption: str) -> list[str] | None:
    """The job's `pretrain_data.filter` over the number words for data without variants, the word swap
    (src/jobs/pretrain_filter.rs): for a caption
    holding exactly one of them as a word, the caption with each in its place, nothing else changed (so
    "two red circles" becomes "one red circles"); None for any other caption ("a red circle" holds none)."""
    tokens = caption.split()
    positions = [index for index, token in enumerate(tokens) if token in NUMBER_WORDS]
    if len(positions) != 1:
        return None
    return [" ".join(tokens[: positions[0]] + [word] + tokens[positions[0] + 1 :]) for word in NUMBER_WORDS]


def relative_keep(caption: str, scores: list[float]) -> bool:
    """Whether `caption` (stating a number) scored above each of its other count variants."""
    own = COUNTS.index(parse_prompt(caption).count)
    return all(scores[own] > score for index, score in enumerate(scores) if index != own)


def stated_key(caption: str) -> str:
    """The number a caption states, as a key (`none`: it states none)."""
    count = parse_prompt(caption).count
    return str(count) if count is not None else "none"


def balance(keys: list[str], kept: list[int]) -> list[int]:
    """The kept renders (indices into `keys`, each drawn render's `stated_key`, in drawing order) thinned so
    that each stated number keeps the same share of its drawn captions: the smallest share the rule kept of
    any number (`none` takes no part). The kept set then has the drawn set's mix of numbers rather than the
    rule's tilt towards the numbers it judges best."""
    drawn_by = Counter(keys)
    kept_by = Counter(keys[index] for index in kept)
    numbers = [key for key in drawn_by if key != "none"]
    if not numbers:
        return []
    share = min(kept_by[key] / drawn_by[key] for key in numbers)
    quota = {key: round(share * drawn_by[key]) for key in numbers}
    taken: Counter = Counter()
    result = []
    for index in sorted(kept):
        key = keys[index]
        if taken[key] < quota.get(key, 0):
            taken[key] += 1
            result.append(index)
    return result


def write_folder(out: Path, kept: list[tuple[str, Image.Image]]) -> None:
    """The kept renders as a job's `folder` pre-training data, written beside `out` and renamed into place."""
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    lines = []
    for index, (caption, image) in enumerate(kept):
        name = f"{index:06d}.png"
        image.save(partial / name)
        lines.append(json.dumps({"file_name": name, "text": caption}))
    (partial / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)


SECTION = "pretrain-filter"


def variant(data: dict) -> str:
    """The rule a result used: `score`, `relative`, or `relative-balanced` (with --balance)."""
    rule = data.get("rule", "score")
    return f"{rule}-balanced" if data.get("balance") else rule


def section_markers(name: str = "score") -> tuple[str, str]:
    """The section's fences in the report: one section per rule (`variant`)."""
    return markers(SECTION if name == "score" else f"{SECTION}-{name}")


SHOWN = ("count", "colour", "background", "shape", "quality")
# Issue #26's target, as alignment.py judges it.
TARGET_COUNT, MAX_DROP = 15.0, 3.0


def interval_text(share: dict) -> str:
    interval = share["interval"]
    return f"{share['right']} of {share['captions']}" + (
        f" ({interval[0]:.1f}% to {interval[1]:.1f}%)" if interval else ""
    )


def run_entry(path: Path) -> dict:
    """The one entry of an alignment.py result (one configuration, one round)."""
    data = json.loads(path.read_text())
    entries = data["entries"]
    if len(entries) != 1:
        raise SystemExit(f"{path}: expected one configuration's result, found {len(entries)}")
    return entries[0] | {"file": repo_relative(path)}


def comparison(filtered: dict, unfiltered: dict) -> list[str]:
    """The two runs side by side, and what their intervals settle."""

    def cell(entry: dict, metric: str) -> str:
        value = entry["metrics"][metric]
        return f"{value['gain']:+.1f} ({value['low']:+.1f} to {value['high']:+.1f})"

    lines = [
        "| pre-training data | result | minutes | " + " | ".join(SHOWN) + " | gate |",
        "|---|---|---|" + "---|" * len(SHOWN) + "---|",
    ]
    for label, entry in (("kept renders", filtered), ("all renders", unfiltered)):
        gate = "passed" if entry["gate"]["passed"] else "refused"
        cells = " | ".join(cell(entry, metric) for metric in SHOWN)
        lines.append(f"| {label} | `{entry['file']}` | {entry['minutes']:.1f} | {cells} | {gate} |")
    lines.append("")
    for metric in ("count", "colour", "quality"):
        kept, every = filtered["metrics"][metric], unfiltered["metrics"][metric]
        if kept["low"] > every["high"]:
            verdict = "the kept renders' interval lies above the other's"
        elif every["low"] > kept["high"]:
            verdict = "the kept renders' interval lies below the other's"
        else:
            verdict = "the intervals overlap, so these two runs do not settle which is higher"
        lines.append(
            f"- **{metric.capitalize()}**: {kept['gain']:+.1f} points on the kept renders against "
            f"{every['gain']:+.1f} on all of them; {verdict}."
        )
    meets = [
        label
        for label, entry in (("kept renders", filtered), ("all renders", unfiltered))
        if entry["metrics"]["count"]["gain"] >= TARGET_COUNT
        and all(entry["metrics"][metric]["low"] >= -MAX_DROP for metric in ("colour", "quality"))
        and entry["minutes"] <= 60
    ]
    lines.append(
        f"- **Target** (count +{TARGET_COUNT:.0f}, colour and quality no lower than -{MAX_DROP:.0f} at their "
        f"intervals' lower ends): {'met by ' + ', '.join(meets) if meets else 'met by neither'}."
    )
    return lines


def shares_lines(shares: dict | None) -> list[str]:
    """What the filter kept of each background and colour, and the kind it kept least of."""
    if not shares:
        return []
    lines = ["| attribute | value | drawn | kept | kept share / drawn share |", "|---|---|---|---|---|"]
    for attribute, values in shares.items():
        for value, row in values.items():
            lines.append(f"| {attribute} | {value} | {row['drawn']} | {row['kept']} | {row['ratio']:.2f} |")
    attribute, value, row = min(
        ((attribute, value, row) for attribute, values in shares.items() for value, row in values.items()),
        key=lambda item: item[2]["ratio"],
    )
    lines += [
        "",
        f"The filter kept least of {attribute} `{value}`: {row['kept']} of {row['drawn']}, "
        f"{row['ratio']:.2f} times its share of the drawn renders.",
        "",
    ]
    return lines


def kept_words(data: dict) -> str:
    if data.get("rule", "score") == "score":
        return f"{data['kept']} scored at least {data['threshold']} and were kept"
    relative = (
        "those whose caption states a number and scored above the same caption with each other number from "
        "one to four"
        if data["rule"] == "relative"
        else "those whose caption holds exactly one of the words one to four and scored above the same "
        "caption with each other of those words in its place, nothing else changed (the job's "
        "`pretrain_data.filter`; balanced over the captions it judged)"
    )
    if not data.get("balance"):
        return f"{data['kept']} were kept: {relative} (a caption without a number is not kept)"
    return (
        f"{data['kept']} were kept: of {relative}, the same share of each stated number's drawn captions "
        "(the least share the rule kept of any number), so the kept renders have the drawn renders' mix of "
        "numbers (a caption without a number is not kept)"
    )


def section(data: dict, runs: tuple[dict, dict] | None) -> str:
    every, kept = data["all"], data["kept_captions"]
    rows = []
    for label, figures in (("drawn", every), ("kept", kept)):
        stated = figures["by_stated_count"]
        cells = " | ".join(interval_text(stated[key]) for key in ("1", "2", "3", "4"))
        rows.append(
            f"| {label} | {figures['captions']} | {interval_text(figures)} | {cells} | "
            f"{stated['none']['captions']} |"
        )
    lines = [
        section_markers(variant(data))[0],
        "## Pre-training renders filtered by the reward model (issue #26, an experiment)"
        + ("" if variant(data) == "score" else f", rule `{data['rule']}`")
        + (", balanced" if data.get("balance") else ""),
        "",
        f"Measured by `{data['command']}` on {data['machine']}: {data['images']} renders drawn as a job "
        "draws its pre-training renders (a training prompt at random, its render, its caption with count "
        f"noise {data['count_noise']}), each scored by shapes-reward against its caption (POST /score); "
        f"{kept_words(data)}, as a job's `folder` pre-training "
        "data. A caption's count is right when it states the render's number of objects (95% Wilson "
        "intervals); one without a number states none.",
        "",
        "| renders | captions | count right | stating one: right | two | three | four | stating no number |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        *shares_lines(data.get("kept_shares")),
    ]
    if runs:
        lines += [
            "The same configuration through the service on the kept renders and on all the drawn renders "
            "(the control), judged on every held-out prompt against the pretrained model (points, 95% paired "
            "intervals; the runs' own sections below give their settings):",
            "",
            *comparison(*runs),
            "",
        ]
    lines.append(section_markers(variant(data))[1])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = server_arguments(__doc__, 18141)
    parser.add_argument("--images", type=int, default=16384, help="renders drawn (default 16384)")
    parser.add_argument("--threshold", type=float, default=0.3, help="least score kept (default 0.3)")
    parser.add_argument(
        "--rule", choices=("score", "relative", "words"), default="score",
        help="keep by the caption's score (--threshold) or by its count against the other counts",
    )  # fmt: skip
    parser.add_argument(
        "--balance", action="store_true",
        help="with --rule relative: keep the same share of the drawn captions stating each number",
    )  # fmt: skip
    parser.add_argument("--count-noise", type=float, default=0.5, help="the captions' count noise (0.5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "filtered-pretrain")
    parser.add_argument("--json", type=Path, default=ROOT / "models" / "pretrain-filter.json")
    parser.add_argument("--report", type=Path, default=ROOT / "models" / "REPORT.md")
    parser.add_argument(
        "--runs", type=Path, nargs=2, metavar=("FILTERED", "UNFILTERED"),
        help="alignment.py results of one configuration on the kept renders and on all of them",
    )  # fmt: skip
    parser.add_argument("--render-only", action="store_true", help="write the section from --json")
    args = parser.parse_args(argv)
    runs = tuple(run_entry(path) for path in args.runs) if args.runs else None
    if args.render_only:
        data = json.loads(args.json.read_text())
        write_report(args.report, section(data, runs), *section_markers(variant(data)))
        return 0
    if args.images < 1:
        parser.error(f"--images must be at least 1. Given: {args.images}")
    if not 0 <= args.count_noise <= 1:
        parser.error(f"--count-noise must be between 0 and 1. Given: {args.count_noise}")
    if args.balance and args.rule == "score":
        parser.error("--balance needs --rule relative or words")
    if not Path(args.binary).is_file():
        parser.error(f"--binary {args.binary} does not exist; run `make build` first")
    started = time.perf_counter()
    drawn = draw(args.images, args.seed, args.count_noise)
    server = start_server(args)
    try:
        if args.rule == "score":
            scores = score_all(server, [(png_base64(image), caption) for _, caption, image in drawn])
            kept = [row for row, score in zip(drawn, scores, strict=True) if score >= args.threshold]
        else:
            variants_of = count_variants if args.rule == "relative" else word_variants
            stating = [(row, variants_of(row[1])) for row in drawn]
            pairs = []
            for row, variants in stating:
                if variants is not None:
                    encoded = png_base64(row[2])  # once per render, for its four captions
                    pairs += [(encoded, text) for text in variants]
            scores = iter(score_all(server, pairs))
            indices = [
                index
                for index, (row, variants) in enumerate(stating)
                if variants is not None and relative_keep(row[1], [next(scores) for _ in variants])
            ]
            if args.balance:
                # Each number's share of its drawn captions; under `words`, of the judged ones, as the job's.
                keys = [
                    stated_key(row[1]) if args.rule == "relative" or variants else "none"
                    for row, variants in stating
                ]
                indices = balance(keys, indices)
            kept = [drawn[index] for index in indices]
    finally:
        server.stop()
    write_folder(args.out, [(caption, image) for _, caption, image in kept])
    data = {
        "command": command_line("t2i_scripts.eval.filtered_pretrain", sys.argv[1:] if argv is None else argv),
        "machine": f"{platform.platform()}, {args.threads} ONNX Runtime threads",
        "images": args.images,
        "rule": args.rule,
        "balance": args.balance,
        "threshold": args.threshold,
        "count_noise": args.count_noise,
        "seed": args.seed,
        "kept": len(kept),
        "seconds": round(time.perf_counter() - started, 1),
        "all": accuracy([(truth, caption) for truth, caption, _ in drawn]),
        "kept_captions": accuracy([(truth, caption) for truth, caption, _ in kept]),
        "kept_shares": kept_shares([caption for _, caption, _ in drawn], [caption for _, caption, _ in kept]),
    }
    args.json.write_text(json.dumps(data, indent=2) + "\n")
    write_report(args.report, section(data, runs), *section_markers(variant(data)))
    print(json.dumps({"event": "done", "kept": len(kept), "json": str(args.json), "out": str(args.out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
