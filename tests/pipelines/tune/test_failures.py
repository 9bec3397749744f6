"""``tune`` failures that must be clear: a failed trial's MLflow run names its exception (and keeps the traceback),
bad ``--storage`` and changed checkpoints are one line before anything is created, a start killed after its parent
run was created does not block the experiment name."""
from __future__ import annotations

import json
import os
import re
import shutil

import pytest
import yaml
from click.testing import CliRunner

from pipelines.cli import main
from tests.conftest import REPO
from tests.pipelines.tune.test_tune import runs_of, tune_args


def run_cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.slow
def test_failed_trial_run_carries_the_exception_and_its_traceback(demo_store, tmp_path, ray_cluster):
    # Batch size above the training images of the demo store (3 base classes x 4 shots): every trial
    # raises ValueError in the worker, for good (--max-failures 0).
    space = yaml.safe_load((REPO / "tune_spaces" / "smoke.yaml").read_text())
    space["params"]["batch_size"] = 64
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_cli(*tune_args(demo_store, tmp_path, uri, "fails", "--space", tmp_path / "space.yaml", "--method",
                                "coop", "--max-failures", 0, "--num-samples", 1, "--ray-address",
                                ray_cluster.address))
    assert result.exit_code == 1, result.output
    assert "every trial of demo failed" in result.output
    client, runs = runs_of(uri, "fails", "tags.role = 'trial'")
    assert runs
    for run in runs:
        assert run.info.status == "FAILED" and run.data.tags["trial_status"] == "error"
        assert re.fullmatch(r"ValueError: demo: \d+ training images, fewer than batch size 64", run.data.tags["error"])
        (artifact,) = [a.path for a in client.list_artifacts(run.info.run_id) if a.path == "error.txt"]
        text = open(client.download_artifacts(run.info.run_id, artifact)).read()
        # Ray's formatted remote traceback: the frames down to the raise, then the exception.
        assert ", in run_trial" in text and text.rstrip().endswith("fewer than batch size 64")
        assert "\x1b[" not in text


@pytest.mark.slow
def test_storage_that_is_no_folder_is_one_line_before_anything_is_created(demo_store, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (tmp_path / "afile").write_text("not a folder")
    for storage in (tmp_path / "afile", tmp_path / "afile" / "below"):
        result = run_cli("tune", "--features", demo_store, "--dataset", "demo", "--storage", storage,
                         "--mlflow-uri", uri, "--experiment", "st")
        assert result.exit_code == 2, result.output
        assert result.output.strip().splitlines() == [
            f"error: --storage {storage}: {tmp_path / 'afile'} is not a folder"]
    assert not (tmp_path / "mlflow.db").exists()  # no MLflow experiment, no parent run


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; the check cannot be seen")
def test_read_only_storage_is_one_line(demo_store, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        result = run_cli("tune", "--features", demo_store, "--dataset", "demo", "--storage", ro / "tune",
                         "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}")
        assert result.exit_code == 2 and f"--storage {ro / 'tune'}: folder {ro} is not writable" in result.output
    finally:
        ro.chmod(0o755)


@pytest.mark.slow
def test_store_of_other_weights_is_caught_before_ray(demo_store, tmp_path, tiny_clip_checkpoint):
    """The checkpoint file a store was made with, replaced by other weights (same path): every trial would fail on
    its own; ``tune`` says so up front, naming the store and the file, and creates nothing."""
    copy = tmp_path / "store" / "model"
    shutil.copytree(demo_store, copy)
    ckpt = tmp_path / "tiny.safetensors"
    shutil.copy(tiny_clip_checkpoint, ckpt)
    manifests = [m for m in copy.rglob("*manifest*.json") if "pretrained" in json.loads(m.read_text())]
    assert manifests
    for manifest in manifests:
        doc = json.loads(manifest.read_text())
        doc["pretrained"] = str(ckpt)
        manifest.write_text(json.dumps(doc))
    with open(ckpt, "ab") as f:
        f.write(b"\0")  # other bytes: other weights
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_cli("tune", "--features", copy, "--dataset", "demo", "--storage", tmp_path / "tune",
                     "--mlflow-uri", uri)
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert "was made with weights sha256:" in line and f"{ckpt} now holds sha256:" in line
    assert not (tmp_path / "tune").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_a_start_killed_after_its_parent_run_does_not_block_a_rerun(demo_store, tmp_path, ray_cluster):
    """What a start killed between creating the parent run and Tune's first save leaves: a RUNNING parent naming
    the experiment's Tune folder, no Tune state. A plain rerun proceeds under that parent (not "pass --resume")."""
    from pipelines.tracking.client import Tracker
    from pipelines.tune.runner import TuneOptions, prepare

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = tune_args(demo_store, tmp_path, uri, "aborted", "--space", "smoke", "--method", "coop",
                     "--ray-address", ray_cluster.address)
    opts = TuneOptions(features=demo_store, dataset="all", space="smoke", methods=("coop",), experiment="aborted",
                       storage=str(tmp_path / "tune"), mlflow_uri=uri)
    space, _, tracker, plans, lock = prepare(opts)
    lock.release()
    (plan,) = plans
    tracker = Tracker(uri, "aborted")
    killed = tracker.create_parent(
        "demo", {**plan.context.tags(), "space": space.name, "selection_metric": space.metric,
                 "selection_mode": space.mode, "tune.experiment_path": plan.experiment_path},
        name="demo (smoke)")
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    _, parents = runs_of(uri, "aborted", "tags.role = 'parent'")
    assert [p.info.run_id for p in parents] == [killed] and parents[0].info.status == "FINISHED"
    _, trials = runs_of(uri, "aborted", "tags.role = 'trial'")
    assert len(trials) == 4


@pytest.mark.slow
def test_bad_checkpoints_and_out_folders_are_one_line(tmp_path, tiny_clip_checkpoint):
    """A fake or truncated .safetensors (what a partial download looks like) and an --out that is no folder:
    one ``error:`` line naming the file, exit 2, for featurize (tune's --storage: above)."""
    from dept.datasets.demo import write_demo_dataset

    data = write_demo_dataset(tmp_path / "demo", num_classes=4, train_per_class=2, val_per_class=1,
                              test_per_class=1, image_size=32)
    fake = tmp_path / "fake.safetensors"
    fake.write_bytes(b"<html>not found</html>")
    truncated = tmp_path / "truncated.safetensors"
    whole = tiny_clip_checkpoint.read_bytes() if hasattr(tiny_clip_checkpoint, "read_bytes") else open(
        tiny_clip_checkpoint, "rb").read()
    truncated.write_bytes(whole[: len(whole) // 2])
    (tmp_path / "afile").write_text("")
    base = ["featurize", "--dataset-dir", data, "--model", "dept-tiny-vit", "--no-progress"]
    cases = [
        ([*base, "--out", tmp_path / "store", "--pretrained", fake], f"checkpoint {fake} is not a readable .safetensors"),
        ([*base, "--out", tmp_path / "store", "--pretrained", truncated],
         f"checkpoint {truncated} is not a readable .safetensors"),
        ([*base, "--out", tmp_path / "afile" / "store", "--pretrained", "none"],
         f"--out {tmp_path / 'afile' / 'store'}: {tmp_path / 'afile'} is not a folder"),
    ]
    for args, expected in cases:
        result = run_cli(*args)
        assert result.exit_code == 2, result.output
        errors = [line for line in result.output.splitlines() if "error" in line.lower() or "Traceback" in line]
        assert errors == [f"error: {expected}" + errors[0].split(expected, 1)[1]] if errors else False, result.output
