"""The reward model's auxiliary loss, measured over seeds (issue #26 item 6; the paper's Fig. 3a ablation).

train_reward.py trains the shipped model with lambda = 0.5 (MSE plus lambda times the prompt-classification
loss) and, once, the same model with lambda = 0. One seed cannot say which is better: this trains both at each
of several seeds on the same rated data, each seed's pair from the same initial weights and batches, and
measures pairwise accuracy on the held-out images of seen and of held-out prompts (train_reward.evaluate).

Figures, per lambda and split: the mean accuracy over seeds with its 95% t interval; and the paired difference
(lambda = 0.5 minus lambda = 0, seed by seed) with its 95% t interval. The conclusion sentences are computed
from those intervals: a difference whose interval excludes 0 is settled, one that holds 0 is not.

The labels are the current rater's: each image of --data is judged again before training (sample_rated.py
judged them with the rater of its day), so the measurement follows the rater (--keep-labels turns that off).

Writes --json (models/reward-ablation.json) and the section between the markers below in --report.

Usage:
    python -m t2i_scripts.eval.reward_ablation --data build/reward-data \\
        --tokenizer models/shapes-sd/tokenizer --seeds 0 1 2 3 4
"""

import argparse
import json
import math
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from t2i_scripts.report import write_report
from t2i_scripts.server import ROOT

BEGIN = "<!-- reward-ablation:begin -->"
END = "<!-- reward-ablation:end -->"
SPLITS = {"eval_seen": "seen prompts", "eval_unseen": "held-out prompts"}
# Two-sided 95% quantiles of Student's t, by degrees of freedom (1 to 30).
T_975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def mean_interval(values: Sequence[float]) -> dict:
    """The mean of `values` and its 95% t interval (n - 1 degrees of freedom, at most 30 in the table)."""
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    if len(values) < 2:
        return {"mean": mean, "low": None, "high": None, "n": len(values)}
    half = T_975[min(len(values) - 1, len(T_975)) - 1] * float(values.std(ddof=1)) / math.sqrt(len(values))
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": len(values)}


def summarise(runs: list[dict], weights: Sequence[float]) -> dict:
    """Per split: each lambda's accuracy over seeds, and the paired difference of the last lambda minus the
    first, seed by seed."""
    by = {(run["aux_weight"], run["seed"]): run for run in runs}
    seeds = sorted({run["seed"] for run in runs})
    first, last = weights[0], weights[-1]
    summary = {}
    for split in SPLITS:
        accuracy = {
            str(weight): mean_interval([by[(weight, seed)]["eval"][split] for seed in seeds])
            for weight in weights
        }
        paired = [by[(last, seed)]["eval"][split] - by[(first, seed)]["eval"][split] for seed in seeds]
        summary[split] = {"accuracy": accuracy, "difference": mean_interval(paired)}
    return summary


def span(figure: dict, sign: str = "") -> str:
    """`mean (low to high)` in points."""
    mean, low, high = (100 * figure[key] for key in ("mean", "low", "high"))
    return f"{mean:{sign}.1f} ({low:{sign}.1f} to {high:{sign}.1f})"


def verdict(difference: dict, first: float, last: float, where: str) -> str:
    """One sentence from the paired difference's interval."""
    low, high = difference["low"], difference["high"]
    figures = f"{span(difference, '+')} points, 95% interval over {difference['n']} seeds"
    if low > 0:
        return f"On {where}, lambda = {last} scores higher than lambda = {first}: {figures}."
    if high < 0:
        return f"On {where}, lambda = {last} scores lower than lambda = {first}: {figures}."
    return f"On {where}, the difference of lambda = {last} over lambda = {first} is not settled: {figures}."


def recommendation(summary: dict, first: float, last: float, shipped: float) -> str:
    """Which lambda the measurement supports, from both splits' intervals."""
    lows = [summary[split]["difference"]["low"] for split in SPLITS]
    highs = [summary[split]["difference"]["high"] for split in SPLITS]
    if all(high < 0 for high in highs):
        supported = f"lambda = {first}, which is better on both splits"
    elif all(low > 0 for low in lows):
        supported = f"lambda = {last}, which is better on both splits"
    elif any(high < 0 for high in highs) and not any(low > 0 for low in lows):
        supported = f"lambda = {first}, better on one split and not worse on the other"
    elif any(low > 0 for low in lows) and not any(high < 0 for high in highs):
        supported = f"lambda = {last}, better on one split and not worse on the other"
    else:
        supported = "neither lambda over the other"
    return (
        f"The measurement supports {supported}; the shipped model (models/shapes-reward) uses "
        f"lambda = {shipped}."
    )


def markdown(data: dict) -> str:
    weights = data["aux_weights"]
    first, last = weights[0], weights[-1]
    summary = data["summary"]
    lines = [
        BEGIN,
        "## The auxiliary loss over seeds (issue #26)",
        "",
        "Measured by `python -m t2i_scripts.eval.reward_ablation` "
        f"({data['machine']}, {data['minutes']:.1f} min): the reward model trained at lambda = "
        f"{', '.join(str(w) for w in weights)} with seeds {', '.join(str(s) for s in data['seeds'])} "
        f"on the same {data['train_images']} rated training images "
        "(each seed's models start from the same weights and see the same batches), and pairwise accuracy "
        "on the held-out images as above. Intervals are 95% t intervals over seeds; the difference is paired "
        "by seed."
        + (
            ""
            if data.get("relabelled") is None
            else f" The current rater judged every image again first: {data['relabelled']} labels changed."
        ),
        "",
        "| held-out images of | pairs | "
        + " | ".join(f"lambda = {w}" for w in weights)
        + f" | lambda = {last} minus lambda = {first} |",
        "|---|---|" + "---|" * (len(weights) + 1),
    ]
    for split, name in SPLITS.items():
        cells = [name, str(data["pairs"][split])]
        cells += [span(summary[split]["accuracy"][str(weight)]) for weight in weights]
        cells.append(span(summary[split]["difference"], "+"))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += [verdict(summary[split]["difference"], first, last, name) for split, name in SPLITS.items()]
    lines += ["", recommendation(summary, first, last, data["shipped_aux_weight"]), END]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=ROOT / "build" / "reward-data")
    parser.add_argument("--tokenizer", type=Path, default=ROOT / "models" / "shapes-sd" / "tokenizer")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--aux-weights", type=float, nargs=2, default=[0.0, 0.5], metavar=("FIRST", "LAST"))
    parser.add_argument("--epochs", type=int, default=None, help="passes over the training images")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=ROOT / "models" / "reward-ablation.json")
    parser.add_argument("--report", type=Path, default=ROOT / "models" / "REPORT.md")
    parser.add_argument("--render-only", action="store_true", help="rewrite the section from --json")
    parser.add_argument("--keep-labels", action="store_true", help="train on --data's labels as they are")
    args = parser.parse_args(argv)
    if not args.render_only:
        if len(set(args.seeds)) < 3:
            parser.error(f"--seeds needs at least 3 distinct seeds. Given: {args.seeds}")
        for name in ("images.npy", "records.jsonl"):
            if not (args.data / name).is_file():
                parser.error(f"--data has no {name} (make it with sample_rated.py): {args.data}")
    return args


def relabel(images, records: list[dict]) -> int:
    """Judges every image again with the current rater; returns how many labels changed."""
    from PIL import Image

    from t2i_trainer.build.rater import judge
    from t2i_trainer.build.shapes_world import parse_prompt

    changed = 0
    for record in records:
        label = judge(Image.fromarray(images[record["index"]]), parse_prompt(record["prompt"])).label
        changed += label != record["label"]
        record["label"] = label
    return changed


def run(args: argparse.Namespace) -> dict:
    import torch
    from transformers import CLIPTokenizer

    from t2i_trainer.build import train_reward

    torch.set_num_threads(args.threads)
    images, records = train_reward.load_data(args.data)
    changed = 0 if args.keep_labels else relabel(images, records)
    tokenizer = CLIPTokenizer.from_pretrained(args.tokenizer)
    started = time.monotonic()
    runs = []
    for seed in args.seeds:
        for weight in args.aux_weights:
            settings = argparse.Namespace(
                seed=seed,
                device="cpu",
                epochs=args.epochs or train_reward.DEFAULTS["epochs"],
                batch=train_reward.DEFAULTS["batch"],
                lr=2e-3,
            )
            began = time.monotonic()
            model, _ = train_reward.train(settings, weight, images, records, tokenizer)
            evaluation = train_reward.evaluate(model, tokenizer, images, records, "cpu", seed)
            run = {
                "seed": seed,
                "aux_weight": weight,
                "eval": {split: evaluation[split]["reward_model"]["accuracy"] for split in SPLITS},
                "seconds": round(time.monotonic() - began, 1),
            }
            pairs = {split: evaluation[split]["reward_model"]["pairs"] for split in SPLITS}
            print(json.dumps({"event": "run", **run}), flush=True)
            runs.append(run)
    shipped = json.loads((ROOT / "models" / "shapes-reward" / "metrics.json").read_text())
    return {
        "machine": f"{torch.get_num_threads()} torch threads, {platform.platform()}",
        "command": "python -m t2i_scripts.eval.reward_ablation " + " ".join(sys.argv[1:]),
        "data": str(args.data),
        "train_images": sum(record["split"] == "train" for record in records),
        "relabelled": None if args.keep_labels else changed,
        "pairs": pairs,
        "seeds": list(args.seeds),
        "aux_weights": list(args.aux_weights),
        "epochs": settings.epochs,
        "shipped_aux_weight": shipped["settings"]["aux_weight"],
        "minutes": (time.monotonic() - started) / 60,
        "runs": runs,
        "summary": summarise(runs, args.aux_weights),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render_only:
        data = json.loads(args.json.read_text())
    else:
        data = run(args)
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    write_report(args.report, markdown(data), BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
