"""``dept-pipeline analyze channels`` (the paper's Figure 3) end to end: a tiny tune (CoOp without and with DePT,
two seeds, CLIP zero-shot under the parent) into SQLite MLflow, then the analysis logs its figure to the parent run
and writes it to --plots; on experiments that lack what it compares, one line saying what is missing, before torch."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner

from pipelines.cli import main
from pipelines.metrics import harmonic_mean
from tests.conftest import REPO
from tests.pipelines.tune.test_tune import invoke, runs_of, tune_args

SPACE = """
    params:
      method: coop
      dept: {grid: [false, true]}
      loss_weight: 0.5
      lr: 0.01
      epochs: 2
      warmup_epochs: 0
      batch_size: 4
      n_ctx: 2
      ctx_init: ""
    seeds: [1, 2]
    metric: val_hm
    mode: max
    scheduler: {type: none}
"""


@pytest.fixture(scope="module")
def tuned(demo_store, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("channels")
    (tmp / "space.yaml").write_text(textwrap.dedent(SPACE))
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    result = invoke(*tune_args(demo_store, tmp, uri, "chan", "--space", tmp / "space.yaml"))
    assert result.exit_code == 0, result.output
    return uri, tmp


@pytest.mark.slow
def test_analyze_channels_logs_the_figure_to_the_parent_and_writes_it_to_plots(tuned, tmp_path):
    uri, _ = tuned
    plots = tmp_path / "plots"
    result = invoke("analyze", "channels", "--mlflow-uri", uri, "--experiment", "chan", "--window", "8",
                    "--plots", plots)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for label, runs in (("CLIP zero-shot", "1 run "), ("CoOp ", "2 runs"), ("CoOp+DePT", "2 runs")):
        assert any(line.startswith(f"demo  {label}") and runs in line and "CI-base:CI-new" in line for line in lines), \
            result.output

    client, runs = runs_of(uri, "chan")
    parent = [r for r in runs if r.data.tags.get("role") == "parent"][0]
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {"plots/channel_importance.png", "plots/channel_importance.json"} <= logged
    png = plots / "demo" / "channel_importance.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    numbers = json.loads((plots / "demo" / "channel_importance.json").read_text())
    assert numbers["window"] == 8 and numbers["split"] == "test"
    trials = {r.info.run_id: r for r in runs if r.data.tags.get("role") == "trial"}
    for label, applied in (("CoOp", "false"), ("CoOp+DePT", "true")):
        variant = numbers["variants"][label]
        # Every seed of the configuration, each run the one that trained that variant.
        assert sorted(variant["seeds"]) == ["1", "2"]
        assert {trials[r].data.params["dept_effective"] for r in variant["run_ids"]} == {applied}
        assert len(variant["ci_base"]) == 2 and len(variant["ci_base"][0]) == len(variant["ci_new"][0])
    zs = numbers["variants"]["CLIP zero-shot"]
    assert [runs_by_id.data.tags["role"] for runs_by_id in runs if runs_by_id.info.run_id in zs["run_ids"]] == ["zero-shot"]
    # Trained prompts are not the zero-shot template: their curves differ.
    assert numbers["variants"]["CoOp"]["ci_base"][0] != zs["ci_base"][0]


@pytest.mark.slow
def test_a_window_wider_than_the_features_is_one_line(tuned):
    uri, _ = tuned
    result = CliRunner().invoke(main, ["analyze", "channels", "--mlflow-uri", uri, "--experiment", "chan",
                                       "--window", "100000"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "--window 100000 is wider than the features of demo (" in result.output


@pytest.mark.slow
def test_a_run_without_learned_state_is_one_line(tuned):
    uri, _ = tuned
    client, runs = runs_of(uri, "chan")
    trial = next(r for r in runs if r.data.tags.get("role") == "trial" and r.data.params["dept_effective"] == "true")
    client.set_tag(trial.info.run_id, "learned_state", "none")  # as a run logged before learned state was kept
    try:
        result = CliRunner().invoke(main, ["analyze", "channels", "--mlflow-uri", uri, "--experiment", "chan"])
    finally:
        client.set_tag(trial.info.run_id, "learned_state", "logged")
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert f"MLflow run {trial.info.run_id}" in result.output and "has no learned_state/ artifacts" in result.output


def _train_run(tracker, dept: bool, seed: int = 1):
    from pipelines.tracking.client import log_train_run
    from pipelines.trial.settings import Hyperparameters

    hp = Hyperparameters(method="coop", dept=dept, seed=seed, epochs=2).resolved([16])
    final = {"epoch": 2, "val_hm": 50.0, "test_base_acc": 60.0, "test_new_acc": 40.0,
             "test_hm": harmonic_mean(60.0, 40.0), "final": True}
    log_train_run(tracker, hp, {"dataset": "demo", "features_url": "/nowhere"}, [], final, None)


def _zero_shot_run(tracker):
    from pipelines.trial.zero_shot import ZeroShotResult, log_zero_shot_run

    metrics = {"test_base_acc": 50.0, "test_new_acc": 60.0, "test_hm": harmonic_mean(50.0, 60.0),
               "val_base_acc": 50.0, "val_new_acc": 60.0, "val_hm": harmonic_mean(50.0, 60.0)}
    log_zero_shot_run(tracker, ZeroShotResult("demo", "a photo of a {}.", metrics, {}, {"dataset": "demo"}))


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Experiments that each lack one thing the analysis compares (no Ray, no training: logged runs)."""
    from pipelines.tracking.client import Tracker

    uri = f"sqlite:///{tmp_path_factory.mktemp('missing') / 'mlflow.db'}"
    no_zero_shot = Tracker(uri, "no-zero-shot")
    _train_run(no_zero_shot, dept=False)
    _train_run(no_zero_shot, dept=True)
    no_plain = Tracker(uri, "no-plain")
    _zero_shot_run(no_plain)
    _train_run(no_plain, dept=True)
    no_state = Tracker(uri, "no-state")
    _zero_shot_run(no_state)
    _train_run(no_state, dept=False)
    _train_run(no_state, dept=True)
    return uri


@pytest.mark.parametrize("experiment,dataset,expected", [
    ("no-zero-shot", None, "has no CLIP zero-shot run of demo to compare against (`dept-pipeline zero-shot"),
    ("no-plain", None, "has no completed plain-method runs of demo (without DePT, or at loss weight 0)"),
    ("no-state", None, "has no learned_state/ artifacts to analyse"),
    ("no-state", "EuroSAT", "has no base-to-new runs of dataset 'EuroSAT' (its datasets: demo)"),
    ("nope", None, "no MLflow experiment 'nope'"),
])
def test_what_is_missing_is_one_line(stores, experiment, dataset, expected):
    args = ["analyze", "channels", "--mlflow-uri", stores, "--experiment", experiment]
    result = CliRunner().invoke(main, args + (["--dataset", dataset] if dataset else []))
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert expected in result.output, result.output


def test_the_missing_piece_is_found_before_torch_loads(stores):
    probe = ("import sys; from click.testing import CliRunner; from pipelines.cli import main; "
             f"r = CliRunner().invoke(main, ['analyze', 'channels', '--mlflow-uri', {stores!r}, '--experiment', "
             "'no-plain']); assert r.exit_code == 2, r.output; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False", out.stdout
