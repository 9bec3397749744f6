"""The parent run of a dataset: configurations grouped over seeds, the best one (validation metrics only),
results.csv, space.yaml, the plots and the best trial's learned state."""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from pipelines.figures import parent_figures
from pipelines.selection import ConfigOutcome, SeedRun, config_key, rank, tie_note, winner
from pipelines.tracking.client import Tracker, metric_at
from pipelines.vocabulary import (
    COMPLETED,
    FAILED,
    PSEUDO_BASE_ACC,
    PSEUDO_HM,
    PSEUDO_NEW_ACC,
    STATE_NAMES,
    STOPPED_EARLY,
    TEST_BASE_ACC,
    TEST_HM,
    TEST_NEW_ACC,
    VAL_BASE_ACC,
    VAL_HM,
    VAL_NEW_ACC,
    is_transfer_test_metric,
    param_value,
)

if TYPE_CHECKING:
    from pipelines.tracking.trial_logger import TrialRecord

log = logging.getLogger(__name__)


@dataclass
class ConfigSummary:
    """One configuration (hyperparameters without the seed) over its seeds: the winner's view for the tune summary
    and the parent run. ``outcome`` is :mod:`pipelines.selection`'s, which decided."""

    params: dict
    outcome: ConfigOutcome
    trials: list = field(default_factory=list)  # TrialRecord, one per seed (duplicates dropped)
    tie: str = ""  # the winner's: how an exact tie on the selection metric was broken (pipelines.selection.tie_note)

    def completed(self) -> list:
        return [r.source for r in self.outcome.completed()]

    @property
    def complete(self) -> bool:
        return self.outcome.complete

    def mean(self, key: str) -> float:
        return self.outcome.mean(key)

    def test_hm(self) -> float:
        """HM of the seed-averaged test base and new (the paper's convention, as ``report``), not the mean of HMs."""
        return self.outcome.test_hm()

    def seeds_text(self) -> str:
        return self.outcome.seeds_text()


def rank_configs(records: Iterable[TrialRecord], metric: str, mode: str) -> list[ConfigSummary]:
    """Every configuration of a dataset's trials, best first, by :func:`pipelines.selection.rank` (the seeds
    expected of each: every seed the dataset's trials have)."""
    records = list(records)
    runs = [SeedRun(config_key(r.hp), str(r.hp.seed), r.status, r.result, source=r, params=dict(config_key(r.hp)))
            for r in records]
    out = []
    for outcome in rank(runs, metric, mode):
        params = next(iter(outcome.runs.values())).source.hp.as_params()
        params.pop("seed")
        if not params["dept_effective"]:  # DePT at loss weight 0 is the plain method, and is written as it
            params.update(dept=False, loss_weight=0.0, fusion_weight=0.0)
        out.append(ConfigSummary(params, outcome, [r.source for _, r in sorted(outcome.runs.items())]))
    return out


def best_config(records: Iterable[TrialRecord], metric: str, mode: str) -> tuple[ConfigSummary | None, TrialRecord | None]:
    """The winning configuration (:func:`pipelines.selection.winner`: every seed completed, best mean of the
    selection metric) and its best trial; (None, None) when no configuration is complete."""
    ranked = rank_configs(records, metric, mode)
    if not ranked or winner([c.outcome for c in ranked], metric) is None:
        return None, None
    best = ranked[0]
    best.tie = tie_note([c.outcome for c in ranked], metric)
    sign = 1.0 if mode == "max" else -1.0
    trial = max(best.completed(), key=lambda t: sign * t.result.get(metric, -sign * math.inf))
    return best, trial


def transfer_keys(result: dict) -> list[str]:
    """The transfer protocols' test metrics in a final result: source, each target, their average."""
    return [k for k in result if is_transfer_test_metric(k)]


def results_rows(records: Iterable[TrialRecord], metric: str) -> list[dict]:
    rows = []
    for r in sorted(records, key=lambda r: r.trial_id):
        row = {"trial_id": r.trial_id, "run_id": r.run_id or "", "status": r.status,
               "epochs_done": r.result.get("epoch", 0), "failures": r.failures,
               "node_id": r.result.get("node_id", "")}
        row.update(r.hp.as_params())
        for key in (metric, VAL_BASE_ACC, VAL_NEW_ACC, VAL_HM, PSEUDO_BASE_ACC, PSEUDO_NEW_ACC,
                    PSEUDO_HM, TEST_BASE_ACC, TEST_NEW_ACC, TEST_HM, *transfer_keys(r.result)):
            if key in r.result and key not in row:
                row[key] = r.result[key]
        rows.append(row)
    return rows


def write_parent_summary(tracker: Tracker, parent_run_id: str, records: list[TrialRecord], *, metric: str,
                         mode: str, space_yaml: str, workdir: Path, dataset: str = "") -> tuple[ConfigSummary | None, TrialRecord | None]:
    """Best config (params), best_* metrics, results.csv, plots and the best trial's learned state."""
    import csv

    best, best_trial = best_config(records, metric, mode)
    workdir.mkdir(parents=True, exist_ok=True)
    rows = results_rows(records, metric)
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    csv_path = workdir / "results.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    (workdir / "space.yaml").write_text(space_yaml)
    client = tracker.client
    client.log_artifact(parent_run_id, str(csv_path))
    client.log_artifact(parent_run_id, str(workdir / "space.yaml"))

    counts = {s: sum(1 for r in records if r.status == s) for s in (COMPLETED, STOPPED_EARLY, FAILED)}
    tags: dict[str, Any] = {f"trials_{k}": v for k, v in counts.items()}
    if best is not None:
        # MLflow params are write-once: they hold the best configuration of the first summary, written only at the
        # true end of an experiment (an interrupted one writes none). The ``best.<name>`` tags are rewritten by every
        # summary, so they stay right even for a parent whose params an older run of this code fixed too early.
        tracker.log_params(parent_run_id, best.params)
        tags.update({f"best.{k}": param_value(v) for k, v in best.params.items()})
        ts = int(time.time() * 1000)
        metrics = [metric_at(f"best_{metric}", best.mean(metric), 0, ts)]
        means = {TEST_BASE_ACC: best.mean(TEST_BASE_ACC), TEST_NEW_ACC: best.mean(TEST_NEW_ACC),
                 TEST_HM: best.test_hm(), **{k: best.mean(k) for k in transfer_keys(best_trial.result)}}
        for key, value in means.items():
            if not math.isnan(value):
                metrics.append(metric_at(f"best_{key}", value, 0, ts))
        metrics.append(metric_at("best_seeds", len(best.completed()), 0, ts))
        tracker.log_metrics(parent_run_id, metrics)
        tags.update({"best_trial_id": best_trial.trial_id, "best_run_id": best_trial.run_id or "",
                     "best_tie": best.tie or "none"})
        if best_trial.checkpoint is not None:
            _log_checkpoint(client, parent_run_id, best_trial.checkpoint)
    elif records:
        # Said, not left blank: the best of a subset of seeds would be no result (pipelines.selection).
        seeds = len({r.hp.seed for r in records})
        tags["best"] = f"none: no configuration has all {seeds} seed(s) completed"
    tracker.set_tags(parent_run_id, tags)
    try:
        for path in parent_figures(tracker, parent_run_id, records, best, workdir, metric=metric, mode=mode,
                                   dataset=dataset):
            client.log_artifact(parent_run_id, str(path), artifact_path="plots")
    except ImportError as e:  # matplotlib comes with mlflow; without it the plots are skipped, not the run
        log.warning("plots skipped: %s", e)
    return best, best_trial


def _log_checkpoint(client, run_id: str, checkpoint) -> None:
    with checkpoint.as_directory() as d:
        for name in STATE_NAMES[:2]:  # the learned state and its hyperparameters
            p = Path(d) / name
            if p.is_file():
                client.log_artifact(run_id, str(p), artifact_path="best_learned_state")


def finish_parent(tracker: Tracker, parent_run_id: str, status: str) -> None:
    """FINISHED, FAILED, or KILLED (interrupted: ``--resume`` continues it)."""
    tracker.client.set_terminated(parent_run_id, status)
