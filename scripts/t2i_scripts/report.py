"""What the report generators share: writing a marked section into a Markdown file, command lines without
machine paths, and verdicts computed from a figure, its interval and its target."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from t2i_scripts.server import ROOT


def write_report(path: Path, section: str, begin: str, end: str) -> None:
    """Replaces the report's section between the markers, or appends it."""
    text = path.read_text() if path.is_file() else ""
    if begin in text and end in text:
        before, rest = text.split(begin, 1)
        after = rest.split(end, 1)[1]
        text = before + section + after
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


def repo_relative(value: str | Path, root: Path = ROOT) -> str:
    """An absolute path as a path relative to the repository (`root`), so that generated files name no
    folder of the machine they were made on; anything else unchanged."""
    text = str(value)
    if not os.path.isabs(text):
        return text
    return os.path.relpath(text, root)


def command_line(module: str, argv: Sequence[str], root: Path = ROOT) -> str:
    """`python -m <module> <argv>` as a report quotes it: absolute paths, alone or as `--flag=PATH`, made
    relative to the repository."""
    words = []
    for word in argv:
        flag, equals, value = word.partition("=")
        if equals and flag.startswith("--"):
            words.append(f"{flag}={repo_relative(value, root)}")
        else:
            words.append(repo_relative(word, root))
    return " ".join(["python", "-m", module, *words])


def verdict(
    value: float,
    target: float,
    *,
    at_most: bool,
    interval: tuple[float, float] | None = None,
    alone: str = "the median alone",
) -> str:
    """Whether a figure meets its target, from its interval when there is one: `met` when the whole interval
    is on the target's side, `**missed**` when all of it is on the other, and `not settled` when it spans
    the target. Without an interval the figure alone decides, and the verdict says so (`alone`: what the
    figure is)."""

    def meets(figure: float) -> bool:
        return figure <= target if at_most else figure >= target

    if interval is None:
        return ("met" if meets(value) else "**missed**") + f" on {alone}"
    low, high = interval
    if meets(low) and meets(high):
        return "met"
    if not meets(low) and not meets(high):
        return "**missed**"
    return "not settled: its interval spans the target"
