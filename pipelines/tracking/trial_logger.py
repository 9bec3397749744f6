"""The driver-side Ray Tune callback that logs every trial of one dataset to MLflow as a child run of the
dataset's parent run. Trials never talk to MLflow; a retried trial or a resumed experiment never duplicates runs
or points (see :mod:`pipelines.tracking`)."""
from __future__ import annotations

import json
import logging
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from pipelines import benchtimers
from pipelines.secrets import mask_uri
from pipelines.tracking.client import (
    Tracker,
    TrackingError,
    epoch_metrics,
    final_metrics,
    log_feature_store_input,
    log_learned_state,
    quote_filter,
    run_name,
)
from pipelines.tracking.writer import ResultWriter
from pipelines.vocabulary import (
    ABANDONED,
    COMPLETED,
    FAILED,
    FAILED_KEY,
    FAILED_TRACEBACK_KEY,
    FINAL_TAG,
    NODE_ID_TAG,
    NODE_IDS_TAG,
    PARENT_TAG,
    POPULATION_SIZE_TAG,
    POPULATION_TAG,
    ROLE_TAG,
    ROLE_TRIAL,
    STATE_NAMES,
    STATE_TAG,
    STATUS_TAG,
    STOPPED_EARLY,
    TEST_HM,
    TRIAL_ID_TAG,
    param_value,
)

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"  # Tune's per-trial result log (ray.air.constants.EXPR_RESULT_FILE)


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
        self.context = context  # pipelines.trial.plan.TrialContext
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
        # Set by the runner: called as Tune starts (after it installed its SIGINT handler), and asked at the end
        # whether SIGINT / SIGTERM stopped the experiment (then trials Tune stopped are unfinished, not done).
        self.on_setup = None
        self.interrupted = lambda: False
        # Set by the runner under --population: called with every trial that ended (stopped, failed, retrying).
        self.on_trial_end = None
        self._population: dict[str, str] = {}  # trial id -> population tagged on its run
        # Per-result metrics and tags go out from a thread of their own, off Tune's event loop (pipelines.tracking
        # .writer); flushed before a run is read back or ended.
        self.writer = ResultWriter(tracker)
        _ACTIVE_LOGGERS[key] = self

    def __reduce__(self):
        return _active_logger, (self.key,)

    def close(self) -> None:
        _ACTIVE_LOGGERS.pop(self.key, None)
        self.writer.close()

    # -- runs -----------------------------------------------------------------------------------------------
    def _tags(self, hp, trial_id: str) -> dict[str, Any]:
        tags = {
            **self.context.tags(),
            ROLE_TAG: ROLE_TRIAL,
            "method": hp.method,
            "dept": hp.dept,
            "seed": hp.seed,
            "seeds": ",".join(map(str, self.context.seeds)),  # every configuration's seeds: report's "complete"
            "shots": hp.shots,
            "space": self.space_name,
            "selection_metric": self.metric,
            "selection_mode": self.mode,
            TRIAL_ID_TAG: trial_id,
            "tune.experiment_path": self.experiment_path,
            PARENT_TAG: self.parent_run_id,
        }
        # Paths and URLs as shown anywhere: without credentials.
        for key in ("tune.experiment_path", "features_url"):
            tags[key] = mask_uri(str(tags[key]))
        return tags

    def run_for(self, trial_id: str, config: dict) -> str:
        """The child run of a trial: cached, else found by its trial id tag, else created."""
        run_id = self._runs.get(trial_id)
        if run_id is not None:
            return run_id
        client = self.tracker.client
        existing = self.tracker.search(
            f"tags.`{TRIAL_ID_TAG}` = '{quote_filter(trial_id)}' and tags.`{PARENT_TAG}` = '{self.parent_run_id}'"
        )
        hp = self.context.hyperparameters(config)
        params = hp.as_params()
        params["objective"] = self.context.objective
        if self.context.objective == "pseudo-new":
            params["pseudo_new_fraction"] = self.context.pseudo_new_fraction
        if existing:
            run = existing[0]
            run_id = run.info.run_id
            if not run.data.params:  # a driver killed between creating the run and logging its params
                self.tracker.log_params(run_id, params)
            history = client.get_metric_history(run_id, "train_loss")
            self._last_epoch[trial_id] = max((m.step for m in history), default=0)
            if run.data.tags.get(FINAL_TAG) == "true":
                self._final_logged.add(trial_id)
            self._nodes[trial_id] = set(filter(None, run.data.tags.get(NODE_IDS_TAG, "").split(",")))
            log.info("trial %s: continuing MLflow run %s", trial_id, run_id)
        else:
            tags = {k: param_value(v) for k, v in self._tags(hp, trial_id).items()}
            tags[STATUS_TAG] = "running"
            run_id = self.tracker.create_run(run_name(hp), tags)
            self.tracker.log_params(run_id, params)
            log_feature_store_input(self.tracker, run_id, tags)
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
        tags: dict[str, Any] = {}
        node_id = result.get("node_id")
        nodes = self._nodes.setdefault(trial_id, set())
        if node_id and node_id not in nodes:
            nodes.add(node_id)
            tags[NODE_IDS_TAG] = ",".join(sorted(nodes))
        population = result.get(POPULATION_TAG)
        if population and self._population.get(trial_id) != population:
            # A retried member trains on in a new population: the tag names the latest.
            tags[POPULATION_TAG] = population
            tags[POPULATION_SIZE_TAG] = result.get(POPULATION_SIZE_TAG)
            self._population[trial_id] = population
        if final:
            tags[FINAL_TAG] = True
            if node_id:
                tags[NODE_ID_TAG] = node_id
            self._final_logged.add(trial_id)
        if metrics or tags:
            self.writer.put(run_id, metrics, tags)

    def finish(self, trial_id: str, config: dict, status: str, error: "TrialError | None" = None,
               failures: int = 0) -> None:
        run_id = self.run_for(trial_id, config)
        self.writer.flush()  # its results first: a run is ended with all it reported
        tags: dict[str, Any] = {STATUS_TAG: status, "failures": failures}
        if error is not None:
            tags["error"] = error.summary
            if error.traceback:
                with tempfile.TemporaryDirectory(prefix="dept-trial-error-") as tmp:
                    path = Path(tmp) / "error.txt"
                    path.write_text(error.traceback)
                    self.tracker.client.log_artifact(run_id, str(path))
        self.tracker.set_tags(run_id, tags)
        self.tracker.client.set_terminated(run_id, "FAILED" if status == FAILED else "FINISHED")

    # -- Tune hooks -----------------------------------------------------------------------------------------
    def setup(self, **info):
        if self.on_setup is not None:
            self.on_setup()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        with benchtimers.timed("mlflow_result"):  # bench only (pipelines.benchtimers); a no-op unless asked for
            self.log_result(trial.trial_id, trial.config, result)

    def keep_learned_state(self, trial) -> None:
        """A completed trial's final checkpoint (learned state, hyperparameters, final report) and its config as
        the run's ``learned_state/`` artifacts; once (the run's ``learned_state`` tag)."""
        run_id = self.run_for(trial.trial_id, trial.config)
        self.writer.flush()
        if trial.checkpoint is None or self.tracker.client.get_run(run_id).data.tags.get(STATE_TAG) == "logged":
            return
        hp = self.context.hyperparameters(trial.config)
        with trial.checkpoint.as_directory() as folder:
            if not (Path(folder) / STATE_NAMES[0]).is_file():  # not the final checkpoint: nothing learned to keep
                log.warning("trial %s: its last checkpoint holds no %s; no learned state logged", trial.trial_id,
                            STATE_NAMES[0])
                return
            log_learned_state(self.tracker, run_id, Path(folder), hp, self._tags(hp, trial.trial_id))

    def _ended(self, trial) -> None:
        if self.on_trial_end is not None:
            self.on_trial_end(trial)

    def on_trial_complete(self, iteration, trials, trial, **info):
        with benchtimers.timed("mlflow_complete"):  # bench only (pipelines.benchtimers); a no-op unless asked for
            self._on_trial_complete(trial)

    def _on_trial_complete(self, trial):
        self._ended(trial)
        status = end_status(trial.last_result)
        if status == COMPLETED:
            self.keep_learned_state(trial)
        self.finish(trial.trial_id, trial.config, status, failed_for_good(trial.last_result),
                    failures=trial.run_metadata.num_failures)
        hp = self.context.hyperparameters(trial.config)
        res = trial.last_result
        what = (f"failed after epoch {res.get('epoch')}: {res[FAILED_KEY]}" if status == FAILED
                else f"stopped after epoch {res.get('epoch')}" if status != COMPLETED
                else f"test HM {res['test_hm']:.2f}" if TEST_HM in res
                else f"test source {res.get('test_acc', float('nan')):.2f}, targets {res.get('test_target_avg', float('nan')):.2f}")
        log.info("%s %s: %s, %s %.2f", self.context.dataset, run_name(hp), what, self.metric,
                 trial.last_result.get(self.metric, float("nan")))

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._ended(trial)
        self.writer.flush()
        self.tracker.set_tags(self.run_for(trial.trial_id, trial.config),
                              {"failures": trial.run_metadata.num_failures, STATUS_TAG: "retrying"})
        log.warning("%s trial %s failed; retrying (%d failure(s) so far)", self.context.dataset, trial.trial_id,
                    trial.run_metadata.num_failures)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._ended(trial)
        error = trial_error(trial)
        self.finish(trial.trial_id, trial.config, FAILED, error, failures=trial.run_metadata.num_failures)
        log.error("%s trial %s failed for good: %s", self.context.dataset, trial.trial_id, error.summary)

    def on_experiment_end(self, trials, **info):
        self.reconcile(trials)

    # -- end of a dataset -----------------------------------------------------------------------------------
    def reconcile(self, trials: Iterable) -> None:
        """Make MLflow agree with Tune's final view: every trial exactly one child run with its final metrics,
        every epoch Tune recorded and a terminal status (a driver killed at the wrong moment may have missed some).
        Nothing is deleted: a child run for a trial id Tune no longer has (created by a killed driver for a trial
        that Tune re-created under a new id on resume) is kept with its history (:meth:`abandon`)."""
        trials = list(trials)
        known = {t.trial_id for t in trials}
        self.writer.flush()  # what it reads back (histories, tags) includes every result logged so far
        if self.interrupted():
            # Tune marks the trials it stopped TERMINATED; they are unfinished and run again on --resume (its saved
            # state, written before it stopped them, has them running). Their MLflow runs stay open.
            self.complete = False
            return
        self.complete = all(t.status in ("TERMINATED", "ERROR") for t in trials)
        for trial in trials:
            if trial.status not in ("TERMINATED", "ERROR"):
                continue  # interrupted: it runs again on --resume
            result = dict(trial.last_result or {})
            status = FAILED if trial.status == "ERROR" else end_status(result)
            error = trial_error(trial) if trial.status == "ERROR" else failed_for_good(result)
            if result.get("epoch") is not None or status == FAILED:
                if result.get("epoch") is not None:
                    self.log_result(trial.trial_id, trial.config, result)
                    self.backfill(trial, self.run_for(trial.trial_id, trial.config))
                if status == COMPLETED:
                    self.keep_learned_state(trial)  # a driver killed before it did
                run = self.tracker.client.get_run(self.run_for(trial.trial_id, trial.config))
                if run.info.status == "RUNNING" or run.data.tags.get(STATUS_TAG) != status:
                    self.finish(trial.trial_id, trial.config, status, error, failures=trial.run_metadata.num_failures)
            self.records[trial.trial_id] = TrialRecord(
                trial_id=trial.trial_id,
                run_id=self._runs.get(trial.trial_id),
                hp=self.context.hyperparameters(trial.config),
                status=status,
                result=result,
                checkpoint=trial.checkpoint if status == COMPLETED else None,
                error=error.summary if error is not None else "",
                failures=trial.run_metadata.num_failures,
            )
        if not self.complete:
            return
        for run in self.tracker.children(self.parent_run_id):
            if run.data.tags.get(ROLE_TAG) == ROLE_TRIAL and run.data.tags.get(TRIAL_ID_TAG) not in known:
                self.abandon(run)

    def backfill(self, trial, run_id: str) -> None:
        """The epochs of a trial that Tune recorded (its result.json) and its run lacks: a run made only now (a
        killed driver had made none), or an epoch reported while no driver was logging. The first report of an
        epoch counts, as :meth:`log_result` counts it."""
        epoch = (trial.last_result or {}).get("epoch")
        if epoch is None:
            return
        client = self.tracker.client
        self.writer.flush()
        logged = {m.step for m in client.get_metric_history(run_id, "train_loss")}
        if len(logged) >= int(epoch):
            return
        logged |= {m.step for m in client.get_metric_history(run_id, self.metric)}
        ts = int(time.time() * 1000)
        metrics, seen = [], set(logged)
        for result in tune_results(trial):
            step = result.get("epoch")
            if isinstance(step, int) and step not in seen:
                seen.add(step)
                metrics.extend(epoch_metrics(result, ts))
        if metrics:
            self.tracker.log_metrics(run_id, metrics)
            log.info("trial %s: %d epoch(s) of its Tune results logged to MLflow run %s", trial.trial_id,
                     len(seen - logged), run_id)

    def abandon(self, run) -> None:
        """A child run whose trial Tune no longer has (made by a driver killed before Tune saved the trial, which
        ran again under a new id). Kept with its whole history: a finished one as it is, an unfinished one KILLED
        and tagged ``abandoned`` (the report counts a completed run of the same seed before it)."""
        tags = run.data.tags
        if run.info.status != "RUNNING" and (tags.get(FINAL_TAG) == "true" or tags.get(STATUS_TAG) in
                                             (COMPLETED, STOPPED_EARLY, FAILED, ABANDONED)):
            log.info("MLflow run %s of trial %s, which Tune no longer has, is finished: kept as it is",
                     run.info.run_id, tags.get(TRIAL_ID_TAG))
            return
        log.warning("MLflow run %s: its Tune trial %s no longer exists (driver killed before Tune saved it; the "
                    "trial ran again under a new id); kept, marked %s", run.info.run_id, tags.get(TRIAL_ID_TAG),
                    ABANDONED)
        self.tracker.set_tags(run.info.run_id, {STATUS_TAG: ABANDONED})
        self.tracker.client.set_terminated(run.info.run_id, "KILLED")


def tune_results(trial) -> list[dict]:
    """Every result Tune recorded for ``trial`` (its result.json, one JSON object a line), from the experiment's
    storage (where a resumed driver finds it), else the driver's staging folder; empty when neither is readable."""
    storage = getattr(trial, "storage", None)
    places = []
    if storage is not None:
        places.append((storage.storage_filesystem, f"{storage.trial_fs_path}/{RESULT_FILE}"))
    if getattr(trial, "local_path", None):
        places.append((None, f"{trial.local_path}/{RESULT_FILE}"))
    for fs, path in places:
        try:
            if fs is None:
                text = Path(path).read_text()
            else:
                with fs.open_input_stream(path) as f:
                    text = f.read().decode()
        except Exception:  # noqa: BLE001  (not there, or gone: the next place, else nothing to add)
            continue
        results = []
        for line in text.splitlines():
            try:
                results.append(json.loads(line))
            except ValueError:
                continue  # a line cut short by a kill
        return results
    return []


def end_status(result: dict) -> str:
    """How a trial that Tune ended (not by an error) ended: failed for good (its own report says why), completed
    (its final result), or stopped early by the scheduler."""
    if result.get(FAILED_KEY):
        return FAILED
    return COMPLETED if result.get("final") else STOPPED_EARLY


def failed_for_good(result: dict) -> "TrialError | None":
    """The error of a trial that reported its own failure (no traceback: the reason is the whole story)."""
    reason = result.get(FAILED_KEY)
    return TrialError(str(reason)[:ERROR_TAG_CHARS], str(result.get(FAILED_TRACEBACK_KEY) or "")) if reason else None


@dataclass(frozen=True)
class TrialError:
    summary: str  # "<ExceptionType>: <first line of its message>", for the run's ``error`` tag
    traceback: str  # the full text Tune recorded (error.txt), logged as the run's error.txt artifact


#: The line of a formatted traceback that names the exception ("ValueError: ..." or "pkg.mod.SomeError").
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w]*\.)*[A-Za-z_]\w*(?:Error|Exception|Failure|Interrupt|Exit)\b(?::.*)?$|"
                             r"^(?:[A-Za-z_][\w]*\.)*[A-Za-z_]\w*: \S.*$")
ERROR_TAG_CHARS = 500
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _summary(exc_type: str, message: str) -> str:
    first = next((line.strip() for line in message.splitlines() if line.strip()), "")
    text = f"{exc_type}: {first}" if first else exc_type
    return text if len(text) <= ERROR_TAG_CHARS else text[: ERROR_TAG_CHARS - 1] + "…"


def _read(path) -> str | None:
    try:
        return Path(path).read_text(errors="replace") if path and Path(path).is_file() else None
    except OSError:
        return None


def trial_error(trial) -> TrialError:
    """The exception that ended a trial: its type and message from Tune's pickled error when there is one (the
    trial's own exception inside Ray's ``RayTaskError``), else from the last exception line of Tune's error.txt
    (read from the driver's trial folder, else from the storage)."""
    text = _read(getattr(trial, "error_file", None))
    if text is None:
        try:
            text = trial.get_error()
        except Exception:  # remote storage may have lost it; the pickled error or the status still tell
            text = None
    text = _ANSI.sub("", str(text)) if text else ""  # Ray colours the task name
    try:
        pickled = _pickled_error(trial)
    except Exception:  # an exception class this driver cannot unpickle: fall back to the text
        pickled = None
    if pickled is not None:
        cause = getattr(pickled, "cause", None) or pickled
        return TrialError(_summary(type(cause).__name__, str(cause)), text)
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    named = [line for line in lines if not line[0].isspace() and _EXCEPTION_LINE.match(line)]
    if named:
        kind, _, message = named[-1].partition(": ")
        return TrialError(_summary(kind, message), text)
    if lines:
        return TrialError(_summary(lines[0], "")[:ERROR_TAG_CHARS], text)
    return TrialError("failed (Tune recorded no error text)", "")


def _pickled_error(trial):
    path = getattr(trial, "pickled_error_file", None)
    if path and Path(path).is_file():
        import cloudpickle

        with open(path, "rb") as f:
            return cloudpickle.load(f)
    return None
