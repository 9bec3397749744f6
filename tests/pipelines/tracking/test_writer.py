"""The trial logger's background writer (pipelines.tracking.writer) against a real SQLite MLflow store: writes land
in order and whole after a flush, one run's pending writes merge, a failed write comes out of the next call."""
from __future__ import annotations

import threading

import pytest
from mlflow.exceptions import MlflowException

from pipelines.tracking.client import Tracker, metric_at
from pipelines.tracking.writer import ResultWriter, merge_by_run


@pytest.fixture
def tracker(tmp_path):
    return Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "writer")


def history(tracker, run_id, key):
    return [(m.step, m.value) for m in sorted(tracker.client.get_metric_history(run_id, key), key=lambda m: m.step)]


def test_writes_land_in_order_after_flush(tracker):
    a, b = tracker.create_run("a", {}), tracker.create_run("b", {})
    writer = ResultWriter(tracker)
    for epoch in range(1, 6):
        for run_id, offset in ((a, 0.0), (b, 10.0)):
            writer.put(run_id, [metric_at("train_loss", offset + epoch, epoch, 1000 + epoch)],
                       {"trial_status": f"epoch {epoch}"})
    writer.flush()
    assert history(tracker, a, "train_loss") == [(e, float(e)) for e in range(1, 6)]
    assert history(tracker, b, "train_loss") == [(e, 10.0 + e) for e in range(1, 6)]
    # The last tag value wins, as writing them one by one would leave it.
    assert tracker.client.get_run(a).data.tags["trial_status"] == "epoch 5"
    writer.close()


def test_put_returns_before_the_write(tracker):
    # The write is held (a lock the tracker's write waits on): put must not wait for it, flush must.
    run_id = tracker.create_run("held", {})
    gate = threading.Event()
    write = tracker.write

    def held_write(*args):
        gate.wait(30)
        write(*args)

    tracker.write = held_write
    writer = ResultWriter(tracker)
    writer.put(run_id, [metric_at("train_loss", 1.0, 1, 1)], {})
    assert history(tracker, run_id, "train_loss") == []  # queued, not written
    gate.set()
    writer.flush()
    assert history(tracker, run_id, "train_loss") == [(1, 1.0)]
    writer.close()


def test_a_failed_write_comes_out_of_the_next_call(tracker):
    writer = ResultWriter(tracker)
    writer.put("no-such-run", [metric_at("train_loss", 1.0, 1, 1)], {})
    with pytest.raises(MlflowException):
        writer.flush()
    # Raised once; the writer goes on with later writes.
    run_id = tracker.create_run("after", {})
    writer.put(run_id, [metric_at("train_loss", 2.0, 1, 1)], {})
    writer.flush()
    assert history(tracker, run_id, "train_loss") == [(1, 2.0)]
    writer.close()


def test_merge_by_run_keeps_run_and_metric_order():
    m = [metric_at("x", v, s, 0) for v, s in ((1, 1), (2, 1), (3, 2))]
    merged = merge_by_run([("b", [m[0]], {"t": "1"}), ("a", [m[1]], {}), ("b", [m[2]], {"t": "2", "u": "x"})])
    assert [(r, [x.value for x in ms], tags) for r, ms, tags in merged] == [
        ("b", [1.0, 3.0], {"t": "2", "u": "x"}), ("a", [2.0], {})]
