"""The run vocabulary: every name a run is written and read by (roles, tags, metric keys, learned-state files),
spelt once. The producers (trials, the Tune callback, ``train``, zero-shot) and the consumers (summary, report,
figures, export, the UI's view) import these; no module spells them itself. Plain constants and the two or three rules that spell keys and values; no imports.
"""
from __future__ import annotations

from typing import Any

DEFAULT_DB = "mlflow.db"
#: The tag saying what a run is: a parent, a trial, a ``train`` run, a zero-shot row.
ROLE_TAG = "role"
ROLE_PARENT, ROLE_TRIAL, ROLE_TRAIN = "parent", "trial", "train"
#: CLIP zero-shot on a dataset (no training; ``pipelines.trial.zero_shot``), under the parent run when ``tune`` logs it.
ROLE_ZERO_SHOT = "zero-shot"
TRIAL_ID_TAG = "tune.trial_id"
PARENT_TAG = "mlflow.parentRunId"
FINAL_TAG = "final_logged"
STATUS_TAG = "trial_status"  # completed | stopped_early | error | running | abandoned
NODE_ID_TAG = "ray_node_id"  # the node that produced the final result
NODE_IDS_TAG = "ray_node_ids"  # every node any attempt of the trial reported from, comma-separated
#: ``tune --population``: the population that trained the trial (its latest attempt's) and its size; a trial's
#: results carry the same keys (pipelines.trial.population).
POPULATION_TAG, POPULATION_SIZE_TAG = "population", "population_size"

#: The selection metrics: base-to-new on the few-shot val images (base accuracy with the fused head, new with the ITM
#: head, their HM), the same under the pseudo-new objective, and the transfer protocols' source val accuracy.
VAL_BASE_ACC, VAL_NEW_ACC, VAL_HM = "val_base_acc", "val_new_acc", "val_hm"
PSEUDO_BASE_ACC, PSEUDO_NEW_ACC, PSEUDO_HM = "pseudo_base_acc", "pseudo_new_acc", "pseudo_hm"
VAL_ACC = "val_acc"
#: The test metrics of a base-to-new run, scored once at the end.
TEST_BASE_ACC, TEST_NEW_ACC, TEST_HM = "test_base_acc", "test_new_acc", "test_hm"

#: Reported keys logged once per epoch (step = epoch). Anything else a trial reports is not logged per epoch.
EPOCH_METRICS = (
    "train_loss", "lr", "epoch_seconds",
    VAL_BASE_ACC, VAL_NEW_ACC, VAL_HM,
    PSEUDO_BASE_ACC, PSEUDO_NEW_ACC, PSEUDO_HM,
    VAL_ACC,  # the transfer protocols: all source classes, source val images
)
#: Reported once, in the final report. The transfer protocols report ``test_acc`` (source), ``test_target_avg``
#: and one ``test_acc/<target>`` per target (TARGET_METRIC_PREFIX).
TRANSFER_TEST_METRICS = ("test_acc", "test_target_avg")
FINAL_METRICS = (TEST_BASE_ACC, TEST_NEW_ACC, TEST_HM, "train_seconds", *TRANSFER_TEST_METRICS)
TARGET_METRIC_PREFIX = "test_acc/"


def is_transfer_test_metric(key: str) -> bool:
    """``test_acc``, ``test_target_avg`` or a ``test_acc/<target>``."""
    return key in TRANSFER_TEST_METRICS or key.startswith(TARGET_METRIC_PREFIX)


#: The sweep points logged as metrics, one per weight (``test_hm_sweep/fw0.70``), so that trials compare at one
#: fusion weight in the runs table, charts and compare view (a curve over steps showed an x-axis "Step 0-100"):
#: the HM curves (base moves with the fusion weight, new does not) every 0.1. The full curves stay in the trial's
#: final result and the parent run's fusion_weight_sweep.png. Named after their metric, they sort beside it.
SWEEP_METRIC_CURVES = ("sweep_val_hm", "sweep_pseudo_hm", "sweep_test_hm")
SWEEP_METRIC_WEIGHTS = tuple(round(0.1 * i, 1) for i in range(11))


def sweep_key(curve: str, weight: float) -> str:
    return f"{curve.removeprefix('sweep_')}_sweep/fw{weight:.2f}"


#: A completed trial's (and a ``train`` run's) learned state: the artifact folder, its files, and the tag set once
#: the folder is complete.
STATE_ARTIFACTS = "learned_state"
STATE_NAMES = ("learned_state.safetensors", "hyperparameters.json", "final.json")  # pipelines.trial.plan writes them
CONFIG_FILE = "config.json"
STATE_TAG = "learned_state"  # "logged" once the folder is complete
#: The MLflow experiment tag naming the running ``tune`` that owns the experiment (pipelines.tracking.lease).
TUNE_OWNER_TAG = "dept.tune_owner"
#: A parent run's tag: the Tune experiment folder its trials run in (one parent per storage and dataset).
EXPERIMENT_PATH_TAG = "tune.experiment_path"
#: The run tag naming the protocol (``dept.protocols``' words); runs logged before the transfer protocols have none:
#: they are base-to-new.
PROTOCOL_TAG = "protocol"
#: Reported with every result: the Ray node the trial ran on (a tag and a results.csv column, not a metric).
NODE_ID_KEY = "node_id"
#: Reported with every result: the epoch this attempt started after (0: from scratch; > 0: a retry that resumed).
RESUMED_KEY = "resumed_after_epoch"
#: A trial's end state, as the ``trial_status`` tag says it.
COMPLETED, STOPPED_EARLY, FAILED = "completed", "stopped_early", "error"
#: A run whose trial Tune no longer has (a driver killed after it made the run and before Tune saved the trial; the
#: trial ran again under a new id): kept with its history, KILLED, never counted before a completed run of its seed.
ABANDONED = "abandoned"
#: In a trial's last result: why it failed for good (a non-finite loss, a configuration error; ``error`` tag of its
#: run). Such a trial ends without a retry: retrying cannot change it.
FAILED_KEY = "trial_failed"
FAILED_TRACEBACK_KEY = "trial_failed_traceback"  # where it was raised (the run's error.txt)


#: How a value is written as an MLflow param or tag (and read back to compare configurations).
def param_value(v: Any) -> str:
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    if v == "":
        return '""'
    return str(v)
