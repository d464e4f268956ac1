"""Pre-training renders kept by the reward model's score of their own caption (#26, an experiment).

The job's pre-training term trains on renders of the training prompts with the pretraining's noisy captions
(half with a wrong or missing count, `shapes_world` pre-training data). A control trial with exact captions
moved count by +20.5 points (models/REPORT.md, trial k). This script asks whether the reward model, trained on
the ratings, can stand in for the exact captions by filtering: it draws `--images` renders and captions as a
job does (`shapes_world.pretrain_renders`: a training prompt at random, its render, its noisy caption), has
`t2i-align serve` with shapes-reward score each render against its caption (POST /score), and keeps those
scoring at least `--threshold`.

Writes the kept renders to `--out` as a job's `folder` pre-training data (PNG files and a metadata.jsonl of
`{file_name, text}`), and to `--json` how right the captions' counts are, with 95% Wilson intervals: over all
renders and over the kept ones, per stated count. A caption's count is right when it states the render's
number of objects; a caption without a number states none.

Usage:
    .venv-trainer/bin/python -m t2i_scripts.eval.filtered_pretrain --binary target/release/t2i-align
    .venv-trainer/bin/python -m t2i_scripts.eval.alignment --configs rwr-full \\
        --set 'pretrain_data={"kind": "folder", "path": "build/filtered-pretrain"}'
"""

import base64
import io
import json
import platform
import shutil
import sys
import time
from pathlib import Path

from PIL import Image

from t2i_scripts.eval.relabel_accuracy import score_all, wilson
from t2i_scripts.eval.sample_train_set import server_arguments, start_server
from t2i_scripts.report import command_line
from t2i_scripts.server import ROOT
from t2i_trainer.build.shapes_world import COUNTS, parse_prompt, pretrain_renders


def draw(images: int, seed: int, count_noise: float) -> list[tuple[int | None, str, Image.Image]]:
    """(the render's true count, its noisy caption, the render), drawn as a job draws its pre-training renders
    (`shapes_world.pretrain_renders`)."""
    return [
        (prompt.count, caption, image)
        for prompt, image, caption in pretrain_renders(images, seed, count_noise)
    ]


def png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


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


def main(argv: list[str] | None = None) -> int:
    parser = server_arguments(__doc__, 18141)
    parser.add_argument("--images", type=int, default=16384, help="renders drawn (default 16384)")
    parser.add_argument("--threshold", type=float, default=0.3, help="least score kept (default 0.3)")
    parser.add_argument("--count-noise", type=float, default=0.5, help="the captions' count noise (0.5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "filtered-pretrain")
    parser.add_argument("--json", type=Path, default=ROOT / "models" / "pretrain-filter.json")
    args = parser.parse_args(argv)
    if args.images < 1:
        parser.error(f"--images must be at least 1. Given: {args.images}")
    if not 0 <= args.count_noise <= 1:
        parser.error(f"--count-noise must be between 0 and 1. Given: {args.count_noise}")
    if not Path(args.binary).is_file():
        parser.error(f"--binary {args.binary} does not exist; run `make build` first")
    started = time.perf_counter()
    drawn = draw(args.images, args.seed, args.count_noise)
    server = start_server(args)
    try:
        scores = score_all(server, [(png_base64(image), caption) for _, caption, image in drawn])
    finally:
        server.stop()
    kept = [row for row, score in zip(drawn, scores, strict=True) if score >= args.threshold]
    write_folder(args.out, [(caption, image) for _, caption, image in kept])
    data = {
        "command": command_line("t2i_scripts.eval.filtered_pretrain", sys.argv[1:] if argv is None else argv),
        "machine": f"{platform.platform()}, {args.threads} ONNX Runtime threads",
        "images": args.images,
        "threshold": args.threshold,
        "count_noise": args.count_noise,
        "seed": args.seed,
        "kept": len(kept),
        "seconds": round(time.perf_counter() - started, 1),
        "all": accuracy([(truth, caption) for truth, caption, _ in drawn]),
        "kept_captions": accuracy([(truth, caption) for truth, caption, _ in kept]),
    }
    args.json.write_text(json.dumps(data, indent=2) + "\n")
    print(json.dumps({"event": "done", "kept": len(kept), "json": str(args.json), "out": str(args.out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
