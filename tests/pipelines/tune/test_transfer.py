"""The transfer protocols end to end on the miniature's transfer suite (``miniature data --suite transfer``):
featurize (targets' manifests say whose targets they are) -> ``tune --protocol cross-dataset`` and
``--protocol domain-generalization`` in one MLflow experiment (a parent per protocol, per-target metrics) ->
``report --protocol``; a tuned trial's target accuracies equal a direct ``dept`` evaluation of its saved state; setup
errors are one line before Ray work."""
from __future__ import annotations

import json
import math
import textwrap

import pytest
from click.testing import CliRunner

from pipelines.cli import main

SOURCE = "mini-source"
DOMAIN_TARGETS = ("mini-v2", "mini-sketch", "mini-r", "mini-a")
CROSS_TARGETS = ("mini-other-colours-a", "mini-other-colours-b")
EXPERIMENT = "transfer"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def suite_store(ray_cluster, tmp_path_factory):
    """The suite, small: 24 source classes x (16 train, 4 val, 4 test), 4 test images per target class; featurized
    with the shipped miniature CLIP, 4 shots, seeds 1 and 2, one training view."""
    base = tmp_path_factory.mktemp("transfer")
    r = invoke("miniature", "data", "--suite", "transfer", "--out", base / "suite", "--train-per-class", 16,
               "--val-per-class", 4, "--test-per-class", 4, "--target-test-per-class", 4)
    assert r.exit_code == 0, r.output
    dirs = [a for d in (SOURCE, *DOMAIN_TARGETS, *CROSS_TARGETS) for a in ("--dataset-dir", base / "suite" / d)]
    r = invoke("featurize", *dirs, "--out", base / "store", "--model", "dept-mini-vit", "--pretrained", "shipped",
               "--views", 1, "--shots", 4, "--seeds", "1,2", "--batch-size", 64, "--no-progress",
               "--ray-address", ray_cluster.address)
    assert r.exit_code == 0, r.output
    return base, [line.split(": ", 1)[1] for line in r.output.splitlines() if line.startswith("features: ")][-1]


SPACE = textwrap.dedent("""\
    params:
      method: {grid: [coop, kgcoop]}
      dept: {grid: [false, true]}
      lr: 0.01
      epochs: 2
      warmup_epochs: 0
      batch_size: 4
    seeds: [1, 2]
    scheduler: none
""")


def test_manifests_say_whose_targets_they_are(suite_store):
    from pipelines.store import read_manifest
    from pipelines.trial.targets import target_role

    _, store = suite_store
    assert target_role(read_manifest(store, SOURCE)) is None
    for d in DOMAIN_TARGETS:
        role = target_role(read_manifest(store, d))
        assert (role.protocol, role.source) == ("domain-generalization", SOURCE)
    for d in CROSS_TARGETS:
        role = target_role(read_manifest(store, d))
        assert (role.protocol, role.source, role.label_to_source) == ("cross-dataset", SOURCE, None)
    subset = read_manifest(store, "mini-r")
    assert len(subset.target_of["label_to_source"]) == len(subset.classnames) < len(read_manifest(store, SOURCE).classnames)


def _tune(store, tmp_path, uri, protocol, *extra):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    return invoke("tune", "--features", store, "--protocol", protocol, "--source", SOURCE, "--space", space,
                  "--storage", tmp_path / "tune", "--mlflow-uri", uri, "--experiment", EXPERIMENT, *extra)


@pytest.mark.slow
def test_both_protocols_tune_track_report_and_reproduce(suite_store, tmp_path):
    from mlflow import MlflowClient

    from dept import load_clip, load_state
    from dept.transfer import TransferTarget, evaluate_transfer
    from pipelines.store import read_features, read_manifest
    from pipelines.trial.targets import target_role

    _, store = suite_store
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    expected = {"cross-dataset": CROSS_TARGETS, "domain-generalization": DOMAIN_TARGETS}
    for protocol in expected:
        r = _tune(store, tmp_path, uri, protocol)
        assert r.exit_code == 0, r.output
        assert "source test" in r.output and "target avg" in r.output

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id])
    parents = {r.data.tags["protocol"]: r for r in runs if r.data.tags.get("role") == "parent"}
    assert set(parents) == set(expected)
    clip = load_clip("dept-mini-vit", read_manifest(store, SOURCE).pretrained, text_only=True)
    test = read_features(store, SOURCE, split="test")
    for protocol, targets in expected.items():
        parent = parents[protocol]
        assert parent.data.tags["dataset"] == SOURCE and parent.info.status == "FINISHED"
        assert set(parent.data.tags["targets"].split(",")) == set(targets)
        # the parent's figure: source against the targets' mean, every completed trial and the zero-shot star
        assert [a.path for a in client.list_artifacts(parent.info.run_id, "plots")] == ["plots/source_vs_targets.png"]
        below = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        trials = [r for r in below if r.data.tags.get("role") == "trial"]
        (zero_shot,) = [r for r in below if r.data.tags.get("role") == "zero-shot"]
        assert len(trials) == 8 and all(t.data.tags["trial_status"] == "completed" for t in trials)
        for run in (*trials, zero_shot):
            m = run.data.metrics
            assert {f"test_acc/{t}" for t in targets} <= set(m) and "test_acc" in m
            assert m["test_target_avg"] == pytest.approx(sum(m[f"test_acc/{t}"] for t in targets) / len(targets))
            assert not any(k.startswith(("test_base", "test_new", "test_hm")) for k in m)
        assert {"val_acc"} <= set(trials[0].data.metrics)
        # a trained prompt's numbers, from its learned_state artifact alone, through dept directly
        run = next(t for t in trials if t.data.params["dept_effective"] == "true")
        folder = client.download_artifacts(run.info.run_id, "learned_state", str(tmp_path / run.info.run_id))
        learner = load_state(f"{folder}/learned_state.safetensors", clip)
        tgts = []
        for t in targets:
            fs = read_features(store, t, split="test")
            role = target_role(read_manifest(store, t))
            tgts.append(TransferTarget(t, protocol, fs.features, fs.labels, list(fs.classnames),
                                       list(role.label_to_source) if role.label_to_source else None))
        direct = evaluate_transfer(learner, test.features, test.labels, tgts).metrics()
        for key, value in direct.items():
            assert value == run.data.metrics[key], key

    # the paper's Table layout per protocol, beside the published numbers (none for the miniature's datasets)
    for protocol, targets in expected.items():
        r = invoke("report", "--mlflow-uri", uri, "--experiment", EXPERIMENT, "--protocol", protocol)
        assert r.exit_code == 0, r.output
        for t in targets:
            assert t in r.output
        for label in ("CLIP", "CoOp", "CoOp+DePT", "KgCoOp", "KgCoOp+DePT"):
            assert label in r.output
    # the base-to-new report of this experiment has nothing to show: no base-to-new runs
    r = CliRunner().invoke(main, ["report", "--mlflow-uri", uri, "--experiment", EXPERIMENT])
    assert r.exit_code != 0 and ("has no base-to-new runs (its runs' protocols: cross-dataset, "
                                 "domain-generalization; report --protocol NAME)") in r.output, r.output


def test_setup_errors_are_one_line_before_ray(suite_store, tmp_path):
    _, store = suite_store
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cases = [
        (("cross-dataset", "--source", SOURCE, "--targets", "mini-v2"),
         "--targets mini-v2: mini-v2 is a domain-generalization target"),
        (("cross-dataset", "--source", SOURCE, "--targets", "nope"), "--targets nope: no complete features under"),
        (("cross-dataset",), "no features for dataset 'ImageNet'"),  # the default source
        (("domain-generalization", "--dataset", SOURCE), "trains on --source"),
    ]
    for args, message in cases:
        r = CliRunner().invoke(main, ["tune", "--features", store, "--protocol", *[str(a) for a in args],
                                      "--storage", str(tmp_path / "t"), "--mlflow-uri", uri])
        assert r.exit_code != 0 and message in r.output, r.output
        assert len([line for line in r.output.splitlines() if line.strip()]) <= 2, r.output
    r = CliRunner().invoke(main, ["tune", "--features", store, "--protocol", "cross-dataset", "--source", "mini-v2",
                                  "--storage", str(tmp_path / "t"), "--mlflow-uri", uri])
    assert r.exit_code != 0 and "source mini-v2 has no training images" in r.output, r.output
    r = CliRunner().invoke(main, ["tune", "--features", store, "--dataset", SOURCE, "--targets", "mini-v2",
                                  "--storage", str(tmp_path / "t"), "--mlflow-uri", uri])
    assert r.exit_code != 0 and "--source / --targets are for --protocol" in r.output, r.output
    space = tmp_path / "csc.yaml"
    space.write_text(SPACE.replace("lr: 0.01", "lr: 0.01\n  class_specific: {grid: [false, true]}"))
    r = CliRunner().invoke(main, ["tune", "--features", store, "--protocol", "cross-dataset", "--source", SOURCE,
                                  "--space", str(space), "--storage", str(tmp_path / "t"), "--mlflow-uri", uri])
    assert r.exit_code != 0 and "class_specific (CoOp's CSC) learns one context per source class and cannot score " \
        "target mini-other-colours-a's classes" in r.output, r.output
    r = CliRunner().invoke(main, ["train", "--features", store, "--source", SOURCE, "--protocol",
                                  "domain-generalization", "--targets", "mini-r", "--method", "coop", "--class-specific"])
    assert r.exit_code != 0 and "cannot score target mini-r's classes" in r.output, r.output
    for command in ("train", "tune"):  # both take the source as --source
        r = CliRunner().invoke(main, [command, "--features", store, "--dataset", SOURCE, "--protocol",
                                      "domain-generalization"])
        assert r.exit_code != 0 and "trains on --source" in r.output, (command, r.output)
    assert not (tmp_path / "t").exists() and not (tmp_path / "mlflow.db").exists()


def test_train_takes_the_protocol_for_one_run(suite_store, tmp_path):
    _, store = suite_store
    out = tmp_path / "train.json"
    r = invoke("train", "--features", store, "--source", SOURCE, "--protocol", "domain-generalization",
               "--targets", "mini-r,mini-v2", "--method", "coop", "--epochs", 1, "--out", out)
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    assert set(doc["test"]) == {"test_acc", "test_acc/mini-r", "test_acc/mini-v2", "test_target_avg"}
    assert doc["test"]["test_target_avg"] == pytest.approx((doc["test"]["test_acc/mini-r"]
                                                           + doc["test"]["test_acc/mini-v2"]) / 2)
    assert all(0 <= v <= 100 and not math.isnan(v) for v in doc["test"].values())


@pytest.mark.slow
def test_imagenet_and_its_variants_in_coop_layouts(ray_cluster, tiny_clip_checkpoint, tmp_path):
    """The registry path: ImageNet with ImageNet-A (a class subset, cut through the recorded label mapping) and
    ImageNet-V2 (index folders, ImageNet's labels) in CoOp's layouts -> featurize --dataset all -> train
    --protocol domain-generalization on ImageNet."""
    from pipelines.store import read_manifest
    from tests.dept.test_datasets import WNIDS, make_imagenet, write_image, write_imagenet_classnames

    root = tmp_path / "data"
    make_imagenet(root)
    for w, colour in zip((WNIDS[3], WNIDS[1]), ((200, 30, 30), (30, 200, 30))):
        for i in range(2):
            write_image(root / "imagenet-adversarial" / "imagenet-a" / w / f"{i}.jpg", colour)
    write_imagenet_classnames(root / "imagenet-adversarial" / "classnames.txt")
    for label in range(len(WNIDS)):
        write_image(root / "imagenetv2" / "imagenetv2-matched-frequency-format-val" / str(label) / "a.jpeg",
                    (40 * label, 90, 200 - 30 * label))
    write_imagenet_classnames(root / "imagenetv2" / "classnames.txt")
    r = invoke("featurize", "--data-root", root, "--dataset", "all", "--out", tmp_path / "store", "--model",
               "dept-tiny-vit", "--pretrained", tiny_clip_checkpoint, "--views", 1, "--shots", 2, "--seeds", 1,
               "--no-progress", "--ray-address", ray_cluster.address)
    assert r.exit_code == 0, r.output
    store = [line.split(": ", 1)[1] for line in r.output.splitlines() if line.startswith("features: ")][-1]
    assert read_manifest(store, "ImageNetA").target_of == {
        "protocol": "domain-generalization", "source": "ImageNet", "label_to_source": [1, 3]}
    assert read_manifest(store, "ImageNetV2").target_of["label_to_source"] is None
    assert read_manifest(store, "ImageNet").target_of is None

    out = tmp_path / "dg.json"
    r = invoke("train", "--features", store, "--source", "ImageNet", "--protocol", "domain-generalization",
               "--epochs", 1, "--batch-size", 2, "--out", out)
    assert r.exit_code == 0, r.output
    test = json.loads(out.read_text())["test"]
    assert set(test) == {"test_acc", "test_acc/ImageNetV2", "test_acc/ImageNetA", "test_target_avg"}
    assert test["test_acc/ImageNetA"] in (0.0, 25.0, 50.0, 75.0, 100.0)  # 4 images over its own 2 classes
    r = CliRunner().invoke(main, ["train", "--features", store, "--source", "ImageNet", "--protocol",
                                  "cross-dataset"])
    assert r.exit_code != 0 and "no cross-dataset targets of ImageNet featurized" in r.output, r.output

    # a store written before manifests recorded target_of: still valid, not re-encoded, and its known targets are
    # found through the registry
    path = tmp_path / "store" / store.split("/store/", 1)[1] / "ImageNetA" / "_manifest.json"
    raw = json.loads(path.read_text())
    del raw["target_of"]
    path.write_text(json.dumps(raw))
    r = invoke("featurize", "--data-root", root, "--dataset", "all", "--out", tmp_path / "store", "--model",
               "dept-tiny-vit", "--pretrained", tiny_clip_checkpoint, "--views", 1, "--shots", 2, "--seeds", 1,
               "--no-progress", "--ray-address", ray_cluster.address)
    assert r.exit_code == 0 and "ImageNetA: train 0, val 0, test 4 rows; encoded 0 this run" in r.output, r.output
    r = invoke("train", "--features", store, "--source", "ImageNet", "--protocol", "domain-generalization",
               "--targets", "ImageNetA", "--epochs", 1, "--batch-size", 2, "--out", out)
    assert r.exit_code == 0, r.output
    assert set(json.loads(out.read_text())["test"]) == {"test_acc", "test_acc/ImageNetA", "test_target_avg"}


@pytest.mark.slow
def test_a_population_scores_its_members_on_the_targets_as_single_trials(suite_store, tmp_path):
    """tune --population under domain generalisation (fused heads, the CAT layer cut for a class subset): members
    of one population get the single trials' source and target accuracies."""
    from mlflow import MlflowClient

    _, store = suite_store
    space = tmp_path / "space.yaml"
    space.write_text(SPACE.replace("method: {grid: [coop, kgcoop]}", "method: kgcoop")
                     .replace("dept: {grid: [false, true]}", "dept: true\n  loss_weight: {grid: [0.3, 0.6, 0.9]}")
                     .replace("seeds: [1, 2]", "seeds: [1]"))
    logged = {}
    for name, population in (("dg-single", 1), ("dg-pop", 3)):
        uri = f"sqlite:///{tmp_path / name}.db"
        r = invoke("tune", "--features", store, "--protocol", "domain-generalization", "--source", SOURCE,
                   "--space", space, "--storage", tmp_path / name, "--mlflow-uri", uri, "--experiment", name,
                   "--population", population)
        assert r.exit_code == 0, r.output
        client = MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name(name).experiment_id], "tags.role = 'trial'")
        logged[name] = {run.data.params["loss_weight"]: run for run in runs}
    assert len(logged["dg-pop"]) == 3 and set(logged["dg-pop"]) == set(logged["dg-single"])
    assert {r.data.tags["population_size"] for r in logged["dg-pop"].values()} == {"3"}
    for key, run in logged["dg-pop"].items():
        ref = logged["dg-single"][key].data.metrics
        names = ["val_acc", "test_acc", "test_target_avg", *(f"test_acc/{t}" for t in DOMAIN_TARGETS)]
        for m in names:
            assert run.data.metrics[m] == pytest.approx(ref[m], abs=1e-6), (key, m)
