"""What storing one generated image costs `/generate`, at several numbers of stored images (#29: time outside
ONNX Runtime).

Runs `examples/image_store.rs` (build it with `cargo build --release --example image_store`) for `--rounds`
rounds: each round fills a throwaway embedded store (SQLite and a local folder, full durability: files
fsynced, image rows through the pool that does not wait for the disk) to each size, with
`--image-retention` at that size, then times `--inserts` more inserts, each of which is at the limit and
drops an old image, as on a server that has been up a while. The figures are the medians over the rounds of
each round's median and p90 milliseconds per insert. Writes its section of BENCHMARKS.md between the markers
below.

Usage:
    make bench-store
    python -m t2i_scripts.bench.bench_store --example target/release/examples/image_store
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
from pathlib import Path

from t2i_scripts.report import write_report
from t2i_scripts.server import ROOT

BEGIN, END = "<!-- store:begin -->", "<!-- store:end -->"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--example", type=Path, default=ROOT / "target" / "release" / "examples" / "image_store"
    )
    parser.add_argument(
        "--sizes", default="100,1000,10000", help="numbers of stored images (default 100,1000,10000)"
    )
    parser.add_argument(
        "--inserts", type=int, default=300, help="timed inserts per size and round (default 300)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds, the sizes in turn in each (default 3)")
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args(argv)
    if not args.example.is_file():
        parser.error(
            f"--example {args.example} does not exist; run `cargo build --release --example image_store`"
        )
    if args.inserts < 1 or args.rounds < 1:
        parser.error("--inserts and --rounds must be at least 1")
    return args


def run_round(example: Path, sizes: str, inserts: int) -> list[dict]:
    output = subprocess.run(
        [str(example), "--sizes", sizes, "--inserts", str(inserts)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(output)["sizes"]


def summarise(rounds: list[list[dict]]) -> list[dict]:
    """Per size: the median over rounds of each round's median and p90, and the rounds' range of medians."""
    rows = []
    for per_size in zip(*rounds, strict=True):
        medians = [entry["median_ms"] for entry in per_size]
        rows.append(
            {
                "stored": per_size[0]["stored"],
                "median_ms": statistics.median(medians),
                "low_ms": min(medians),
                "high_ms": max(medians),
                "p90_ms": statistics.median(entry["p90_ms"] for entry in per_size),
                "mean_ms": statistics.median(entry["mean_ms"] for entry in per_size),
            }
        )
    return rows


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        BEGIN,
        "## Storing a generated image (#29: time outside ONNX Runtime)",
        "",
        "Measured by `python -m t2i_scripts.bench.bench_store` (`examples/image_store.rs`) on"
        f" {platform.platform()}: {args.rounds} rounds of {args.inserts} inserts at each size, into a"
        " throwaway embedded store"
        " (SQLite and a local folder at `--durability full`: the file fsynced, then the row committed through"
        " the pool that does not wait for the disk, `synchronous=NORMAL`) filled to the size with"
        " `--image-retention` at the size, so that every insert is at the limit. Each `/generate` stores its"
        " images this way before it answers. Medians over the rounds of each round's figures.",
        "",
        "| images stored | median ms per insert (rounds' range) | p90 ms | mean ms |",
        "|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['stored']:,} | {row['median_ms']:.2f} ({row['low_ms']:.2f} to {row['high_ms']:.2f}) |"
            f" {row['p90_ms']:.2f} | {row['mean_ms']:.2f} |"
        )
    first, last = rows[0], rows[-1]
    ratio = last["median_ms"] / first["median_ms"]
    lines += [
        "",
        f"The median insert at {last['stored']:,} stored images takes {ratio:.2f}x the time at"
        f" {first['stored']:,}. The oldest images are swept after every hundredth of the retention"
        " (`storage::retention_sweep_every`), so the mean carries each sweep's cost shared over the inserts"
        " between sweeps.",
        END,
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    rounds = [run_round(args.example, args.sizes, args.inserts) for _ in range(args.rounds)]
    rows = summarise(rounds)
    write_report(args.out, markdown(rows, args), BEGIN, END)
    print(json.dumps({"rows": rows, "out": str(args.out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
