"""``report`` counts one run per (configuration, seed) when an aborted attempt left duplicates: read back from a real
SQLite MLflow store through the CLI, the run it keeps is the completed one before any other, then the newest."""
from __future__ import annotations

import csv
import io

import pytest
from click.testing import CliRunner

from pipelines.cli import main
from pipelines.report.table import collect_runs
from pipelines.vocabulary import ROLE_TRIAL, STATUS_TAG


@pytest.mark.slow  # a new SQLite store's migrations: ~45 s on the shared machine
def test_report_keeps_one_run_per_configuration_and_seed(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("dedup")
    clock = iter(range(1_000, 100_000, 1_000))  # start times (ms): the order the attempts ran in

    def trial(seed: int, status: str, base: float = 0.0, new: float = 0.0, run_status: str = "FINISHED") -> str:
        run = client.create_run(exp, start_time=next(clock), tags={
            "role": ROLE_TRIAL, STATUS_TAG: status, "dataset": "demo", "method": "coop", "dept": "true",
            "seed": str(seed), "seeds": "1,2", "selection_metric": "val_hm", "selection_mode": "max"})
        for k, v in {"method": "coop", "lr": "0.002", "seed": str(seed)}.items():
            client.log_param(run.info.run_id, k, v)
        metrics = {"val_hm": 50.0} | ({"test_base_acc": base, "test_new_acc": new} if status == "completed" else {})
        for k, v in metrics.items():
            client.log_metric(run.info.run_id, k, v)
        client.set_terminated(run.info.run_id, run_status)
        return run.info.run_id

    # First attempt: both seeds complete. It is aborted and the experiment tuned again: seed 1 completes again
    # (newer: it counts); seed 2's rerun was killed mid-trial (newer, but not completed: the completed one counts).
    trial(1, "completed", 10.0, 10.0)
    seed2 = trial(2, "completed", 60.0, 40.0)
    seed1 = trial(1, "completed", 80.0, 60.0)
    trial(2, "running", run_status="KILLED")

    kept = collect_runs(uri, "dedup")
    assert sorted(r.run_id for r in kept) == sorted([seed1, seed2])
    result = CliRunner().invoke(main, ["report", "--mlflow-uri", uri, "--experiment", "dedup", "--format", "csv"])
    assert result.exit_code == 0, result.output
    (row,) = [r for r in csv.DictReader(io.StringIO(result.output)) if r["row"] == "dataset" and r["dataset"] == "demo"]
    # With every run counted, base would be (10 + 60 + 80) / 3, and the killed rerun would leave seed 2 incomplete.
    assert (row["seeds"], float(row["base"]), float(row["new"])) == ("2", 70.0, 50.0), row
