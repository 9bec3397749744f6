"""The Ray Tune function trainable of one trial: reads its checkpoint (a finished trial reports its final result
again; a retried or resumed one goes on after its last epoch), trains alone (:func:`pipelines.trial.plan.run_trial`)
or as a member of a population (:func:`pipelines.trial.population.run_member`), and reports every epoch with the
state to resume from.
"""
from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path

import ray
from ray import tune

from pipelines import benchtimers
from pipelines.trial.context import FAIL_ONCE_ENV, TrialContext
from pipelines.trial.plan import (
    FINAL_FILE,
    HYPERPARAMETERS_FILE,
    RESUME_FILE,
    InjectedFailure,
    TrialFailed,
    check_finite,
    run_trial,
)
from pipelines.trial.population import run_member
from pipelines.vocabulary import EPOCH_METRICS, FAILED_KEY, FAILED_TRACEBACK_KEY, NODE_ID_KEY, RESUMED_KEY

log = logging.getLogger(__name__)


def failure_result(reason: str, metrics: dict) -> dict:
    """The last result of a trial that failed for good: the epoch's metrics (a failure in the last epoch's final
    result drops its test numbers), the reason, every per-epoch key (NaN where unknown: Tune and its scheduler
    expect the selection metric in every result)."""
    epoch = {k: v for k, v in metrics.items() if k in EPOCH_METRICS or k == "epoch"}  # no test numbers: not scored
    return {**{k: math.nan for k in EPOCH_METRICS}, "epoch": 0, **epoch, FAILED_KEY: reason}


def tune_trainable(config: dict, context: TrialContext) -> None:
    """The Ray Tune function trainable (wrap with ``tune.with_parameters(tune_trainable, context=...)``)."""
    # A worker may have inherited a driver's MLflow run; trials never write to MLflow (the driver does).
    os.environ.pop("MLFLOW_RUN_ID", None)
    benchtimers.record("trial_start", 0.0)  # bench only (pipelines.benchtimers); a no-op unless asked for
    trial_id = tune.get_context().get_trial_id()
    resume = None
    restored = tune.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as d:
            final_path = Path(d) / FINAL_FILE
            if final_path.is_file():
                # Finished before the driver stopped: report the same final result again, train nothing.
                tune.report(json.loads(final_path.read_text()))
                return
            if (Path(d) / RESUME_FILE).is_file():
                # A retry (lost node, failed worker) or a resumed experiment: go on after the last epoch reported.
                # torch only here: a population member that starts afresh only relays its host's bytes.
                from dept.schedule import TrainResume

                resume = TrainResume.load(Path(d) / RESUME_FILE)
                log.info("trial %s resumes after epoch %d", trial_id, resume.epoch)

    start_epoch = resume.epoch if resume is not None else 0
    reports = {"n": 0}
    # Which cluster node ran the trial (Ray's own node_ip cannot tell apart nodes sharing an address).
    node_id = ray.get_runtime_context().get_node_id()

    def on_checkpoint(metrics: dict, state) -> None:
        check_finite(metrics)
        if context.epoch_pause_s > 0:
            time.sleep(context.epoch_pause_s)
        # Every epoch's report carries the state to resume from: a retry repeats no finished epoch.
        with tempfile.TemporaryDirectory(prefix="dept-epoch-") as d:
            with benchtimers.timed("checkpoint_write"):  # bench only; a no-op unless asked for
                state.save(Path(d) / RESUME_FILE)
            with benchtimers.timed("tune_report"):  # the round trip, the checkpoint's upload to storage included
                tune.report({**metrics, NODE_ID_KEY: node_id, RESUMED_KEY: start_epoch},
                            checkpoint=tune.Checkpoint.from_directory(d))
        reports["n"] += 1
        if context.fail_once_dir and reports["n"] == 1:
            marker = Path(context.fail_once_dir) / f"{trial_id}.failed-once"
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return  # this trial already failed once: run normally
            os.close(fd)
            raise InjectedFailure(f"test hook {FAIL_ONCE_ENV}: first attempt of trial {trial_id} fails on purpose")

    def report_final(final: dict, folder: str) -> None:
        check_finite(final)
        final = {**final, NODE_ID_KEY: node_id, RESUMED_KEY: start_epoch}
        (Path(folder) / FINAL_FILE).write_text(json.dumps(final))
        hp_file = Path(folder) / HYPERPARAMETERS_FILE
        if not hp_file.is_file():  # a population host sends its member's: resolving settings imports torch
            hp_file.write_text(json.dumps(asdict(context.hyperparameters(config)), indent=1))
        with benchtimers.timed("tune_report_final"):  # bench only; a no-op unless asked for
            tune.report(final, checkpoint=tune.Checkpoint.from_directory(folder))

    try:
        if context.population > 1:
            run_member(config, context, trial_id, resume, on_checkpoint, report_final)
            return
        with tempfile.TemporaryDirectory(prefix="dept-trial-") as tmp:
            hp = context.hyperparameters(config)
            report_final(run_trial(hp, context, on_checkpoint=on_checkpoint, resume=resume, state_dir=tmp), tmp)
    except ValueError as e:  # TrialFailed too
        # A diverged trial or a configuration error (a ValueError: the trial's setup refused it) is the same on every
        # attempt: the trial ends here, failed, with its reason, instead of being retried.
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if not isinstance(e, TrialFailed):
            reason = f"{type(e).__name__}: {reason}"
        log.error("trial %s failed for good: %s", trial_id, reason)
        metrics = e.metrics if isinstance(e, TrialFailed) else {}
        tune.report({**failure_result(reason, metrics), FAILED_TRACEBACK_KEY: traceback.format_exc(),
                     NODE_ID_KEY: node_id, RESUMED_KEY: start_epoch})
