"""The MLflow side a researcher opens (issue 14): a real small ``tune`` (and ``train``) on the demo store, then
- the experiment opens on its training runs, in the saved view sorted on the selection metric with the
  coefficient and metric columns; full, readable run names; the feature store as every run's dataset input;
- every completed trial keeps its learned state and config as artifacts, and ``dept-pipeline export`` gives a
  folder that ``dept.load_state`` loads and that reproduces the logged test numbers exactly;
- ``dept-pipeline ui`` serves that store on 127.0.0.1 and prints the runs-table link."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipelines.cli import main
from tests.mlflow_server import free_port

pytestmark = pytest.mark.slow  # Ray Tune on the session cluster, a real MLflow server


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def tuned(demo_store, tmp_path_factory):
    base = tmp_path_factory.mktemp("ui-export")
    uri = f"sqlite:///{base / 'mlflow.db'}"
    result = invoke("tune", "--features", demo_store, "--dataset", "all", "--space", "smoke", "--method", "coop",
                    "--num-samples", 1, "--storage", base / "tune", "--mlflow-uri", uri, "--experiment", "ui")
    assert result.exit_code == 0, result.output
    return uri, base


def _trials(uri, experiment):
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    return client, exp, [r for r in runs if r.data.tags.get("role") in ("trial", "train")]


def _reproduce(store, out, run):
    """Rebuild the learner from the exported folder alone; score it on the store's test features."""
    from dept import evaluate_base_new, load_clip, load_state
    from pipelines.store import read_features

    config = json.loads((out / "config.json").read_text())
    clip = load_clip(config["features"]["backbone"], config["features"]["pretrained"], text_only=True)
    learner = load_state(out / "learned_state.safetensors", clip)
    base = read_features(store, config["features"]["dataset"], split="test", classes="base")
    new = read_features(store, config["features"]["dataset"], split="test", classes="new")
    res = evaluate_base_new(learner, base.features, base.labels, new.features, new.labels, new.classnames)
    return res.base_acc, res.new_acc


def test_runs_open_in_the_comparison_view_and_completed_trials_export_exactly(tuned, demo_store, tmp_path):
    from pipelines.tracking.client import KIND_TAG, KIND_TRAINING, VIEW_TAG

    uri, _ = tuned
    client, exp, trials = _trials(uri, "ui")
    assert exp.tags[KIND_TAG] == KIND_TRAINING
    envelope = json.loads(exp.tags[VIEW_TAG])
    state = json.loads(envelope["state"])
    assert state["orderByKey"] == "metrics.`val_hm`" and state["orderByAsc"] is False
    for column in ("params.`loss_weight`", "params.`fusion_weight`", "params.`method`", "params.`dept_effective`",
                   "params.`seed`", "tags.`trial_status`", "metrics.`val_hm`", "metrics.`test_hm`"):
        assert column in state["selectedColumns"], column

    assert len(trials) == 2
    completed = [r for r in trials if r.data.tags["trial_status"] == "completed"]
    assert completed  # the first trial to reach ASHA's rung always goes on
    fingerprint = trials[0].data.tags["feature_fingerprint"]
    for run in trials:
        assert re.fullmatch(r"coop\+DePT lw0\.\d\d fw0\.70 lr\d\.\de-0\d s[12]", run.info.run_name), run.info.run_name
        (dataset_input,) = run.inputs.dataset_inputs
        assert dataset_input.dataset.name == "demo" and dataset_input.dataset.digest == fingerprint[:36]
        assert demo_store in dataset_input.dataset.source
        names = {a.path for a in client.list_artifacts(run.info.run_id, "learned_state")}
        if run in completed:
            assert names == {f"learned_state/{n}" for n in ("learned_state.safetensors", "hyperparameters.json",
                                                            "final.json", "config.json")}
        else:
            assert not names

    run = completed[0]
    out = tmp_path / "exported"
    result = invoke("export", "--run-id", run.info.run_id, "--out", out, "--mlflow-uri", uri)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "final.json", "hyperparameters.json",
                                                     "learned_state.safetensors"]
    assert json.loads((out / "final.json").read_text())["test_hm"] == run.data.metrics["test_hm"]
    assert _reproduce(demo_store, out, run) == (run.data.metrics["test_base_acc"], run.data.metrics["test_new_acc"])

    # User errors: one line, nothing written.
    again = invoke("export", "--run-id", run.info.run_id, "--out", out, "--mlflow-uri", uri)
    assert again.exit_code == 2 and "is not an empty folder" in again.output
    missing = invoke("export", "--run-id", "0" * 32, "--out", tmp_path / "x", "--mlflow-uri", uri)
    assert missing.exit_code == 2 and "no MLflow run" in missing.output and not (tmp_path / "x").exists()
    stopped = [r for r in trials if r not in completed]
    if stopped:
        bad = invoke("export", "--run-id", stopped[0].info.run_id, "--out", tmp_path / "y", "--mlflow-uri", uri)
        assert bad.exit_code == 2 and "only completed trials" in bad.output and len(bad.output.splitlines()) == 1


def test_train_run_keeps_and_exports_its_learned_state(demo_store, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = invoke("train", "--features", demo_store, "--dataset", "demo", "--method", "coop", "--epochs", 1,
                    "--n-ctx", 2, "--ctx-init", "", "--loss-weight", 0, "--seed", 1, "--mlflow-uri", uri,
                    "--experiment", "single")
    assert result.exit_code == 0, result.output
    client, exp, (run,) = _trials(uri, "single")
    assert run.info.run_name.startswith("coop lr") and "DePT" not in run.info.run_name  # loss weight 0: plain CoOp
    assert run.inputs.dataset_inputs[0].dataset.digest == run.data.tags["feature_fingerprint"][:36]
    out = tmp_path / "exported"
    assert invoke("export", "--run-id", run.info.run_id, "--out", out, "--mlflow-uri", uri).exit_code == 0
    assert _reproduce(demo_store, out, run) == (run.data.metrics["test_base_acc"], run.data.metrics["test_new_acc"])


def test_ui_serves_the_store_on_loopback_and_prints_the_runs_link(tuned, tmp_path):
    uri, base = tuned
    _, exp, _ = _trials(uri, "ui")
    # Errors before anything starts: no store there, no such experiment.
    nothing = invoke("ui", "--mlflow-uri", f"sqlite:///{tmp_path / 'none.db'}")
    assert nothing.exit_code == 2 and "no MLflow store" in nothing.output
    wrong = invoke("ui", "--mlflow-uri", uri, "--experiment", "nope")
    assert wrong.exit_code == 2 and "no experiment 'nope'" in wrong.output and "ui" in wrong.output

    port = free_port()
    log = open(tmp_path / "ui.log", "w")
    command = str(Path(sys.executable).parent / "dept-pipeline")  # the venv's, as a user runs it
    proc = subprocess.Popen([command, "ui", "--mlflow-uri", uri, "--experiment", "ui", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path)
    try:
        deadline = time.time() + 180
        while True:
            assert proc.poll() is None, (tmp_path / "ui.log").read_text()[-2000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.time() < deadline, "the UI did not answer /health"
            time.sleep(1)
        link = f"http://127.0.0.1:{port}/#/experiments/{exp.experiment_id}/runs?viewStateShareKey=dept-trials"
        printed = (tmp_path / "ui.log").read_text()
        assert f"experiment 'ui': {link}&workflowType=machine_learning" in printed
        assert f"comparison chart: {link}&compareRunsMode=CHART&workflowType=machine_learning" in printed
        # The same store behind it: the experiment, with the tag the UI opens the training runs on.
        query = f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments/get-by-name?experiment_name=ui"
        with urllib.request.urlopen(query, timeout=10) as r:
            tags = {t["key"]: t["value"] for t in json.load(r)["experiment"]["tags"]}
        assert tags["mlflow.experimentKind"] == "custom_model_development"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


def test_the_saved_view_puts_the_coefficients_and_scores_first_and_charts_them():
    from pipelines.tracking.client import VIEW_WIDTHS, runs_url, view_state

    state = view_state("val_hm")
    first = ["params.`loss_weight`", "params.`fusion_weight`", "params.`lr`", "metrics.`val_hm`",
             "metrics.`test_base_acc`", "metrics.`test_new_acc`", "metrics.`test_hm`", "metrics.`val_base_acc`",
             "metrics.`val_new_acc`"]
    assert state["selectedColumns"][:9] == first
    assert state["columnOrder"] == ["attributes.`Run Name`", "runDateAndNestInfo", *state["selectedColumns"]]
    assert set(state["columnWidths"]) <= set(state["columnOrder"]) and state["columnWidths"] == {
        k: v for k, v in VIEW_WIDTHS.items() if k in state["columnOrder"]}
    (chart,) = state["compareRunCharts"]
    assert chart["type"] == "PARALLEL" and chart["metricSectionId"] == state["compareRunSections"][0]["uuid"]
    assert (chart["selectedParams"], chart["selectedMetrics"]) == (["loss_weight", "fusion_weight", "lr"],
                                                                   ["val_hm", "test_hm"])
    transfer = view_state("val_acc")
    assert transfer["selectedColumns"][3:6] == ["metrics.`val_acc`", "metrics.`test_acc`", "metrics.`test_target_avg`"]
    assert transfer["compareRunCharts"][0]["selectedMetrics"] == ["val_acc", "test_acc"]
    assert runs_url("http://h:1/", "7", charts=True) == ("http://h:1/#/experiments/7/runs?viewStateShareKey=dept-trials"
                                                         "&compareRunsMode=CHART&workflowType=machine_learning")
