"""Trials that cannot succeed end failed, once: a diverging trial (its train_loss not finite) and a configuration
error that only a trial can see (a batch larger than its training images) are not retried, say the epoch and the
reason in their run and in the tune summary, and never win; ``train`` stops on a diverged run in one line."""
from __future__ import annotations

import re
import textwrap

import pytest
from click.testing import CliRunner

from pipelines.cli import main
from tests.pipelines.tune.test_tune import invoke, runs_of, tune_args

SPACE = """
    params:
      method: coop
      dept: true
      lr: {grid: [1.0e+6, 0.002]}
      batch_size: {grid: [4, 64]}
      epochs: 2
      warmup_epochs: 0
      n_ctx: 2
      ctx_init: ""
    seeds: [1]
    metric: val_hm
    mode: max
    scheduler: {type: none}
"""


@pytest.mark.slow
def test_failing_trials_are_not_retried_and_never_win(demo_store, tmp_path):
    space = tmp_path / "failing.yaml"
    space.write_text(textwrap.dedent(SPACE))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = invoke(*tune_args(demo_store, tmp_path, uri, "fails", "--space", space, "--max-failures", 2))
    assert result.exit_code == 0, result.output
    assert re.search(r"1 completed, 0 stopped early, 3 failed", result.output), result.output
    client, runs = runs_of(uri, "fails", "tags.role = 'trial'")
    assert len(runs) == 4
    by_config = {(float(r.data.params["lr"]), int(r.data.params["batch_size"])): r for r in runs}
    good = by_config[(0.002, 4)]
    assert good.data.tags["trial_status"] == "completed"
    diverged = by_config[(1e6, 4)]
    config_errors = [by_config[(1e6, 64)], by_config[(0.002, 64)]]
    for r in [diverged, *config_errors]:
        assert r.data.tags["trial_status"] == "error" and r.info.status == "FAILED", r.data.tags
        assert r.data.tags["failures"] == "0", "a failure no retry can change is not retried"
        assert "test_hm" not in r.data.metrics
    assert re.match(r"train_loss is (nan|inf|-inf) after epoch \d \(diverged", diverged.data.tags["error"]), \
        diverged.data.tags["error"]
    for r in config_errors:
        assert "fewer than batch size 64" in r.data.tags["error"], r.data.tags["error"]
    # the summary names each failure in one line, the winner is the one trial that completed
    failed_lines = [line for line in result.output.splitlines() if ": failed: " in line]
    assert len(failed_lines) == 3, result.output
    assert any("lr1.0e+06" in line and "train_loss is" in line for line in failed_lines), failed_lines
    (parent,) = runs_of(uri, "fails", "tags.role = 'parent'")[1]
    assert float(parent.data.params["lr"]) == 0.002 and parent.data.params["batch_size"] == "4"


@pytest.mark.slow
def test_train_stops_on_a_diverged_run_in_one_line(demo_store, tmp_path):
    out = tmp_path / "train.json"
    r = CliRunner().invoke(main, ["train", "--features", demo_store, "--dataset", "demo", "--method", "coop",
                                  "--lr", "1e6", "--epochs", "2", "--warmup-epochs", "0", "--out", str(out)])
    assert r.exit_code == 2, r.output
    (line,) = r.output.strip().splitlines()
    assert re.match(r"error: train_loss is (nan|inf|-inf) after epoch \d \(diverged: lower the lr\)", line), line
    assert not out.exists()
