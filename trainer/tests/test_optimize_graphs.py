"""The optimiser's timing check (t2i_trainer.build.optimize_graphs.timed_runs)."""

from t2i_trainer.build import optimize_graphs


class Recorder:
    """A stand-in session that records each run in a shared log."""

    def __init__(self, name: str, log: list[str]):
        self.name = name
        self.log = log

    def run(self, names, feed):
        self.log.append(self.name)
        return [self.name]


def test_graphs_take_turns_in_blocks_after_an_untimed_run(monkeypatch):
    monkeypatch.setattr(optimize_graphs, "QUIET_SECONDS", 0.0)
    log: list[str] = []
    sessions = [Recorder("a", log), Recorder("b", log)]
    results = optimize_graphs.timed_runs(sessions, {}, rounds=7)
    assert [outputs for outputs, _ in results] == [["a"], ["b"]]
    block = optimize_graphs.BLOCK
    assert block == 5
    # The outputs' runs, then a block of 1 + 5 runs each, then 1 + 2 each: never one run of a between b's.
    expected = ["a", "b"] + ["a"] * 6 + ["b"] * 6 + ["a"] * 3 + ["b"] * 3
    assert log == expected
    assert all(ms >= 0 for _, ms in results)
