"""Build the default models from nothing, stage by stage, and write the report (issue #3; `make models`).

Stages, each a module of t2i_trainer.build with its own CLI, run here as child processes
(`python -m t2i_trainer.build.<stage>`) in this order:

1. train_sd      the pretrained pipeline (diffusers)    build/shapes-sd-diffusers
2. export_sd     its ONNX export + diffusers weights   models/shapes-sd
3. sample_rated  rated samples of the pretrained model  build/reward-data
4. train_reward  the reward model (and its ablation)    models/shapes-reward
5. report        the measured report                    models/REPORT.md

Every stage writes to a `.partial` folder and renames it when done, and skips itself when its output
exists, so an interrupted build resumes at the stage it was in and never leaves a half-written model in
models/. `--force` rebuilds everything. The seed is fixed (--seed), so a rebuild gives the same models up to
floating-point reduction order.

Each stage's wall time goes to `<build>/timings.json` (a skipped stage keeps the time of the run that built
it), and the report prints them with their sum.

`--smoke` runs every stage at a few steps into a scratch folder (`--build`, `--models`): under 3 minutes on
2 cores. It is what `make test` runs.

Usage:
    python -m t2i_trainer.build.make_models                       # full build: build/ and models/
    python -m t2i_trainer.build.make_models --smoke --build /tmp/b --models /tmp/m
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from t2i_trainer.common.paths import REPO_ROOT, TRAINER_DIR


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--build", type=Path, default=REPO_ROOT / "build", help="scratch folder (%(default)s)"
    )
    parser.add_argument(
        "--models", type=Path, default=REPO_ROOT / "models", help="model folder (%(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of every stage (default: 0)")
    parser.add_argument("--force", action="store_true", help="rebuild every stage")
    parser.add_argument("--smoke", action="store_true", help="a few steps per stage, for tests")
    parser.add_argument(
        "--device", default=None, help="torch device for every stage (default: cuda if present)"
    )
    args = parser.parse_args(argv)
    for name in ("build", "models"):
        folder = getattr(args, name)
        if folder.exists() and not folder.is_dir():
            parser.error(f"--{name} is a file, not a folder: {folder}")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            parser.error(f"cannot create --{name} {folder}: {error.strerror}")
        if not os.access(folder, os.W_OK | os.X_OK):
            parser.error(f"--{name} is not writable: {folder}")
    return args


def stages(args: argparse.Namespace) -> list[tuple[str, Path, list[str]]]:
    build, models = args.build.resolve(), args.models.resolve()
    diffusers_out = build / "shapes-sd-diffusers"
    common = ["--seed", str(args.seed)]
    if args.smoke:
        common.append("--smoke")
    device = ["--device", args.device] if args.device else []
    force = ["--force"] if args.force else []
    return [
        (
            "train_sd",
            diffusers_out,
            ["t2i_trainer.build.train_sd", "--out", str(diffusers_out), *common, *device, *force],
        ),
        (
            "export_sd",
            models / "shapes-sd",
            [
                "t2i_trainer.build.export_sd",
                "--pipeline", str(diffusers_out),
                "--out", str(models / "shapes-sd"),
                *(["--smoke"] if args.smoke else []), *force,
            ],
        ),
        (
            "sample_rated",
            build / "reward-data",
            [
                "t2i_trainer.build.sample_rated",
                "--pipeline", str(diffusers_out),
                "--out", str(build / "reward-data"),
                "--served-defaults", str(models / "shapes-sd" / "t2i-align.json"),
                *common, *device, *force,
            ],
        ),
        (
            "train_reward",
            models / "shapes-reward",
            [
                "t2i_trainer.build.train_reward",
                "--data", str(build / "reward-data"),
                "--tokenizer", str(models / "shapes-sd" / "tokenizer"),
                "--out", str(models / "shapes-reward"),
                *common, *device, *force,
            ],
        ),
        (
            "report",
            models / "REPORT.md",
            [
                "t2i_trainer.build.report",
                "--data", str(build / "reward-data"),
                "--sd", str(models / "shapes-sd"),
                "--reward", str(models / "shapes-reward"),
                "--timings", str(build / "timings.json"),
                "--out", str(models / "REPORT.md"),
            ],
        ),
    ]  # fmt: skip


def train_sd_parts(out: Path) -> dict[str, dict]:
    """The stage records train_sd.py leaves in its folders; empty if any is missing."""
    folders = {
        "vae": out.with_name(out.name + "-stages") / "vae",
        "unet": out.with_name(out.name + "-stages") / "unet",
        "pipeline": out,
        "samples": out.with_name(out.name + "-samples"),
    }
    records = {name: folder / "stage.json" for name, folder in folders.items()}
    if not all(path.is_file() for path in records.values()):
        return {}
    return {name: json.loads(path.read_text()) for name, path in records.items()}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    timings_path = args.build.resolve() / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() and not args.force else {}
    timings["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(), "smoke": args.smoke}
    started = time.monotonic()
    for name, output, command in stages(args):
        existed = output.exists()
        stage_started = time.monotonic()
        print(json.dumps({"event": "stage", "stage": name, "command": command}), flush=True)
        # A stage whose input was rebuilt by hand is stale; --force rebuilds every stage.
        result = subprocess.run([sys.executable, "-m", *command], cwd=TRAINER_DIR, check=False)
        if result.returncode != 0:
            print(f"error: stage {name} failed with exit code {result.returncode}", file=sys.stderr)
            return result.returncode
        seconds = round(time.monotonic() - stage_started, 1)
        if name == "train_sd":
            # train_sd.py resumes by sub-stage and records each one's time in its folder.
            parts = train_sd_parts(output)
            if parts:
                total = round(sum(part["seconds"] for part in parts.values()), 1)
                finished = max(part["finished"] for part in parts.values())
                timings[name] = {"seconds": total, "finished": finished, "parts": parts}
        elif name != "report" and (args.force or not existed):
            finished = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            timings[name] = {"seconds": seconds, "finished": finished}
        timings_path.write_text(json.dumps(timings, indent=2) + "\n")
    print(json.dumps({"event": "done", "seconds": round(time.monotonic() - started, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
