"""Resuming a trial from the checkpoint Tune's saved state names, when Tune had already replaced that checkpoint.

With ``CheckpointConfig(num_to_keep=1)`` Tune deletes a trial's previous checkpoint as soon as the next one is
registered, but writes its experiment state (which names the trial's latest checkpoint) to storage afterwards and
asynchronously. A driver killed in between leaves a state naming a deleted checkpoint; on ``--resume`` Ray's
``Trainable.restore`` then refuses ("does not exist on storage anymore") on every retry and the trial ends in
ERROR. The checkpoint that replaced it is in the same trial folder and is newer, and the driver had already logged
its epoch (Tune calls the result callbacks before it registers the checkpoint), so resuming from it loses nothing and
repeats nothing. :func:`trainable_class` is the trial's Tune trainable with that fallback.
"""
from __future__ import annotations

import logging
import re

import pyarrow.fs as pafs
from ray import tune
from ray.tune.result import TRAINING_ITERATION
from ray.tune.trainable.function_trainable import wrap_function

log = logging.getLogger(__name__)

#: Tune's checkpoint folders: ``checkpoint_000003`` is a trial's 4th checkpoint.
CHECKPOINT_DIR = re.compile(r"checkpoint_(\d+)$")


def replacement_checkpoint(fs: pafs.FileSystem, path: str) -> tuple[str, int] | None:
    """(path, how many checkpoints later) of the newest checkpoint beside ``path`` when ``path`` itself is gone;
    None when it exists or nothing newer is there (then Ray's own error stands)."""
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        return None
    parent, _, name = path.rstrip("/").rpartition("/")
    named = CHECKPOINT_DIR.match(name)
    if not named or not parent:
        return None
    newer = []
    for info in fs.get_file_info(pafs.FileSelector(parent, allow_not_found=True)):
        found = CHECKPOINT_DIR.match(info.base_name)
        if found and info.type == pafs.FileType.Directory and int(found.group(1)) > int(named.group(1)):
            newer.append((int(found.group(1)), info.path))
    if not newer:
        return None
    index, newest = max(newer)
    return newest, index - int(named.group(1))


def trainable_class(trainable_fn) -> type:
    """The Tune trainable class of a function trainable (e.g. ``tune.with_parameters(tune_trainable, ...)``) whose
    restore falls back to the checkpoint that replaced the one Tune's saved state names."""
    base = wrap_function(trainable_fn)

    class Trial(base):
        def restore(self, checkpoint_path):
            checkpoint = getattr(checkpoint_path, "checkpoint", None)  # a _TrainingResult: checkpoint + metrics
            found = None if checkpoint is None else replacement_checkpoint(checkpoint.filesystem, checkpoint.path)
            if found is not None:
                newest, later = found
                log.warning("trial %s: Tune's saved state names %s, which Tune had already replaced before the "
                            "driver stopped; resuming from %s", self.trial_id, checkpoint.path, newest)
                # Put the replacement where Tune's bookkeeping expects it (Tune deletes that folder when the
                # trial's next checkpoint lands) and count the reports it is ahead by, so schedulers see each
                # epoch at its own training iteration.
                checkpoint.filesystem.create_dir(checkpoint.path)
                pafs.copy_files(newest, checkpoint.path, source_filesystem=checkpoint.filesystem,
                                destination_filesystem=checkpoint.filesystem)
                metrics = dict(checkpoint_path.metrics)
                metrics[TRAINING_ITERATION] = metrics.get(TRAINING_ITERATION, 0) + later
                checkpoint_path = type(checkpoint_path)(checkpoint=tune.Checkpoint(checkpoint.path,
                                                                                   checkpoint.filesystem),
                                                        metrics=metrics)
            return super().restore(checkpoint_path)

    Trial.__name__ = Trial.__qualname__ = base.__name__  # Tune names trials and their folders after it
    return Trial
