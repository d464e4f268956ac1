"""Sample every training prompt of the shapes world through the service, for the fine-tune trials (issue #5).

`t2i-align serve` with shapes-sd and shapes-reward generates `--images` images of each of the 528 training
prompts (20 steps at guidance 2.0, the served defaults; 8 per request, seeds fixed by the prompt's number).
Each image is judged by the simulated rater (t2i_trainer.build.rater) and keeps the reward model's score that
/generate returned. Writes into --out:

    <seed>-<prompt>-<image>.png
    records.jsonl           {"image", "prompt", "label", "score", "checks"} per image
    samples-rater.jsonl     jobs/finetune.py samples, the rater's label as the reward (good 1, bad 0)
    samples-reward.jsonl    the same images, the reward model's score as the reward (jobs/finetune.py clamps
                            it to [0, 1])
    samples-count.jsonl     a diagnostic, not feedback: reward 1 when the rater counts the stated number of
                            objects, whatever else is wrong (an oracle for the count alone)

t2i_trainer.trials.finetune_trials --samples takes either samples file. 528 prompts x 16 images took 13
minutes on this 2-CPU machine.

Usage:
    .venv-trainer/bin/python -m t2i_scripts.eval.sample_train_set --out build/train-samples --images 16
    .venv-trainer/bin/python -m t2i_scripts.eval.sample_train_set --rewrite build/train-samples  # rewrite
"""

import argparse
import base64
import io
import json
import sys
import time
from pathlib import Path

from PIL import Image

from t2i_scripts.server import NO_RATE_LIMITS, ROOT, ServerProcess, serve_command
from t2i_trainer.build.rater import judge
from t2i_trainer.build.shapes_world import train_prompts

PER_REQUEST = 8
SAMPLE_FILES = ("samples-rater.jsonl", "samples-reward.jsonl", "samples-count.jsonl")


def write_samples(out: Path, records: list[dict]) -> None:
    """records.jsonl and the samples files jobs/finetune.py reads, one per choice of reward."""
    lines = {name: [] for name in ("records.jsonl", *SAMPLE_FILES)}
    for record in records:
        lines["records.jsonl"].append(json.dumps(record))
        rewards = {
            "samples-rater.jsonl": 1.0 if record["label"] == "good" else 0.0,
            "samples-reward.jsonl": record["score"],
            "samples-count.jsonl": 1.0 if record["checks"].get("count") else 0.0,
        }
        for name, value in rewards.items():
            lines[name].append(
                json.dumps({"image": record["image"], "prompt": record["prompt"], "reward": value})
            )
    for name, content in lines.items():
        (out / name).write_text("\n".join(content) + "\n")


def start_server(args: argparse.Namespace) -> ServerProcess:
    """`t2i-align serve` with args' binary, model, reward model, threads and port, without rate limits."""
    command = serve_command(
        args.binary, args.model, threads=args.threads, reward_model=args.reward_model, flags=NO_RATE_LIMITS
    )
    return ServerProcess(command, args.port)


def served(server: ServerProcess, prompt: str, number: int, images: int, seed: int) -> list[dict]:
    """`images` images of the `number`th prompt from /generate, PER_REQUEST per request, their seeds fixed by
    the prompt's number and `seed`."""
    found = []
    for part in range(images // PER_REQUEST):
        body = {"prompt": prompt, "n": PER_REQUEST, "seed": seed * 100_000 + number * 10 + part}
        found += server.post("/generate", body)[1]["images"]
    return found


def server_arguments(description: str, port: int) -> argparse.ArgumentParser:
    """A parser with the flags `start_server` reads: the binary, the model and reward model it serves, its
    port (default `port`) and its threads."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--binary", default="target/release/t2i-align")
    parser.add_argument("--model", default=str(ROOT / "models" / "shapes-sd"))
    parser.add_argument("--reward-model", default=str(ROOT / "models" / "shapes-reward"))
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument("--threads", type=int, default=2)
    return parser


def main() -> int:
    parser = server_arguments(__doc__, 18112)
    parser.add_argument("--out", type=Path, help="folder to write (must not exist)")
    parser.add_argument(
        "--rewrite",
        type=Path,
        help="write the samples files of a folder again from its records.jsonl, without serving",
    )
    parser.add_argument(
        "--images", type=int, default=16, help=f"images per prompt, a multiple of {PER_REQUEST}"
    )
    parser.add_argument("--prompts", type=int, default=0, help="only the first N training prompts (0: all)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.rewrite:
        if not (args.rewrite / "records.jsonl").is_file():
            parser.error(f"--rewrite {args.rewrite} has no records.jsonl")
        records = [json.loads(line) for line in (args.rewrite / "records.jsonl").read_text().splitlines()]
        write_samples(args.rewrite, records)
        return 0
    if args.out is None:
        parser.error("--out is required (or --rewrite)")
    if args.images < PER_REQUEST or args.images % PER_REQUEST:
        parser.error(f"--images must be a positive multiple of {PER_REQUEST}. Given: {args.images}")
    if args.out.exists():
        parser.error(f"--out {args.out} exists; choose a new folder")
    if not Path(args.binary).is_file():
        parser.error(f"--binary {args.binary} does not exist; run `make build` first")
    prompts = train_prompts()
    if args.prompts:
        prompts = prompts[: args.prompts]
    args.out.mkdir(parents=True)
    server = start_server(args)
    records = []
    started = time.perf_counter()
    try:
        for number, prompt in enumerate(prompts):
            images = served(server, prompt.text, number, args.images, args.seed)
            for index, image in enumerate(images):
                png = base64.b64decode(image["png_base64"])
                name = f"{args.seed}-{number}-{index}.png"
                (args.out / name).write_bytes(png)
                rating = judge(Image.open(io.BytesIO(png)).convert("RGB"), prompt)
                checks = {key: check.ok for key, check in rating.reasons.items()}
                records.append(
                    {"image": name, "prompt": prompt.text, "label": rating.label, "score": image["reward"],
                     "checks": checks}
                )  # fmt: skip
            if number % 50 == 0:
                print(
                    json.dumps(
                        {
                            "prompt": number,
                            "of": len(prompts),
                            "seconds": round(time.perf_counter() - started),
                        }
                    )
                )
    finally:
        server.stop()
    write_samples(args.out, records)
    good = sum(record["label"] == "good" for record in records)
    print(json.dumps({"images": len(records), "good": good, "seconds": round(time.perf_counter() - started)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
