"""What the command lines of the `make models` stages share: flags, checks, progress lines, .partial folders.

Every stage prints JSON lines (`emit`), refuses a bad flag with exit status 2 and a sentence naming it
(`argparse`'s `parser.error`), and writes its output into `<out>.partial`, renaming it when complete, so an
interrupted stage never leaves a folder that a re-run would trust.
"""

import argparse
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path


def emit(event: str, **fields) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def add_run_flags(parser: argparse.ArgumentParser, smoke: dict) -> None:
    """--threads, --device, --force and --smoke, the same in every stage."""
    parser.add_argument(
        "--threads", type=int, default=2, help="CPU threads for torch (default: 2, this machine's cores)"
    )
    parser.add_argument(
        "--device", default=None, help="torch device (default: cuda when available, else cpu)"
    )
    parser.add_argument("--force", action="store_true", help="redo the work even if the output exists")
    parser.add_argument(
        "--smoke", action="store_true", help=f"a few steps at tiny settings, for tests: {smoke}"
    )


def finish_args(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    defaults: dict,
    smoke: dict,
    at_least_one: Iterable[str],
) -> None:
    """Fill unset settings from `defaults` (or `smoke`), check that counts are positive, and pick a device."""
    for name, value in (smoke if args.smoke else defaults).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("threads", *at_least_one):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1. Given: {getattr(args, name)}")
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"


def check_output_parent(parser: argparse.ArgumentParser, out: Path, flag: str = "--out") -> None:
    parent = out.resolve().parent
    if parent.exists() and not parent.is_dir():
        parser.error(f"the parent of {flag} is a file, not a folder: {parent}")
    if not parent.is_dir():
        parser.error(
            f"the parent folder of {flag} does not exist: {parent}. Create it or choose another {flag}."
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        parser.error(f"the parent folder of {flag} is not writable: {parent}")


def begin_output(out: Path, force: bool) -> Path | None:
    """The `.partial` path to write into, after discarding a stale one; None when `out` is done already."""
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        emit("discard_partial", folder=str(partial))
        shutil.rmtree(partial)
    if out.exists() and not force:
        emit("skip", out=str(out))
        return None
    return partial


def finish_output(partial: Path, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
