"""The parent run of a dataset: configurations grouped over seeds, the best one (validation metrics only),
results.csv, space.yaml, the plots and the best trial's learned state."""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from pipelines.figures import plot_coefficients
from pipelines.metrics import harmonic_mean
from pipelines.tracking.client import Tracker, is_number, metric_at, param_value

if TYPE_CHECKING:
    from pipelines.tracking.trial_logger import TrialRecord

log = logging.getLogger(__name__)


@dataclass
class ConfigSummary:
    """One configuration (hyperparameters without the seed) over its seeds."""

    params: dict
    trials: list = field(default_factory=list)  # TrialRecord

    def completed(self) -> list:
        return [t for t in self.trials if t.status == "completed"]

    def mean(self, key: str) -> float:
        vals = [t.result[key] for t in self.completed() if is_number(t.result.get(key))]
        return sum(vals) / len(vals) if vals else float("nan")

    def test_hm(self) -> float:
        """HM of the seed-averaged test base and new (the paper's convention, as ``report``), not the mean of HMs."""
        return harmonic_mean(self.mean("test_base_acc"), self.mean("test_new_acc"))


def config_key(hp) -> tuple:
    params = hp.as_params()
    params.pop("seed")
    return tuple(sorted((k, param_value(v)) for k, v in params.items()))


def group_configs(records: Iterable[TrialRecord]) -> list[ConfigSummary]:
    groups: dict[tuple, ConfigSummary] = {}
    for r in records:
        key = config_key(r.hp)
        if key not in groups:
            params = r.hp.as_params()
            params.pop("seed")
            groups[key] = ConfigSummary(params)
        groups[key].trials.append(r)
    return list(groups.values())


def best_config(records: Iterable[TrialRecord], metric: str, mode: str) -> tuple[ConfigSummary | None, TrialRecord | None]:
    """The configuration with the best mean over its seeds of the selection metric, and its best trial. Only
    configurations whose every seed ran to the end compete (a configuration the scheduler stopped on one seed would
    otherwise be scored on its luckier seeds alone); if there is none, those with any finished seed do. Only
    validation metrics take part (the selection metric never is a test metric)."""
    sign = 1.0 if mode == "max" else -1.0
    groups = [g for g in group_configs(records) if g.completed()]
    full = [g for g in groups if len(g.completed()) == len(g.trials)]
    scored = [(g.mean(metric), g) for g in (full or groups)]
    scored = [(s, g) for s, g in scored if not math.isnan(s)]
    if not scored:
        return None, None
    _, best = max(scored, key=lambda sg: sign * sg[0])
    trial = max(best.completed(), key=lambda t: sign * t.result.get(metric, -sign * math.inf))
    return best, trial


def results_rows(records: Iterable[TrialRecord], metric: str) -> list[dict]:
    rows = []
    for r in sorted(records, key=lambda r: r.trial_id):
        row = {"trial_id": r.trial_id, "run_id": r.run_id or "", "status": r.status,
               "epochs_done": r.result.get("epoch", 0), "failures": r.failures,
               "node_id": r.result.get("node_id", "")}
        row.update(r.hp.as_params())
        for key in (metric, "val_base_acc", "val_new_acc", "val_hm", "pseudo_base_acc", "pseudo_new_acc",
                    "pseudo_hm", "test_base_acc", "test_new_acc", "test_hm"):
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

    counts = {s: sum(1 for r in records if r.status == s) for s in ("completed", "stopped_early", "error")}
    tags: dict[str, Any] = {f"trials_{k}": v for k, v in counts.items()}
    if best is not None:
        # MLflow params are write-once: they hold the best configuration of the first summary, written only at the
        # true end of an experiment (an interrupted one writes none). The ``best.<name>`` tags are rewritten by every
        # summary, so they stay right even for a parent whose params an older run of this code fixed too early.
        tracker.log_params(parent_run_id, best.params)
        tags.update({f"best.{k}": param_value(v) for k, v in best.params.items()})
        ts = int(time.time() * 1000)
        metrics = [metric_at(f"best_{metric}", best.mean(metric), 0, ts)]
        means = {"test_base_acc": best.mean("test_base_acc"), "test_new_acc": best.mean("test_new_acc"),
                 "test_hm": best.test_hm()}
        for key, value in means.items():
            if not math.isnan(value):
                metrics.append(metric_at(f"best_{key}", value, 0, ts))
        metrics.append(metric_at("best_seeds", len(best.completed()), 0, ts))
        tracker.log_metrics(parent_run_id, metrics)
        tags.update({"best_trial_id": best_trial.trial_id, "best_run_id": best_trial.run_id or ""})
        if best_trial.checkpoint is not None:
            _log_checkpoint(client, parent_run_id, best_trial.checkpoint)
    tracker.set_tags(parent_run_id, tags)
    try:
        configs = [g for g in group_configs(records) if g.completed()]
        for path in plot_coefficients(configs, best, workdir, dataset):
            client.log_artifact(parent_run_id, str(path), artifact_path="plots")
    except ImportError as e:  # matplotlib comes with mlflow; without it the plots are skipped, not the run
        log.warning("plots skipped: %s", e)
    return best, best_trial


def _log_checkpoint(client, run_id: str, checkpoint) -> None:
    from pipelines.tune.trial import STATE_FILE  # here, not at the top: the trial module loads torch

    with checkpoint.as_directory() as d:
        for name in (STATE_FILE, "hyperparameters.json"):
            p = Path(d) / name
            if p.is_file():
                client.log_artifact(run_id, str(p), artifact_path="best_learned_state")


def finish_parent(tracker: Tracker, parent_run_id: str, status: str) -> None:
    """FINISHED, FAILED, or KILLED (interrupted: ``--resume`` continues it)."""
    tracker.client.set_terminated(parent_run_id, status)
