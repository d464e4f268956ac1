"""The report helpers that generators share: marked sections and bootstrap intervals."""

from t2i_scripts.report import keep_section, median_interval, ratio_interval, write_report

BEGIN, END = "<!-- x:begin -->", "<!-- x:end -->"


def test_keep_section_returns_the_marked_text_with_its_markers():
    old = f"# Title\n\nold body\n\n{BEGIN}\n## Kept\nrow\n{END}\n"
    assert keep_section(old, BEGIN, END) == f"{BEGIN}\n## Kept\nrow\n{END}"
    assert keep_section("no markers here", BEGIN, END) == ""
    assert keep_section(f"{BEGIN} without an end", BEGIN, END) == ""


def test_a_rewritten_file_keeps_another_generators_section(tmp_path):
    report = tmp_path / "BENCHMARKS.md"
    report.write_text("# Benchmarks\n\nold figures\n")
    write_report(report, f"{BEGIN}\nfamilies v1\n{END}", BEGIN, END)
    # A generator that rewrites the whole file carries the section over, as bench.py does.
    kept = keep_section(report.read_text(), BEGIN, END)
    report.write_text("# Benchmarks\n\nnew figures\n" + f"\n{kept}\n")
    write_report(report, f"{BEGIN}\nfamilies v2\n{END}", BEGIN, END)
    text = report.read_text()
    assert "new figures" in text and "old figures" not in text
    assert text.count(BEGIN) == 1 and "families v2" in text and "families v1" not in text


def test_bootstrap_intervals_hold_the_median_and_the_ratio():
    fast = [10.0, 11.0, 9.5, 10.5, 10.2, 9.8, 10.1]
    slow = [20.0, 21.0, 19.0, 20.5, 19.5, 20.2, 20.1]
    low, high = median_interval(fast)
    assert low <= 10.1 <= high and high - low < 1.5
    low, high = ratio_interval(fast, slow)
    assert low <= 10.1 / 20.1 <= high and high < 1
