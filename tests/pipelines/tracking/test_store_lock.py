"""Commands starting at once against one new SQLite MLflow file (two datasets launched together): the store's
tables are created once, under the lock beside the database, and every command gets the same experiment. Real
processes (spawned, released together by a barrier), a real SQLite MLflow store."""
from __future__ import annotations

import multiprocessing
import sqlite3

import pytest

pytestmark = pytest.mark.slow  # four processes importing MLflow

N = 4


def _first_run(uri: str, barrier, results, index: int) -> None:
    """What a command does first: open the store and its experiment (``Tracker``), then make a run."""
    import mlflow  # noqa: F401  (imported before the barrier: the processes then open the store together)

    from pipelines.tracking.client import Tracker

    barrier.wait()
    try:
        tracker = Tracker(uri, "dept")
        tracker.create_run(f"run {index}", {"dataset": f"d{index}"})
        results.put((index, "ok", tracker.experiment_id))
    except Exception as e:  # reported to the test, which names it
        results.put((index, "failed", f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"))


def test_commands_starting_at_once_on_a_new_sqlite_file_all_succeed(tmp_path):
    from mlflow.store.db.utils import _get_latest_schema_revision

    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(N), ctx.Queue()
    procs = [ctx.Process(target=_first_run, args=(uri, barrier, results, i)) for i in range(N)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0

    failed = [o for o in outcomes if o[1] != "ok"]
    assert not failed, failed
    assert len({o[2] for o in outcomes}) == 1  # one experiment, whoever made it

    con = sqlite3.connect(db)
    try:
        assert con.execute("select version_num from alembic_version").fetchall() == [(_get_latest_schema_revision(),)]
        assert con.execute("select count(*) from experiments where name = 'dept'").fetchone() == (1,)
        assert con.execute("select count(*) from runs").fetchone() == (N,)
    finally:
        con.close()
    assert (tmp_path / "mlflow.db.lock").is_file()
