"""A trial restored from an experiment state that names a checkpoint Tune had already replaced (a driver killed
between the deletion of the old checkpoint and the save of its state) resumes from the replacement, on real Ray
Tune with real storage; Ray's own trainable refuses it."""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from pipelines.trial.restore import replacement_checkpoint, trainable_class


@pytest.fixture(autouse=True)
def trainable_by_value():
    """Ray's workers get this module's trainable by value: they need not import the tests package."""
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def test_replacement_is_the_newest_sibling_and_only_when_the_named_one_is_gone(tmp_path):
    fs = pafs.LocalFileSystem()
    for i in (1, 3, 4):
        (tmp_path / f"checkpoint_00000{i}").mkdir()
    (tmp_path / "checkpoint_000009").write_text("a file, not a checkpoint folder")
    assert replacement_checkpoint(fs, str(tmp_path / "checkpoint_000001")) is None  # exists: nothing to do
    assert replacement_checkpoint(fs, str(tmp_path / "checkpoint_000002")) == (str(tmp_path / "checkpoint_000004"), 2)
    assert replacement_checkpoint(fs, str(tmp_path / "checkpoint_000005")) is None  # nothing newer
    assert replacement_checkpoint(fs, str(tmp_path / "elsewhere")) is None  # not a Tune checkpoint folder


def count_to_four(config):
    """Reports epochs 1..4, each with a checkpoint holding the epoch; resumes after the restored one. The first
    attempt fails at epoch 3 (it leaves the marker file named in the config)."""
    from ray import tune

    start = 0
    restored = tune.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as d:
            start = json.loads((Path(d) / "state.json").read_text())["epoch"]
    for epoch in range(start + 1, 5):
        if epoch == 3 and not os.path.exists(config["marker"]):
            Path(config["marker"]).touch()
            raise RuntimeError("stopped on purpose")
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "state.json").write_text(json.dumps({"epoch": epoch}))
            tune.report({"epoch": epoch, "resumed_after": start}, checkpoint=tune.Checkpoint.from_directory(d))


def run_then_stage_the_race(tmp_path, trainable):
    """A first run that fails after epoch 2 (its state names checkpoint_000001, epoch 2), then the race staged:
    that folder replaced by checkpoint_000002 holding epoch 3, as Tune leaves it when the driver dies after deleting
    the old checkpoint and before saving its state."""
    from ray import tune

    tune.Tuner(trainable, param_space={"marker": str(tmp_path / "failed-once")}, run_config=tune.RunConfig(
        name="raced", storage_path=str(tmp_path), checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        failure_config=tune.FailureConfig(max_failures=0), verbose=0)).fit()
    (trial_dir,) = [p for p in (tmp_path / "raced").iterdir() if p.is_dir()]
    assert sorted(p.name for p in trial_dir.glob("checkpoint_*")) == ["checkpoint_000001"]
    # Epoch 3 had been reported (and logged) with checkpoint_000002, which replaced checkpoint_000001.
    (trial_dir / "checkpoint_000001").rename(trial_dir / "checkpoint_000002")
    (trial_dir / "checkpoint_000002" / "state.json").write_text(json.dumps({"epoch": 3}))
    return trial_dir


@pytest.mark.slow
def test_a_trial_resumes_from_the_checkpoint_that_replaced_the_named_one(ray_cluster, tmp_path):
    from ray import tune

    trial_dir = run_then_stage_the_race(tmp_path, trainable_class(count_to_four))
    results = tune.Tuner.restore(str(tmp_path / "raced"), trainable=trainable_class(count_to_four),
                                 resume_errored=True).fit()
    (result,) = results
    assert result.error is None, result.error
    history = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
    # Epochs 1 and 2 before; after epoch 3 (in the replacement) epoch 4, not a repeat of 3; Tune's iteration count
    # stays the epoch (epoch 3's result line was never written: the staged driver died before).
    assert [(r["epoch"], r["resumed_after"]) for r in history] == [(1, 0), (2, 0), (4, 3)]
    assert [r["training_iteration"] for r in history] == [1, 2, 4]
    # Tune numbers the next checkpoint after the named one, so it lands in the replacement's folder; the copy put
    # back under the named one is deleted as that one registers: one checkpoint left, the last epoch's.
    (left,) = trial_dir.glob("checkpoint_*")
    assert json.loads((left / "state.json").read_text()) == {"epoch": 4}


@pytest.mark.slow
def test_without_the_fallback_ray_refuses_the_same_state(ray_cluster, tmp_path):
    """The staged race is the one Ray fails on: its plain function trainable ends the trial in error."""
    from ray import tune

    run_then_stage_the_race(tmp_path, count_to_four)
    (result,) = tune.Tuner.restore(str(tmp_path / "raced"), trainable=count_to_four, resume_errored=True).fit()
    assert result.error is not None and "does not exist on storage anymore" in str(result.error)
