"""Write a fine-tune job's `shapes_world` pre-training renders as a caption folder (issue #26).

A job whose `pretrain_data` has a `filter` needs its pre-training images on disk, so that the service can have
the reward model judge each one's caption before the trainer sees them. This draws the renders exactly as the
trainer's own `shapes_world` data does (`shapes_world.pretrain_renders`: a training prompt at random, its
render, its caption with the pretraining's count noise) and writes them in the Hugging Face imagefolder layout
the trainer's `folder` data reads: numbered PNG files and a `metadata.jsonl` of `{"file_name", "text"}`.

A caption that states a number also gets `"variants"`: the caption with each number word's count, written in
the world's grammar (`{"one": "a red circle", "two": "two red circles", ...}`). The job's filter compares a
caption with these rather than swapping the number word alone, which would write "one red circles" and could
not judge "a red circle" at all (#26). The trainer reads `file_name` and `text` and ignores the rest.

The folder is written as `<out>.partial` and renamed into place; an existing `<out>` is replaced. Progress and
the result are JSON lines on stdout, as the other job tools print them.

Usage:
    python -m t2i_trainer.jobs.pretrain_renders --images 8192 --seed 0 --out /tmp/renders
"""

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path

from t2i_trainer.build.shapes_world import COUNTS, NUMBER_WORDS, parse_prompt, pretrain_renders

# The most renders one call writes: the job's own bound on `pretrain_data.images`.
MAX_IMAGES = 1_000_000


def emit(event: str, **fields) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def count_variants(caption: str) -> dict[str, str] | None:
    """The caption with each count in the world's grammar, keyed by number word; None when it states none."""
    prompt = parse_prompt(caption)
    if prompt.count is None:
        return None
    return {NUMBER_WORDS[count]: dataclasses.replace(prompt, count=count).text for count in COUNTS}


def write(out: Path, images: int, seed: int, count_noise: float) -> int:
    """Draws `images` renders and writes them to `out`; returns how many were written."""
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    lines = []
    for index, (_, image, caption) in enumerate(pretrain_renders(images, seed, count_noise)):
        name = f"{index:07d}.png"
        image.save(partial / name)
        row = {"file_name": name, "text": caption}
        variants = count_variants(caption)
        if variants is not None:
            row["variants"] = variants
        lines.append(json.dumps(row))
    (partial / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return len(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, required=True, help=f"renders to draw, 1 to {MAX_IMAGES}")
    parser.add_argument("--seed", type=int, default=0, help="the draw's seed, as the trainer's (default 0)")
    parser.add_argument("--count-noise", type=float, default=0.5, help="share of wrong counts (default 0.5)")
    parser.add_argument("--out", type=Path, required=True, help="the folder to write")
    args = parser.parse_args(argv)
    if not 1 <= args.images <= MAX_IMAGES:
        parser.error(f"--images must be between 1 and {MAX_IMAGES}. Given: {args.images}")
    if not 0.0 <= args.count_noise <= 1.0:
        parser.error(f"--count-noise must be between 0 and 1. Given: {args.count_noise}")
    if not args.out.parent.is_dir():
        parser.error(f"--out's parent folder does not exist: {args.out.parent}")
    written = write(args.out, args.images, args.seed, args.count_noise)
    emit("rendered", images=written, out=str(args.out), message=f"{written} pre-training renders written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
