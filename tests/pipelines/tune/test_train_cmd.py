"""``dept-pipeline train``: one run on cached demo features, without Tune; JSON out, one MLflow run, one-line errors."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from pipelines.cli import main

TINY_MODEL = "dept-tiny-vit"
# Every test here needs the featurized demo store (Ray Data on the session cluster): end-to-end, so slow.
pytestmark = pytest.mark.slow


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_train_prints_writes_json_and_logs_one_mlflow_run(demo_store, tmp_path):
    from mlflow import MlflowClient

    out = tmp_path / "result.json"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = invoke("train", "--features", demo_store, "--dataset", "demo", "--method", "coop", "--epochs", 3,
                    "--n-ctx", 2, "--ctx-init", "", "--loss-weight", 0.6, "--fusion-weight", 0.4, "--seed", 2,
                    "--out", out, "--mlflow-uri", uri, "--experiment", "single")
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    test = doc["test"]
    line = [ln for ln in result.output.splitlines() if ln.startswith("demo coop+DePT seed 2:")][0]
    assert f"base {test['test_base_acc']:.2f}" in line and f"HM {test['test_hm']:.2f}" in line
    assert doc["hyperparameters"]["loss_weight"] == 0.6 and doc["hyperparameters"]["fusion_weight"] == 0.4
    assert [h["epoch"] for h in doc["history"]] == [1, 2, 3]
    assert len(doc["fusion_sweep"]["sweep_test_base_acc"]) == 21
    # At the trained fusion weight the sweep reproduces the reported base accuracy.
    weights = doc["fusion_sweep"]["sweep_fusion_weights"]
    assert doc["fusion_sweep"]["sweep_test_base_acc"][weights.index(0.4)] == pytest.approx(test["test_base_acc"])

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("single")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_id == doc["mlflow_run_id"] and run.info.status == "FINISHED"
    assert run.info.run_name.startswith("coop+DePT lw0.60 fw0.40 lr") and run.info.run_name.endswith(" s2")
    assert run.data.params["loss_weight"] == "0.6" and run.data.params["fusion_weight"] == "0.4"
    for tag in ("dataset", "method", "dept", "seed", "shots", "backbone", "pretrained", "feature_fingerprint"):
        assert run.data.tags.get(tag), tag
    assert run.data.tags["role"] == "train" and run.data.tags["backbone"] == TINY_MODEL
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_hm")] == [1, 2, 3]
    assert run.data.metrics["test_hm"] == pytest.approx(test["test_hm"])

    # The logged learned state rebuilds the trained model: the same test base accuracy, from the artifact alone.
    from dept import evaluate_base_new, load_clip, load_state
    from pipelines.store import read_features

    state = client.download_artifacts(run.info.run_id, "learned_state/learned_state.safetensors", str(tmp_path))
    manifest_pretrained = run.data.tags["pretrained"]
    clip = load_clip(TINY_MODEL, manifest_pretrained, text_only=True)
    learner = load_state(state, clip)
    base = read_features(demo_store, "demo", split="test", classes="base")
    new = read_features(demo_store, "demo", split="test", classes="new")
    res = evaluate_base_new(learner, base.features, base.labels, new.features, new.labels, new.classnames)
    assert res.base_acc == pytest.approx(test["test_base_acc"]) and res.new_acc == pytest.approx(test["test_new_acc"])


def test_train_without_dept_is_the_base_method_and_is_deterministic(demo_store, tmp_path):
    outs = []
    for i in range(2):
        out = tmp_path / f"r{i}.json"
        result = invoke("train", "--features", demo_store, "--dataset", "demo", "--method", "kgcoop", "--no-dept",
                        "--epochs", 2, "--n-ctx", 2, "--ctx-init", "", "--out", out)
        assert result.exit_code == 0, result.output
        outs.append(json.loads(out.read_text()))
    hp = outs[0]["hyperparameters"]
    assert hp["dept"] is False and hp["loss_weight"] == 0.0 and hp["fusion_weight"] == 0.0 and hp["kg_weight"] == 2.0  # dept.methods.kgcoop: one weight with or without DePT
    # No CAT head: the fusion sweep is flat (base accuracy is the ITM head's at every weight).
    assert len(set(outs[0]["fusion_sweep"]["sweep_test_base_acc"])) == 1
    assert outs[0]["test"] == outs[1]["test"] and outs[0]["val"] == outs[1]["val"]


def test_train_precision_is_recorded_and_bf16_stays_near_fp32(demo_store, tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    docs = {}
    for precision in ("auto", "bf16"):
        out = tmp_path / f"{precision}.json"
        result = invoke("train", "--features", demo_store, "--dataset", "demo", "--method", "coop", "--epochs", 2,
                        "--n-ctx", 2, "--ctx-init", "", "--precision", precision, "--out", out, "--mlflow-uri", uri,
                        "--experiment", "precision")
        assert result.exit_code == 0, result.output
        docs[precision] = json.loads(out.read_text())
    assert docs["auto"]["features"]["precision"] == "fp32"  # auto on CPU
    assert docs["bf16"]["features"]["precision"] == "bf16"
    losses = {p: [h["train_loss"] for h in d["history"]] for p, d in docs.items()}
    assert losses["auto"] != losses["bf16"]  # autocast was on
    assert losses["bf16"] == pytest.approx(losses["auto"], rel=0.05)
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("precision").experiment_id])
    assert sorted(r.data.tags["precision"] for r in runs) == ["bf16", "fp32"]


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--dataset", "nope"], "no features for dataset 'nope'"),
        (["--dataset", "demo", "--seed", "9"], "seed 9 was not drawn"),
        (["--dataset", "demo", "--shots", "16"], "shots 16 but the feature store"),
        (["--dataset", "demo", "--mlflow-uri", "http://127.0.0.1:9"], "unreachable"),
    ],
)
def test_train_user_errors_are_one_line_before_any_work(demo_store, tmp_path, extra, expected):
    result = invoke("train", "--features", demo_store, *extra, "--out", tmp_path / "x.json")
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "x.json").exists()


def test_train_out_folder_must_exist(demo_store, tmp_path):
    result = invoke("train", "--features", demo_store, "--dataset", "demo", "--out", tmp_path / "no" / "x.json")
    assert result.exit_code == 2 and "does not exist" in result.output


def test_pseudo_new_objective_never_reads_new_classes_for_selection(demo_store, monkeypatch):
    """Under the pseudo-new objective the selection metrics come from held-out *base* classes; the new classes' val
    images are never read, and the test metrics come from a model retrained on every base class."""
    import pipelines.store as store
    from pipelines.trial.context import make_context
    from pipelines.trial.plan import pseudo_new_split, run_trial
    from pipelines.trial.settings import Hyperparameters

    reads = []
    real = store.DatasetStore.features

    def spy(self, split, **kw):
        reads.append((split, kw.get("classes", "all")))
        return real(self, split, **kw)

    monkeypatch.setattr(store.DatasetStore, "features", spy)
    ctx = make_context(demo_store, "demo", shots=[None], seeds=[1], objective="pseudo-new")
    hp = Hyperparameters(method="coop", epochs=2, n_ctx=2, ctx_init="").resolved([ctx.store_shots])
    epochs = []
    final = run_trial(hp, ctx, on_epoch=epochs.append)
    assert ("val", "new") not in reads and ("val", "base") in reads
    assert sorted(reads) == sorted([("train", "base"), ("val", "base"), ("test", "base"), ("test", "new")])
    assert {"pseudo_base_acc", "pseudo_new_acc", "pseudo_hm"} <= set(epochs[0]) <= set(final)
    assert not any(k.startswith("val_") for k in final)
    assert {"test_base_acc", "test_new_acc", "test_hm", "sweep_pseudo_base_acc"} <= set(final)
    # 3 base classes: the last one is held out as pseudo-new, two are trained on.
    assert pseudo_new_split(3, 1 / 3) == ([0, 1], [2])
    assert pseudo_new_split(2, 0.9) == ([0], [1])
    with pytest.raises(ValueError, match="at least 2 base classes"):
        pseudo_new_split(1, 0.5)
