"""The generated reports' conclusions are computed from their figures and intervals (issue #24, item 9):
each sentence in both of its branches, and command lines without machine paths."""

from pathlib import Path

import pytest

from t2i_scripts import targets
from t2i_scripts.bench import bench
from t2i_scripts.report import command_line, repo_relative, verdict


def test_a_verdict_comes_from_the_whole_interval():
    assert verdict(5.0, 6.0, at_most=True, interval=(4.5, 5.5)) == "met"
    assert verdict(7.0, 6.0, at_most=True, interval=(6.5, 7.5)) == "**missed**"
    assert verdict(5.5, 6.0, at_most=True, interval=(5.0, 6.5)).startswith("not settled")
    assert verdict(2.5, 2.0, at_most=False, interval=(2.1, 2.9)) == "met"
    assert verdict(1.5, 2.0, at_most=False, interval=(1.2, 1.9)) == "**missed**"


def test_without_an_interval_the_verdict_says_what_decided_it():
    assert verdict(5.0, 6.0, at_most=True) == "met on the median alone"
    assert verdict(7.0, 6.0, at_most=True, alone="one run") == "**missed** on one run"


def test_best_of_16_is_judged_against_the_one_target_over_its_rounds():
    rounds = bench.round_range([0.5, 0.55, 0.6], [0.1, 0.1, 0.125])
    assert rounds == pytest.approx((4.8, 5.5))
    text = bench.judged(5.5, targets.BEST_OF_16_MAX_COST, True, rounds)
    assert text == "target <= 6x: met; rounds 4.80x to 5.50x"
    over = bench.judged(7.0, targets.BEST_OF_16_MAX_COST, True, (6.5, 7.2))
    assert over.startswith("target <= 6x: **missed**")
    assert bench.round_range([], []) is None
    assert bench.judged(2.3, 2, False, None) == "target >= 2x: met on the median alone"


def test_the_latency_split_names_the_faster_side_from_the_figures():
    faster = bench.latency_split(rust_ms=100.0, rust_ort_ms=95.0, python_ms=120.0, python_ort_ms=105.0)
    assert "t2i-align is faster by 20.0 ms" in faster
    assert "+10.0 ms more inside `run` and +10.0 ms more outside it" in faster
    slower = bench.latency_split(rust_ms=130.0, rust_ort_ms=125.0, python_ms=120.0, python_ort_ms=105.0)
    assert "Optimum is faster by 10.0 ms" in slower
    assert "-20.0 ms more inside `run`" in slower


def test_the_batching_bound_is_computed_from_the_profile():
    flat = bench.batching_bound({2: 4.0, 16: 32.0}, [("Conv", 0.6)], 2)
    assert "can at best run 1.00x" in flat and "a row costs 0% less at 16 rows" in flat
    assert "the largest, Conv, takes 60% of the time" in flat
    cheap = bench.batching_bound({2: 4.0, 16: 8.0}, [], 2)
    assert "can at best run 4.00x" in cheap and "a row costs 75% less" in cheap and "Op profile" not in cheap


def test_command_lines_name_no_machine_path(tmp_path: Path):
    root = tmp_path / "repo"
    argv = [
        "--binary",
        str(root / "target" / "release" / "t2i-align"),
        f"--json={root / 'models' / 'x.json'}",
    ]
    line = command_line("t2i_scripts.bench.bench", [*argv, "--model", "models/shapes-sd"], root=root)
    assert line == (
        "python -m t2i_scripts.bench.bench --binary target/release/t2i-align --json=models/x.json "
        "--model models/shapes-sd"
    )
    assert str(tmp_path) not in line
    assert repo_relative("models/shapes-sd", root) == "models/shapes-sd"


def test_the_committed_reports_name_no_machine_path_and_one_best_of_target():
    repo = Path(__file__).resolve().parents[2]
    for name in ("BENCHMARKS.md", "RELIABILITY.md", "models/REPORT.md"):
        text = (repo / name).read_text()
        assert "/work/" not in text and "/root/" not in text and "/tmp/" not in text, name
    report = (repo / "models" / "REPORT.md").read_text()
    assert "8×" not in report and "at most 6× one image" in report
    assert "best_of 16 costs" in (repo / "BENCHMARKS.md").read_text()
