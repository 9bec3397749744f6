"""The driver's MLflow client: tracking URI checks, the :class:`Tracker` of one experiment, run names and
param values, the metric names trials report, and the single run of ``dept-pipeline train``."""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import math
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from dept.protocols import BASE_TO_NEW
from pipelines.metrics import is_number
from pipelines.paths import PathError, check_writable_folder
from pipelines.secrets import mask_uri, split_basic_auth
from pipelines.vocabulary import (
    COMPLETED,
    CONFIG_FILE,
    DEFAULT_DB,
    EPOCH_METRICS,
    EXPERIMENT_PATH_TAG,
    FINAL_METRICS,
    FINAL_TAG,
    PARENT_TAG,
    PROTOCOL_TAG,
    ROLE_PARENT,
    ROLE_TAG,
    ROLE_TRAIN,
    STATE_ARTIFACTS,
    STATE_NAMES,
    STATE_TAG,
    STATUS_TAG,
    SWEEP_METRIC_CURVES,
    SWEEP_METRIC_WEIGHTS,
    TARGET_METRIC_PREFIX,
    TEST_BASE_ACC,
    TEST_HM,
    TEST_NEW_ACC,
    VAL_ACC,
    VAL_HM,
    param_value,
    sweep_key,
)

log = logging.getLogger(__name__)

class TrackingError(ValueError):
    """The tracking URI or experiment cannot be used; one line."""


def sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI (relative to the working folder unless absolute, as
    SQLAlchemy reads it); None for other schemes and in-memory databases."""
    if not uri.startswith("sqlite:"):
        return None
    path = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else urlparse(uri).path
    return Path(path).expanduser() if path and path != ":memory:" else None


@contextlib.contextmanager
def store_lock(uri: str):
    """Held while a process opens a SQLite store (and makes its experiment): MLflow creates a new file's tables on
    first open without a lock of its own, so two commands starting at once against one new file both run the
    migrations and all but one fail. An exclusive ``flock`` on ``<db>.lock`` beside the database serialises the
    opening; once a process has opened the store, MLflow keeps it per process and every later client reuses it.
    Other schemes need none."""
    db = sqlite_file(uri)
    if db is None:
        yield
        return
    with open(db.with_name(db.name + ".lock"), "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # waits: the holder only creates tables, seconds at most
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def default_tracking_uri() -> str:
    """``sqlite:///<working folder>/mlflow.db`` (absolute, so every process means the same file)."""
    return f"sqlite:///{Path.cwd() / DEFAULT_DB}"


def check_tracking_uri(uri: str, *, timeout: float = 5.0) -> None:
    """Fail fast, in one line, when ``uri`` cannot be reached; called before Ray starts."""
    parsed = urlparse(uri)
    shown = mask_uri(uri)
    if parsed.scheme in ("http", "https"):
        # Credentials in the URI (http://user:password@host) go as a basic-auth header, as MLflow's client sends them.
        bare, headers = split_basic_auth(uri)
        request = urllib.request.Request(bare.rstrip("/") + "/health", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                if resp.status != 200:
                    raise TrackingError(f"MLflow tracking server {shown} answered {resp.status} on /health")
        except urllib.error.HTTPError as e:
            raise TrackingError(f"MLflow tracking server {shown} answered HTTP {e.code} on /health") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise TrackingError(f"MLflow tracking server {shown} is unreachable ({reason})") from None
        # /health needs no login: the client call below tells whether the credentials are accepted.
    db = sqlite_file(uri)
    if db is not None:
        db = db.resolve()
        if not db.parent.is_dir():
            what = "is not a folder" if db.parent.exists() else "does not exist"
            raise TrackingError(f"MLflow tracking URI {shown}: folder {db.parent} {what}")
        if db.exists() and not db.is_file():
            raise TrackingError(f"MLflow tracking URI {shown}: {db} is not a file")
        try:  # the database, its lock and its journal go in that folder, the artifacts in mlruns/ beside it
            check_writable_folder(db.parent, "--mlflow-uri")
            check_writable_folder(db.parent / "mlruns", "--mlflow-uri")
        except PathError as e:
            raise TrackingError(f"MLflow tracking URI {shown}: {e.reason}") from None
        if not db.exists():
            return  # created, with its tables, by the first real use (after every other check passed)
    # Other schemes (file:, databricks, ...), and the server's answer to a real request, by a first client call.
    try:
        from mlflow import MlflowClient

        with store_lock(uri):
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as e:  # any failure here is the URI's: report it in one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if parsed.password:  # the library's message may quote the URI it was given
            first = first.replace(uri, shown).replace(parsed.password, "***")
        raise TrackingError(f"MLflow tracking URI {shown} cannot be used: {first}") from None


def require_store(uri: str) -> None:
    """For commands that only read (``ui``, ``export``): a SQLite store must exist (else MLflow would create an
    empty one), then :func:`check_tracking_uri`."""
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).expanduser().is_file():
        raise TrackingError(f"no MLflow store at {mask_uri(uri)} (nothing tracked there yet)")
    check_tracking_uri(uri)


def _artifact_location(uri: str) -> str | None:
    """For a SQLite store, artifacts beside the database (MLflow's default is ./mlruns of whatever folder the
    process happened to start in)."""
    if uri.startswith("sqlite:///"):
        return str(Path(uri[len("sqlite:///"):]).expanduser().resolve().parent / "mlruns")
    return None


def metric_at(key: str, value: Any, step: int, ts: int):
    from mlflow.entities import Metric

    return Metric(key=key, value=float(value), timestamp=ts, step=int(step))


def run_name(hp) -> str:
    """A short, whole run name (the runs table cuts long ones): ``coop+DePT lw0.30 fw0.70 lr3.5e-03 s1``; the
    plain method where DePT is not in effect (off, or loss weight 0): ``coop lr2.0e-03 s1``."""
    applied = hp.applied_dept()
    if not applied["dept_effective"]:
        return f"{hp.method} lr{hp.lr:.1e} s{hp.seed}"
    return (f"{hp.method}+DePT lw{applied['loss_weight_effective']:.2f} fw{applied['fusion_weight_effective']:.2f} "
            f"lr{hp.lr:.1e} s{hp.seed}")


# -- what the MLflow UI opens on ----------------------------------------------------------------------------------
#: Experiment tag MLflow 3's own kind selector writes. MLflow 3.17 does not read it to pick the experiment's first
#: tab (that follows the sidebar's GenAI / Model training switch, docs/mlflow-ui.md); it is set so that versions
#: that do read it, and the kind selector, say "Machine learning".
KIND_TAG, KIND_TRAINING = "mlflow.experimentKind", "custom_model_development"
#: A saved view of the runs table (MLflow 3's "views": an experiment tag ``mlflow.sharedViewState.<key>``, opened by
#: the URL parameter ``viewStateShareKey``): the trials sorted by the selection metric, which also lists them flat
#: (the UI nests child runs under a collapsed parent only when sorted by date), the coefficients and the scores
#: first, in widths that fit a 1600 px screen beside MLflow's Assistant panel, every run shown in the charts (the
#: default shows the first 10) and a parallel-coordinates chart of the coefficients against the HM.
VIEW_KEY = "dept-trials"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
#: The coefficients a search varies, first in the table and the axes of the comparison chart.
VIEW_COEFFICIENTS = ("loss_weight", "fusion_weight", "lr")
VIEW_PARAMS = (*VIEW_COEFFICIENTS, "method", "dept_effective", "seed")
VIEW_TAGS = (STATUS_TAG, "dataset")
#: Column widths in px, each its header's width in headless Chromium's fallback font (DejaVu Sans, wider than the
#: usual system fonts) with the sort arrow where the view sorts: with these the first seven data columns fit beside
#: the Assistant panel at 1600 px (scripts/ui_check.sh measures it). Metric values are shown unrounded by MLflow and
#: cut to the column with an ellipsis (two decimals stay readable).
VIEW_WIDTHS = {"attributes.`Run Name`": 140, "runDateAndNestInfo": 75, "params.`loss_weight`": 95,
               "params.`fusion_weight`": 105, "params.`lr`": 55, "metrics.`val_hm`": 90, "metrics.`test_hm`": 72,
               "metrics.`test_base_acc`": 108, "metrics.`test_new_acc`": 104, "metrics.`val_base_acc`": 104,
               "metrics.`val_new_acc`": 100}
#: The UI's own ids for the view's chart section and card (any stable string).
CHART_SECTION, CHART_CARD = "dept-coefficients", "dept-coefficients-parallel"


def view_metrics(metric: str = VAL_HM) -> tuple[str, ...]:
    """The view's metric columns in order: the selection metric, the test scores as the paper's tables give them
    (base, new, HM), then the selection split's base and new."""
    if metric == VAL_ACC:  # the transfer protocols: source accuracy and the target average
        return (metric, "test_acc", "test_target_avg")
    split = metric.rsplit("_", 1)[0]  # val_hm -> val, pseudo_hm -> pseudo
    return tuple(dict.fromkeys((metric, TEST_BASE_ACC, TEST_NEW_ACC, TEST_HM, f"{split}_base_acc",
                                f"{split}_new_acc")))


def comparison_axes(metric: str = VAL_HM) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The comparison chart's axes: the coefficients, then the selection metric and the test one."""
    return VIEW_COEFFICIENTS, tuple(dict.fromkeys((metric, "test_acc" if metric == VAL_ACC else TEST_HM)))


def view_state(metric: str = VAL_HM) -> dict:
    """The runs-table state of the saved view (the UI's own field names)."""
    metrics = view_metrics(metric)
    columns = ([f"params.`{k}`" for k in VIEW_COEFFICIENTS] + [f"metrics.`{k}`" for k in metrics]
               + [f"params.`{k}`" for k in VIEW_PARAMS if k not in VIEW_COEFFICIENTS]
               + [f"tags.`{k}`" for k in VIEW_TAGS] + ["attributes.`Dataset`"])
    name = "attributes.`Run Name`"
    params, chart_metrics = comparison_axes(metric)
    chart = {"uuid": CHART_CARD, "type": "PARALLEL", "metricSectionId": CHART_SECTION, "isGenerated": False,
             "deleted": False, "runsCountToCompare": 100, "displayName": "Coefficients against the HM",
             "selectedParams": list(params), "selectedMetrics": list(chart_metrics), "showAllRuns": True}
    section = {"uuid": CHART_SECTION, "name": "DePT coefficients", "display": True, "isReordered": False,
               "deleted": False, "isGenerated": False, "columns": 1, "cardHeight": 420}
    return {"searchFilter": "", "orderByKey": f"metrics.`{metric}`", "orderByAsc": False, "startTime": "ALL",
            "lifecycleFilter": "Active", "datasetsFilter": [], "modelVersionFilter": "All Runs",
            "selectedColumns": columns, "columnOrder": [name, "runDateAndNestInfo", *columns],
            "columnWidths": {k: v for k, v in VIEW_WIDTHS.items() if k in (name, "runDateAndNestInfo", *columns)},
            "runsHiddenMode": "SHOW_ALL", "compareRunCharts": [chart], "compareRunSections": [section]}


def runs_url(base: str, experiment_id: str, charts: bool = False) -> str:
    """The experiment's runs table (``charts``: its chart view, the comparison) in the saved view, under the UI at
    ``base`` (http://127.0.0.1:5000), on MLflow's Model training side."""
    mode = "&compareRunsMode=CHART" if charts else ""
    return (f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_KEY}{mode}"
            "&workflowType=machine_learning")


# -- what a completed trial keeps -----------------------------------------------------------------------------
#: Artifact folder of a completed trial / train run: ``learned_state.safetensors`` (``dept.save_state``),
#: ``hyperparameters.json``, ``final.json`` (its final report) and ``config.json`` (dataset, hyperparameters and
#: the feature store it was trained on); ``dept-pipeline export`` downloads it.


def run_config(hp, tags: dict[str, Any]) -> dict:
    """config.json: what the learned state was trained with and on (no credentials)."""
    features = {k: tags[k] for k in ("dataset", "backbone", "pretrained", "weights_id", "feature_fingerprint",
                                     "objective") if k in tags}
    features["features_url"] = mask_uri(str(tags.get("features_url", "")))
    return {"run_name": run_name(hp), "hyperparameters": dataclasses.asdict(hp), "applied": hp.applied_dept(),
            "features": features}


def log_learned_state(tracker: "Tracker", run_id: str, folder: Path, hp, tags: dict[str, Any]) -> None:
    """The run's ``learned_state/`` folder from ``folder`` (a trial's final checkpoint, or train's state folder)."""
    files = [Path(folder) / n for n in STATE_NAMES if (Path(folder) / n).is_file()]
    with tempfile.TemporaryDirectory(prefix="dept-run-config-") as tmp:
        config = Path(tmp) / CONFIG_FILE
        config.write_text(json.dumps(run_config(hp, tags), indent=1) + "\n")
        for path in [*files, config]:
            tracker.client.log_artifact(run_id, str(path), artifact_path=STATE_ARTIFACTS)
    tracker.set_tags(run_id, {STATE_TAG: "logged"})


def log_feature_store_input(tracker: "Tracker", run_id: str, tags: dict[str, Any]) -> None:
    """The feature store as the run's dataset input (the runs table's Dataset column): source = the store URL
    (password masked), digest = the feature fingerprint, name = the dataset."""
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    with warnings.catch_warnings():  # a local path resolves as two equal sources; MLflow warns and takes one
        warnings.simplefilter("ignore")
        source = resolve_dataset_source(mask_uri(str(tags["features_url"])))
    dataset = MetaDataset(source, name=str(tags.get("dataset") or "features"),
                          digest=str(tags.get("feature_fingerprint") or "")[:36] or None)
    inputs = [DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", "train")])]
    # The server keeps one input per (dataset name, digest, run): sending it again is harmless.
    resend_after_reset(lambda: tracker.client.log_inputs(run_id, datasets=inputs), f"log the input of run {run_id}")


#: What MLflow's client says when the connection broke after a request was sent (a server killed mid-request).
#: MLflow resends such a POST only for the writes it knows the server applies idempotently (log_batch, set_tag,
#: update_run, ...), not for create_run or log_inputs: for those the Tracker resends itself, knowing how to make
#: them safe to repeat. A refused connection (server down) is retried by MLflow itself, with backoff.
BROKEN_MID_REQUEST = ("Connection aborted", "RemoteDisconnected", "Connection reset", "Broken pipe")
#: Sends of one request at most after its connection broke; each resend's connect waits out a restarting server
#: under MLflow's own backoff (MLFLOW_HTTP_REQUEST_MAX_RETRIES), so a few are plenty.
RESENDS = 3


def broke_mid_request(error: BaseException) -> bool:
    from mlflow.exceptions import MlflowException

    return isinstance(error, MlflowException) and any(s in str(error) for s in BROKEN_MID_REQUEST)


def resend_after_reset(send, what: str, *, settled=None):
    """``send()``, sent again (at most :data:`RESENDS` times) when its connection broke mid-request; before each
    resend ``settled()`` (if given) may return what the broken request had already done on the server, which is
    then the answer."""
    for attempt in range(RESENDS + 1):
        try:
            return send()
        except Exception as e:
            if not broke_mid_request(e) or attempt == RESENDS:
                raise
            log.warning("MLflow connection broke while trying to %s (%s); sending it again", what,
                        str(e).splitlines()[0][:200])
            time.sleep(min(2 ** attempt, 5))  # a killed server needs a moment before its port is even refused
            if settled is not None:
                done = settled()
                if done is not None:
                    return done


class Tracker:
    """The driver's handle on one MLflow experiment."""

    def __init__(self, uri: str, experiment: str):
        from mlflow import MlflowClient

        self.uri = uri
        self.experiment_name = experiment
        with store_lock(uri):  # a new SQLite file gets its tables, and a new name its experiment, once
            self.client = MlflowClient(tracking_uri=uri)
            exp = self.client.get_experiment_by_name(experiment)
            if exp is None:
                exp = self._create_experiment(experiment)
        if exp.lifecycle_stage == "deleted":
            raise TrackingError(f"MLflow experiment {experiment!r} at {mask_uri(uri)} is deleted; restore it or use another name")
        self.experiment_id = exp.experiment_id

    def _create_experiment(self, name: str):
        from mlflow.exceptions import MlflowException

        try:
            experiment_id = self.client.create_experiment(name, artifact_location=_artifact_location(self.uri))
        except MlflowException as e:
            # A tracking server takes commands from anywhere: another one may have created it since we looked.
            exp = self.client.get_experiment_by_name(name)
            if e.error_code != "RESOURCE_ALREADY_EXISTS" or exp is None:
                raise
            return exp
        log.info("created MLflow experiment %r (%s) at %s", name, experiment_id, mask_uri(self.uri))
        return self.client.get_experiment(experiment_id)

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

    def parents(self, dataset: str, protocol: str = BASE_TO_NEW) -> list:
        """Every parent run of (dataset, protocol), newest first; runs from before the protocol tag existed are
        base-to-new."""
        runs = self.search(f"tags.role = '{ROLE_PARENT}' and tags.dataset = '{quote_filter(dataset)}'")
        runs = [r for r in runs if r.data.tags.get(PROTOCOL_TAG, BASE_TO_NEW) == protocol]
        return sorted(runs, key=lambda r: r.info.start_time or 0, reverse=True)

    def find_parent(self, dataset: str, protocol: str = BASE_TO_NEW, experiment_path: str | None = None) -> str | None:
        """The parent run of (dataset, protocol) whose trials run in the Tune folder ``experiment_path`` (its
        ``tune.experiment_path`` tag; a parent without one, from before it was tagged, counts as any folder's);
        without ``experiment_path``, the newest. Another storage's parent in the same experiment is never it."""
        runs = self.parents(dataset, protocol)
        if experiment_path is not None:
            shown = mask_uri(experiment_path)
            runs = [r for r in runs if r.data.tags.get(EXPERIMENT_PATH_TAG, shown) == shown]
        if len(runs) > 1:
            log.warning("%d parent runs for dataset %s in experiment %s%s; using the newest", len(runs), dataset,
                        self.experiment_name, f" for {mask_uri(experiment_path)}" if experiment_path else "")
        return runs[0].info.run_id if runs else None

    def children(self, parent_run_id: str) -> list:
        return self.search(f"tags.`{PARENT_TAG}` = '{parent_run_id}'")

    # -- writes ---------------------------------------------------------------------------------------------
    def create_run(self, name: str, tags: dict[str, str]) -> str:
        """A new run's id. Sent again when the connection broke mid-request, unless the server had created it
        already: a run of this experiment with this name and these tags, started since, is that run."""
        since = int(time.time() * 1000) - 1000  # the server's clock stamps start_time; allow it a second of skew

        def created():
            # The broken request's run would carry these name and tags: search by name and start, compare tags here.
            runs = self.search(f"attributes.run_name = '{quote_filter(name)}' and attributes.start_time >= {since}")
            mine = [r for r in runs if all(r.data.tags.get(k) == str(v) for k, v in tags.items())]
            return mine[0].info.run_id if mine else None

        return resend_after_reset(
            lambda: self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id,
            f"create run {name!r}", settled=created)

    def create_parent(self, dataset: str, tags: dict[str, str], name: str) -> str:
        self.set_up_ui(tags.get("selection_metric", VAL_HM))
        run_id = self.create_run(name, {**tags, ROLE_TAG: ROLE_PARENT, "dataset": dataset})
        if tags.get("features_url"):
            log_feature_store_input(self, run_id, {**tags, "dataset": dataset})
        return run_id

    def set_up_ui(self, metric: str = VAL_HM) -> None:
        """Make the UI open this experiment on its training runs, in the saved view sorted on ``metric``."""
        now = int(time.time() * 1000)
        envelope = {"name": f"DePT trials by {metric}", "createdAt": now, "updatedAt": now,
                    "state": json.dumps(view_state(metric))}
        self.client.set_experiment_tag(self.experiment_id, KIND_TAG, KIND_TRAINING)
        self.client.set_experiment_tag(self.experiment_id, VIEW_TAG, json.dumps(envelope))

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
        self.write(run_id, metrics, {})

    def log_values(self, run_id: str, values: dict[str, float], step: int) -> None:
        """Metrics given as name -> value, all at one step."""
        ts = int(time.time() * 1000)
        self.log_metrics(run_id, [metric_at(k, v, step, ts) for k, v in values.items()])

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        self.write(run_id, (), tags)

    def write(self, run_id: str, metrics, tags: dict[str, Any]) -> None:
        """Metrics and tags of one run in as few ``log_batch`` calls as MLflow's limits allow (1000 metrics, 100
        tags a call)."""
        from mlflow.entities import RunTag

        metrics = list(metrics)
        tag_list = [RunTag(k, param_value(v)) for k, v in tags.items()]
        while metrics or tag_list:
            self.client.log_batch(run_id, metrics=metrics[:1000], tags=tag_list[:100])
            metrics, tag_list = metrics[1000:], tag_list[100:]


def quote_filter(value: str) -> str:
    """Quote a value for an MLflow filter string."""
    return str(value).replace("'", "\\'")


def final_metrics(result: dict, ts: int | None = None) -> list:
    """The once-per-trial metrics of a final report: test metrics at the last epoch, and the sweep curves."""
    ts = ts or int(time.time() * 1000)
    epoch = int(result.get("epoch", 0))
    out = [metric_at(k, result[k], epoch, ts) for k in FINAL_METRICS if is_number(result.get(k))]
    out.extend(metric_at(k, v, epoch, ts) for k, v in result.items() if k.startswith(TARGET_METRIC_PREFIX)
               and is_number(v))
    weights = result.get("sweep_fusion_weights") or []
    for key in SWEEP_METRIC_CURVES:
        values = result.get(key) or []
        out.extend(metric_at(sweep_key(key, w), v, epoch, ts) for w, v in zip(weights, values)
                   if is_number(v) and round(w, 1) in SWEEP_METRIC_WEIGHTS and abs(w - round(w, 1)) < 1e-9)
    return out


def epoch_metrics(result: dict, ts: int | None = None) -> list:
    ts = ts or int(time.time() * 1000)
    epoch = int(result["epoch"])
    return [metric_at(k, result[k], epoch, ts) for k in EPOCH_METRICS if is_number(result.get(k))
            and not (isinstance(result[k], float) and math.isnan(result[k]))]


# -- train: one run, no parent -----------------------------------------------------------------------------------
def log_train_run(tracker: Tracker, hp, tags: dict[str, str], history: list[dict], final: dict,
                  state_path: Path | None) -> str:
    """``dept-pipeline train``: one top-level run holding the same names as a Tune child run."""
    tracker.set_up_ui()
    tags = {**tags, ROLE_TAG: ROLE_TRAIN, "method": hp.method, "dept": param_value(hp.dept), "seed": str(hp.seed),
            "seeds": str(hp.seed), "shots": str(hp.shots), STATUS_TAG: COMPLETED}
    if "features_url" in tags:
        tags["features_url"] = mask_uri(str(tags["features_url"]))
    run_id = tracker.create_run(run_name(hp), tags)
    try:
        tracker.log_params(run_id, hp.as_params())
        if tags.get("features_url"):
            log_feature_store_input(tracker, run_id, tags)
        ts = int(time.time() * 1000)
        metrics = [m for r in history for m in epoch_metrics(r, ts)] + epoch_metrics(final, ts)
        tracker.log_metrics(run_id, metrics + final_metrics(final, ts))
        tracker.set_tags(run_id, {FINAL_TAG: True})
        if state_path is not None:
            with tempfile.TemporaryDirectory(prefix="dept-train-state-") as tmp:
                folder = Path(tmp)
                (folder / STATE_NAMES[0]).symlink_to(Path(state_path).resolve())
                (folder / "hyperparameters.json").write_text(json.dumps(dataclasses.asdict(hp), indent=1))
                (folder / "final.json").write_text(json.dumps(final))
                log_learned_state(tracker, run_id, folder, hp, tags)
    except BaseException:
        tracker.client.set_terminated(run_id, "FAILED")
        raise
    tracker.client.set_terminated(run_id, "FINISHED")
    return run_id


