"""What the report generators share: writing a marked section into a Markdown file, command lines without
machine paths, and verdicts computed from a figure, its interval and its target."""

from __future__ import annotations

import os
import random
import statistics
from collections.abc import Sequence
from pathlib import Path

from t2i_scripts.server import ROOT


def markers(section: str) -> tuple[str, str]:
    """The comments that fence a report section, so that each measurement rewrites only its own."""
    return f"<!-- {section}:begin -->", f"<!-- {section}:end -->"


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


def keep_section(old: str, begin: str, end: str) -> str:
    """The marked section of a report about to be rewritten (markers included), or "" when it has none: a
    generator that writes a whole file keeps what another one wrote between its markers."""
    if begin not in old or end not in old:
        return ""
    return begin + old.split(begin, 1)[1].split(end, 1)[0] + end


def median_interval(values: list[float], rounds: int = 2000, seed: int = 0) -> tuple[float, float]:
    """A 95% bootstrap interval of the median."""
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(rounds))
    return medians[int(0.025 * rounds)], medians[int(0.975 * rounds) - 1]


def ratio_interval(a: list[float], b: list[float], rounds: int = 2000, seed: int = 0) -> tuple[float, float]:
    """A 95% bootstrap interval of median(a) / median(b)."""
    rng = random.Random(seed)
    ratios = sorted(
        statistics.median(rng.choices(a, k=len(a))) / statistics.median(rng.choices(b, k=len(b)))
        for _ in range(rounds)
    )
    return ratios[int(0.025 * rounds)], ratios[int(0.975 * rounds) - 1]


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
