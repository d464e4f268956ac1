"""bench_store's figures and sentence come from the example's rounds."""

import argparse

from t2i_scripts.bench import bench_store


def entry(stored: int, median: float, p90: float, mean: float) -> dict:
    return {"stored": stored, "inserts": 10, "median_ms": median, "p90_ms": p90, "mean_ms": mean}


def test_the_rows_are_medians_over_rounds_and_the_sentence_follows_them():
    rounds = [
        [entry(100, 2.0, 3.0, 2.5), entry(10000, 1.0, 1.5, 2.0)],
        [entry(100, 4.0, 5.0, 4.5), entry(10000, 3.0, 2.5, 3.0)],
        [entry(100, 3.0, 4.0, 3.5), entry(10000, 2.0, 9.0, 9.0)],
    ]
    rows = bench_store.summarise(rounds)
    assert rows[0] == {
        "stored": 100,
        "median_ms": 3.0,
        "low_ms": 2.0,
        "high_ms": 4.0,
        "p90_ms": 4.0,
        "mean_ms": 3.5,
    }
    assert (rows[1]["median_ms"], rows[1]["p90_ms"], rows[1]["mean_ms"]) == (2.0, 2.5, 3.0)
    text = bench_store.markdown(rows, argparse.Namespace(rounds=3, inserts=10))
    assert text.startswith(bench_store.BEGIN) and text.endswith(bench_store.END)
    assert "| 10,000 | 2.00 (1.00 to 3.00) | 2.50 | 3.00 |" in text
    assert "at 10,000 stored images takes 0.67x the time at 100" in text
