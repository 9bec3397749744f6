"""MLflow tracking for ``train`` and ``tune``: one writer, the driver.

Layout in MLflow:
- one experiment per ``--experiment`` name;
- per dataset one *parent* run (tag ``role=parent``): the best configuration as params, ``best_*`` metrics, and
  artifacts ``results.csv`` (every trial), ``space.yaml``, plots (base / new / HM against the loss weight and
  against the fusion weight) and ``best_learned_state/`` (the best trial's prompts + CAT head, safetensors);
- per Tune trial one *child* run (``mlflow.parentRunId`` = the parent, tag ``role=trial``, tag ``tune.trial_id``)
  named like ``coop+DePT lw=0.70 fw=0.70 seed=1``: params = every resolved hyperparameter (loss weight and fusion
  weight separately; both 0 without DePT, which is what the base method is), tags (dataset, method, dept, seed,
  shots, backbone, pretrained, feature_fingerprint, ...), metrics per epoch with ``step = epoch`` (``train_loss``,
  ``lr``, ``val_base_acc``, ``val_new_acc``, ``val_hm`` — or ``pseudo_*`` under the pseudo-new objective), the test
  metrics once (``test_base_acc``, ``test_new_acc``, ``test_hm``) and the fusion-weight sweep as curves with
  ``step = round(100 * fusion weight)`` (``sweep_val_base_acc``, ``sweep_val_hm``, ``sweep_test_base_acc``,
  ``sweep_test_hm``).

Trials never talk to MLflow. :class:`MlflowTrialLogger` is a ``ray.tune.Callback``: it runs in the driver and logs
each trial's reported results as they arrive, by name (Ray's own bookkeeping keys are not logged). A child run is
looked up by its ``tune.trial_id`` tag before one is created, and epochs already logged are not logged again, so a
retried trial or a resumed experiment never duplicates runs or points.
"""
from __future__ import annotations

import logging
import math
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlparse

log = logging.getLogger(__name__)

DEFAULT_DB = "mlflow.db"
ROLE_PARENT, ROLE_TRIAL, ROLE_TRAIN = "parent", "trial", "train"
TRIAL_ID_TAG = "tune.trial_id"
PARENT_TAG = "mlflow.parentRunId"
FINAL_TAG = "final_logged"
STATUS_TAG = "trial_status"  # completed | stopped_early | error | running
NODE_ID_TAG = "ray_node_id"  # the node that produced the final result
NODE_IDS_TAG = "ray_node_ids"  # every node any attempt of the trial reported from, comma-separated

#: Reported keys logged once per epoch (step = epoch). Anything else a trial reports is not logged per epoch.
EPOCH_METRICS = (
    "train_loss", "lr", "epoch_seconds",
    "val_base_acc", "val_new_acc", "val_hm",
    "pseudo_base_acc", "pseudo_new_acc", "pseudo_hm",
)
#: Reported once, in the final report.
FINAL_METRICS = ("test_base_acc", "test_new_acc", "test_hm", "train_seconds")
SWEEP_CURVES = ("sweep_val_base_acc", "sweep_val_hm", "sweep_pseudo_base_acc", "sweep_pseudo_hm",
                "sweep_test_base_acc", "sweep_test_hm")


class TrackingError(ValueError):
    """The tracking URI or experiment cannot be used; one line."""


def default_tracking_uri() -> str:
    """``sqlite:///<working folder>/mlflow.db`` (absolute, so every process means the same file)."""
    return f"sqlite:///{Path.cwd() / DEFAULT_DB}"


def check_tracking_uri(uri: str, *, timeout: float = 5.0) -> None:
    """Fail fast, in one line, when ``uri`` cannot be reached; called before Ray starts."""
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                if resp.status != 200:
                    raise TrackingError(f"MLflow tracking server {uri} answered {resp.status} on /health")
        except urllib.error.HTTPError as e:
            raise TrackingError(f"MLflow tracking server {uri} answered HTTP {e.code} on /health") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise TrackingError(f"MLflow tracking server {uri} is unreachable ({reason})") from None
        return
    if parsed.scheme == "sqlite":
        path = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else parsed.path
        if path and path != ":memory:":
            folder = Path(path).expanduser().resolve().parent
            if not folder.is_dir():
                raise TrackingError(f"MLflow tracking URI {uri}: folder {folder} does not exist")
            if not os.access(folder, os.W_OK):
                raise TrackingError(f"MLflow tracking URI {uri}: folder {folder} is not writable")
            if not Path(path).expanduser().exists():
                return  # created, with its tables, by the first real use (after every other check passed)
    # Other schemes (file:, databricks, ...) are checked by the first client call below.
    try:
        from mlflow import MlflowClient

        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as e:  # any failure here is the URI's: report it in one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TrackingError(f"MLflow tracking URI {uri} cannot be used: {first}") from None


def _artifact_location(uri: str) -> str | None:
    """For a SQLite store, artifacts beside the database (MLflow's default is ./mlruns of whatever folder the
    process happened to start in)."""
    if uri.startswith("sqlite:///"):
        return str(Path(uri[len("sqlite:///"):]).expanduser().resolve().parent / "mlruns")
    return None


def _metric(key: str, value: Any, step: int, ts: int):
    from mlflow.entities import Metric

    return Metric(key=key, value=float(value), timestamp=ts, step=int(step))


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None


def harmonic_mean(base: float, new: float) -> float:
    """dept.evaluate.harmonic_mean's formula, here so that ``report`` need not import torch (any ``dept`` import
    does) to summarise MLflow numbers; tests/test_report.py keeps the two equal."""
    return 0.0 if base + new == 0 else 2.0 * base * new / (base + new)


def param_value(v: Any) -> str:
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    if v == "":
        return '""'
    return str(v)


def run_name(hp) -> str:
    """A readable child-run name: method, DePT or not, loss weight, fusion weight, seed."""
    name = f"{hp.method}+DePT" if hp.dept else hp.method
    return f"{name} lw={hp.loss_weight:.2f} fw={hp.fusion_weight:.2f} seed={hp.seed}"


class Tracker:
    """The driver's handle on one MLflow experiment."""

    def __init__(self, uri: str, experiment: str):
        from mlflow import MlflowClient

        self.uri = uri
        self.experiment_name = experiment
        self.client = MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is not None and exp.lifecycle_stage == "deleted":
            raise TrackingError(f"MLflow experiment {experiment!r} at {uri} is deleted; restore it or use another name")
        if exp is None:
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=_artifact_location(uri))
            log.info("created MLflow experiment %r (%s) at %s", experiment, self.experiment_id, uri)
        else:
            self.experiment_id = exp.experiment_id

    # -- queries --------------------------------------------------------------------------------------------
    def search(self, filter_string: str) -> list:
        """Every active run of the experiment matching ``filter_string`` (all pages)."""
        runs, token = [], None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string=filter_string, max_results=1000,
                                           page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def find_parent(self, dataset: str) -> str | None:
        runs = self.search(f"tags.role = '{ROLE_PARENT}' and tags.dataset = '{_q(dataset)}'")
        if len(runs) > 1:
            log.warning("%d parent runs for dataset %s in experiment %s; using the newest", len(runs), dataset,
                        self.experiment_name)
        runs.sort(key=lambda r: r.info.start_time or 0, reverse=True)
        return runs[0].info.run_id if runs else None

    def children(self, parent_run_id: str) -> list:
        return self.search(f"tags.`{PARENT_TAG}` = '{parent_run_id}'")

    # -- writes ---------------------------------------------------------------------------------------------
    def create_parent(self, dataset: str, tags: dict[str, str], name: str) -> str:
        run = self.client.create_run(self.experiment_id, run_name=name,
                                     tags={**tags, "role": ROLE_PARENT, "dataset": dataset})
        return run.info.run_id

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        """Params are write-once in MLflow: a value already logged (resumed runs) is left as it is."""
        from mlflow.entities import Param

        existing = self.client.get_run(run_id).data.params
        fresh = [Param(k, param_value(v)) for k, v in params.items() if k not in existing]
        changed = [k for k, v in params.items() if k in existing and existing[k] != param_value(v)]
        if changed:
            log.warning("run %s already has params %s with other values; keeping the logged ones", run_id, changed)
        for i in range(0, len(fresh), 100):
            self.client.log_batch(run_id, params=fresh[i : i + 100])

    def log_metrics(self, run_id: str, metrics: list) -> None:
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[i : i + 1000])

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, param_value(v)) for k, v in tags.items()])


def _q(value: str) -> str:
    """Quote a value for an MLflow filter string."""
    return str(value).replace("'", "\\'")


def final_metrics(result: dict, ts: int | None = None) -> list:
    """The once-per-trial metrics of a final report: test metrics at the last epoch, and the sweep curves."""
    ts = ts or int(time.time() * 1000)
    epoch = int(result.get("epoch", 0))
    out = [_metric(k, result[k], epoch, ts) for k in FINAL_METRICS if _is_number(result.get(k))]
    weights = result.get("sweep_fusion_weights") or []
    for key in SWEEP_CURVES:
        values = result.get(key)
        if not values:
            continue
        out.extend(_metric(key, v, round(100 * w), ts) for w, v in zip(weights, values) if _is_number(v))
    return out


def epoch_metrics(result: dict, ts: int | None = None) -> list:
    ts = ts or int(time.time() * 1000)
    epoch = int(result["epoch"])
    return [_metric(k, result[k], epoch, ts) for k in EPOCH_METRICS if _is_number(result.get(k))
            and not (isinstance(result[k], float) and math.isnan(result[k]))]


# -- train: one run, no parent -----------------------------------------------------------------------------------
def log_train_run(tracker: Tracker, hp, tags: dict[str, str], history: list[dict], final: dict,
                  state_path: Path | None) -> str:
    """``dept-pipeline train``: one top-level run holding the same names as a Tune child run."""
    run = tracker.client.create_run(
        tracker.experiment_id, run_name=run_name(hp),
        tags={**tags, "role": ROLE_TRAIN, "method": hp.method, "dept": param_value(hp.dept),
              "seed": str(hp.seed), "shots": str(hp.shots), STATUS_TAG: "completed"},
    )
    run_id = run.info.run_id
    try:
        tracker.log_params(run_id, hp.as_params())
        ts = int(time.time() * 1000)
        metrics = [m for r in history for m in epoch_metrics(r, ts)] + epoch_metrics(final, ts)
        tracker.log_metrics(run_id, metrics + final_metrics(final, ts))
        tracker.set_tags(run_id, {FINAL_TAG: True})
        if state_path is not None:
            tracker.client.log_artifact(run_id, str(state_path), artifact_path="learned_state")
    except BaseException:
        tracker.client.set_terminated(run_id, "FAILED")
        raise
    tracker.client.set_terminated(run_id, "FINISHED")
    return run_id


# -- tune: the driver-side callback ----------------------------------------------------------------------------
@dataclass
class TrialRecord:
    """What the driver knows about one trial at the end of a dataset."""

    trial_id: str
    run_id: str | None
    hp: Any  # Hyperparameters
    status: str  # completed | stopped_early | error
    result: dict  # the last reported result (Ray's bookkeeping keys included; only named keys are used)
    checkpoint: Any = None  # ray.tune.Checkpoint of a completed trial
    error: str = ""
    failures: int = 0


_ACTIVE_LOGGERS: dict[str, "MlflowTrialLogger"] = {}


def _active_logger(key: str):
    """Unpickling hook: Tune stores its run config (callbacks included) in the experiment folder; on restore the
    callback is the one the current driver registered (its URI and parent run), never a stale copy."""
    logger = _ACTIVE_LOGGERS.get(key)
    if logger is None:
        raise TrackingError(
            f"the MLflow logger {key!r} of this Tune experiment is not set up in this process; "
            "resume through `dept-pipeline tune --resume`"
        )
    return logger


def _ray_callback_base():
    from ray.tune import Callback

    return Callback


class MlflowTrialLogger(_ray_callback_base()):
    """Logs every trial of one dataset to MLflow as a child run of ``parent_run_id``, from the driver."""

    def __init__(self, tracker: Tracker, parent_run_id: str, *, key: str, context, space_name: str,
                 metric: str, mode: str, experiment_path: str):
        self.tracker = tracker
        self.parent_run_id = parent_run_id
        self.key = key
        self.context = context  # pipelines.trial.TrialContext
        self.space_name = space_name
        self.metric = metric
        self.mode = mode
        self.experiment_path = experiment_path
        self._runs: dict[str, str] = {}  # trial id -> run id
        self._last_epoch: dict[str, int] = {}  # trial id -> last epoch logged
        self._final_logged: set[str] = set()
        # trial id -> every node its attempts ran on: a retried trial may move, and the final result names only
        # the last one.
        self._nodes: dict[str, set[str]] = {}
        self.records: dict[str, TrialRecord] = {}
        self.complete = False  # set at the end of the experiment: every trial terminated or errored
        _ACTIVE_LOGGERS[key] = self

    def __reduce__(self):
        return _active_logger, (self.key,)

    def close(self) -> None:
        _ACTIVE_LOGGERS.pop(self.key, None)

    # -- runs -----------------------------------------------------------------------------------------------
    def _tags(self, hp, trial_id: str) -> dict[str, Any]:
        return {
            **self.context.tags(),
            "role": ROLE_TRIAL,
            "method": hp.method,
            "dept": hp.dept,
            "seed": hp.seed,
            "shots": hp.shots,
            "space": self.space_name,
            "selection_metric": self.metric,
            "selection_mode": self.mode,
            TRIAL_ID_TAG: trial_id,
            "tune.experiment_path": self.experiment_path,
            PARENT_TAG: self.parent_run_id,
        }

    def run_for(self, trial_id: str, config: dict) -> str:
        """The child run of a trial: cached, else found by its trial id tag, else created."""
        run_id = self._runs.get(trial_id)
        if run_id is not None:
            return run_id
        client = self.tracker.client
        existing = self.tracker.search(
            f"tags.`{TRIAL_ID_TAG}` = '{_q(trial_id)}' and tags.`{PARENT_TAG}` = '{self.parent_run_id}'"
        )
        hp = self.context.hyperparameters(config)
        if existing:
            run = existing[0]
            run_id = run.info.run_id
            history = client.get_metric_history(run_id, "train_loss")
            self._last_epoch[trial_id] = max((m.step for m in history), default=0)
            if run.data.tags.get(FINAL_TAG) == "true":
                self._final_logged.add(trial_id)
            self._nodes[trial_id] = set(filter(None, run.data.tags.get(NODE_IDS_TAG, "").split(",")))
            log.info("trial %s: continuing MLflow run %s", trial_id, run_id)
        else:
            tags = {k: param_value(v) for k, v in self._tags(hp, trial_id).items()}
            tags[STATUS_TAG] = "running"
            run_id = client.create_run(self.tracker.experiment_id, run_name=run_name(hp), tags=tags).info.run_id
            params = hp.as_params()
            params["objective"] = self.context.objective
            if self.context.objective == "pseudo-new":
                params["pseudo_new_fraction"] = self.context.pseudo_new_fraction
            self.tracker.log_params(run_id, params)
            self._last_epoch[trial_id] = 0
        self._runs[trial_id] = run_id
        return run_id

    def log_result(self, trial_id: str, config: dict, result: dict) -> None:
        run_id = self.run_for(trial_id, config)
        ts = int(time.time() * 1000)
        metrics = []
        epoch = int(result.get("epoch", 0))
        if epoch > self._last_epoch.get(trial_id, 0):
            metrics.extend(epoch_metrics(result, ts))
            self._last_epoch[trial_id] = epoch
        final = bool(result.get("final")) and trial_id not in self._final_logged
        if final:
            metrics.extend(final_metrics(result, ts))
        if metrics:
            self.tracker.log_metrics(run_id, metrics)
        tags: dict[str, Any] = {}
        node_id = result.get("node_id")
        nodes = self._nodes.setdefault(trial_id, set())
        if node_id and node_id not in nodes:
            nodes.add(node_id)
            tags[NODE_IDS_TAG] = ",".join(sorted(nodes))
        if final:
            tags[FINAL_TAG] = True
            if node_id:
                tags[NODE_ID_TAG] = node_id
            self._final_logged.add(trial_id)
        if tags:
            self.tracker.set_tags(run_id, tags)

    def finish(self, trial_id: str, config: dict, status: str, error: str = "", failures: int = 0) -> None:
        run_id = self.run_for(trial_id, config)
        tags: dict[str, Any] = {STATUS_TAG: status, "failures": failures}
        if error:
            tags["error"] = error[:4000]
        self.tracker.set_tags(run_id, tags)
        self.tracker.client.set_terminated(run_id, "FAILED" if status == "error" else "FINISHED")

    # -- Tune hooks -----------------------------------------------------------------------------------------
    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.log_result(trial.trial_id, trial.config, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        status = "completed" if trial.last_result.get("final") else "stopped_early"
        self.finish(trial.trial_id, trial.config, status, failures=trial.run_metadata.num_failures)
        hp = self.context.hyperparameters(trial.config)
        what = (f"test HM {trial.last_result.get('test_hm', float('nan')):.2f}" if status == "completed"
                else f"stopped after epoch {trial.last_result.get('epoch')}")
        log.info("%s %s: %s, %s %.2f", self.context.dataset, run_name(hp), what, self.metric,
                 trial.last_result.get(self.metric, float("nan")))

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.tracker.set_tags(self.run_for(trial.trial_id, trial.config),
                              {"failures": trial.run_metadata.num_failures, STATUS_TAG: "retrying"})
        log.warning("%s trial %s failed; retrying (%d failure(s) so far)", self.context.dataset, trial.trial_id,
                    trial.run_metadata.num_failures)

    def on_trial_error(self, iteration, trials, trial, **info):
        error = _trial_error(trial)
        self.finish(trial.trial_id, trial.config, "error", error, failures=trial.run_metadata.num_failures)
        last = error.strip().splitlines()[-1] if error.strip() else "failed"
        log.error("%s trial %s failed for good: %s", self.context.dataset, trial.trial_id, last)

    def on_experiment_end(self, trials, **info):
        self.reconcile(trials)

    # -- end of a dataset -----------------------------------------------------------------------------------
    def reconcile(self, trials: Iterable) -> None:
        """Make MLflow agree with Tune's final view: every trial exactly one child run with its final metrics and
        a terminal status (a driver killed at the wrong moment may have missed some), and no child run for a trial
        id Tune no longer has (created by a killed driver for a trial that Tune re-created under a new id on
        resume): those are soft-deleted (``mlflow runs restore`` brings them back)."""
        trials = list(trials)
        known = {t.trial_id for t in trials}
        self.complete = all(t.status in ("TERMINATED", "ERROR") for t in trials)
        for trial in trials:
            if trial.status not in ("TERMINATED", "ERROR"):
                continue  # interrupted: it runs again on --resume
            result = dict(trial.last_result or {})
            if trial.status == "ERROR":
                status = "error"
            elif result.get("final"):
                status = "completed"
            else:
                status = "stopped_early"
            if result.get("epoch") is not None or status == "error":
                if result.get("epoch") is not None:
                    self.log_result(trial.trial_id, trial.config, result)
                run = self.tracker.client.get_run(self.run_for(trial.trial_id, trial.config))
                if run.info.status == "RUNNING" or run.data.tags.get(STATUS_TAG) != status:
                    self.finish(trial.trial_id, trial.config, status, _trial_error(trial) if status == "error" else "",
                                failures=trial.run_metadata.num_failures)
            self.records[trial.trial_id] = TrialRecord(
                trial_id=trial.trial_id,
                run_id=self._runs.get(trial.trial_id),
                hp=self.context.hyperparameters(trial.config),
                status=status,
                result=result,
                checkpoint=trial.checkpoint if status == "completed" else None,
                error=_trial_error(trial) if status == "error" else "",
                failures=trial.run_metadata.num_failures,
            )
        if not self.complete:
            return
        for run in self.tracker.children(self.parent_run_id):
            trial_id = run.data.tags.get(TRIAL_ID_TAG)
            if trial_id not in known:
                log.warning("soft-deleting MLflow run %s: its Tune trial %s no longer exists (driver killed before "
                            "Tune saved it; the trial ran again under a new id)", run.info.run_id, trial_id)
                self.tracker.client.delete_run(run.info.run_id)


def _trial_error(trial) -> str:
    try:
        err = trial.get_error()
    except Exception:  # the error file may be gone on remote storage; the status says enough
        err = None
    return str(err) if err else "failed"


# -- parent run summary ----------------------------------------------------------------------------------------
@dataclass
class ConfigSummary:
    """One configuration (hyperparameters without the seed) over its seeds."""

    params: dict
    trials: list = field(default_factory=list)  # TrialRecord

    def completed(self) -> list:
        return [t for t in self.trials if t.status == "completed"]

    def mean(self, key: str) -> float:
        vals = [t.result[key] for t in self.completed() if _is_number(t.result.get(key))]
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
        tracker.log_params(parent_run_id, best.params)
        ts = int(time.time() * 1000)
        metrics = [_metric(f"best_{metric}", best.mean(metric), 0, ts)]
        means = {"test_base_acc": best.mean("test_base_acc"), "test_new_acc": best.mean("test_new_acc"),
                 "test_hm": best.test_hm()}
        for key, value in means.items():
            if not math.isnan(value):
                metrics.append(_metric(f"best_{key}", value, 0, ts))
        metrics.append(_metric("best_seeds", len(best.completed()), 0, ts))
        tracker.log_metrics(parent_run_id, metrics)
        tags.update({"best_trial_id": best_trial.trial_id, "best_run_id": best_trial.run_id or ""})
        if best_trial.checkpoint is not None:
            _log_checkpoint(client, parent_run_id, best_trial.checkpoint)
    tracker.set_tags(parent_run_id, tags)
    try:
        from pipelines.report import plot_coefficients

        for path in plot_coefficients(records, best, workdir, dataset):
            client.log_artifact(parent_run_id, str(path), artifact_path="plots")
    except ImportError as e:  # matplotlib comes with mlflow; without it the plots are skipped, not the run
        log.warning("plots skipped: %s", e)
    return best, best_trial


def _log_checkpoint(client, run_id: str, checkpoint) -> None:
    from pipelines.trial import STATE_FILE

    with checkpoint.as_directory() as d:
        for name in (STATE_FILE, "hyperparameters.json"):
            p = Path(d) / name
            if p.is_file():
                client.log_artifact(run_id, str(p), artifact_path="best_learned_state")


def finish_parent(tracker: Tracker, parent_run_id: str, status: str) -> None:
    """FINISHED, FAILED, or KILLED (interrupted: ``--resume`` continues it)."""
    tracker.client.set_terminated(parent_run_id, status)


__all__ = [
    "MlflowTrialLogger", "Tracker", "TrackingError", "TrialRecord", "best_config", "check_tracking_uri",
    "default_tracking_uri", "log_train_run", "run_name", "write_parent_summary",
]
