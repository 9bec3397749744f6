"""``dept-pipeline tune``: one Ray Tune experiment per dataset, run one after another, tracked in MLflow.

Everything a user can get wrong (space file, tracking URI, feature store, seeds/shots not featurized, an existing
experiment without ``--resume``) is checked before Ray starts. Then, per dataset: a parent MLflow run, a ``Tuner``
(or ``Tuner.restore`` with ``--resume``: finished trials are not run again), trials that read the features once
and report every epoch, the driver-side :class:`~pipelines.tracking.trial_logger.MlflowTrialLogger`, and at the end
the parent run's summary (best configuration, results table, plots, best learned state).

Tune storage: ``--storage`` (a local folder or a URL such as ``s3://bucket/prefix``, handled by pyarrow's
filesystems); default ``./runs/tune`` under the working folder. Experiment folder: ``<storage>/<experiment>/<dataset>``.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import yaml

from dept.protocols import BASE_TO_NEW, PROTOCOLS
from pipelines.interrupts import StopSignals
from pipelines.paths import HolderLock, LockHeld, PathError, check_writable_folder
from pipelines.ray_runtime import ensure_ray
from pipelines.secrets import mask_uri
from pipelines.selection import method_label
from pipelines.store import list_datasets, read_manifest, resolve_features
from pipelines.tracking.client import Tracker, check_tracking_uri, default_tracking_uri, run_name
from pipelines.tracking.lease import ExperimentLease, LeaseHeld
from pipelines.tracking.summary import finish_parent, rank_configs, write_parent_summary
from pipelines.trial.context import TrialContext, TrialSetupError, make_context
from pipelines.trial.restore import trainable_class
from pipelines.trial.targets import ProtocolError, check_class_specific
from pipelines.tune.spaces import SearchSpace, load_space, space_changes
from pipelines.vocabulary import (
    COMPLETED,
    EXPERIMENT_PATH_TAG,
    FAILED,
    POPULATION_TAG,
    STOPPED_EARLY,
    TEST_BASE_ACC,
    TEST_NEW_ACC,
)

log = logging.getLogger(__name__)

DEFAULT_STORAGE = "runs/tune"


class TuneSetupError(TrialSetupError):
    """A tune invocation that cannot start; one line (the trial context's setup errors are of the same kind)."""


class TuneInterrupted(Exception):
    """SIGINT (Ctrl-C) or SIGTERM stopped the experiment. ``saved``: a Tune experiment had begun (Tune saved its
    state, ``--resume`` continues it); else the stop came before any (the same command starts afresh)."""

    def __init__(self, signum: int, dataset: str | None, saved: bool = True):
        self.signum = signum
        self.dataset = dataset
        self.saved = saved
        super().__init__(f"{signal.Signals(signum).name} received" + (f" while tuning {dataset}" if dataset else ""))


#: Tune's own lines about an interrupted run name ``Tuner.restore``; our one line names the command instead.
_TUNE_INTERRUPT_LINES = ("Stop signal received", "Experiment has been interrupted", "Trials did not complete")


class _DropTuneInterruptLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_TUNE_INTERRUPT_LINES)


LOCK_FILE = ".dept-tune.lock"


class ExperimentLock:
    """One ``tune`` at a time per experiment, two ways. Its Tune folder: an exclusive ``flock`` on a file there
    (local storage; the kernel drops it when the holder dies, so a killed run never leaves it stale; remote storage
    (s3://, gs://) is not locked this way). Its MLflow experiment, whatever the storage and wherever the driver runs:
    a lease on the experiment (:class:`~pipelines.tracking.lease.ExperimentLease`), taken by :meth:`hold_experiment`
    once the experiment is open and before any of its runs is read or made."""

    def __init__(self, root: str):
        self.root = root
        self._lock = HolderLock(Path(root) / LOCK_FILE) if urlparse(root).scheme in ("", "file") else None
        self._lease: ExperimentLease | None = None

    def acquire(self) -> None:
        if self._lock is None:
            return
        try:
            self._lock.acquire()
        except LockHeld as held:
            raise TuneSetupError(f"another `dept-pipeline tune` is running experiment {Path(self.root).name!r} in "
                                 f"{self.root} ({held.holder}); wait for it to finish, or use another --experiment"
                                 ) from None

    def hold_experiment(self, tracker: Tracker) -> None:
        lease = ExperimentLease(tracker.client, tracker.experiment_id, mask_uri(self.root.rsplit("/", 1)[0]))
        try:
            lease.acquire()
        except LeaseHeld as held:
            raise TuneSetupError(f"another `dept-pipeline tune` is running experiment {tracker.experiment_name!r} "
                                 f"of MLflow {mask_uri(tracker.uri)} ({held}); wait for it to finish, or use another "
                                 "--experiment") from None
        self._lease = lease

    def release(self) -> None:
        if self._lease is not None:
            self._lease.release()
            self._lease = None
        if self._lock is not None:
            self._lock.release()


def check_storage(root: str, below: list[str] = ()) -> None:
    """A local ``--storage`` must be (or be creatable as) a writable folder, down to the folders ``below`` it that
    Tune writes (the experiment's, each dataset's); checked before anything is created. The error names
    ``--storage`` as given and the path in the way."""
    try:
        for path in [root, *(f"{root}/{b}" for b in below)]:
            check_writable_folder(path, "--storage")
    except PathError as e:
        raise PathError("--storage", root, e.reason) from None


@dataclass(frozen=True)
class TuneOptions:
    features: str  # the store root (with model / pretrained when it holds several) or a model folder
    dataset: str  # a dataset name in the store, or "all"
    model: str | None = None  # with features = the store root: which model folder (pipelines.store.resolve)
    pretrained: str | None = None
    space: str = "smoke"
    experiment: str = "dept"
    num_samples: int | None = None
    methods: tuple[str, ...] = ()
    objective: str | None = None
    gpus_per_trial: float = 0.0
    cpus_per_trial: float = 1.0
    max_concurrent: int | None = None
    max_failures: int = 2
    ray_address: str | None = None
    storage: str | None = None
    resume: bool = False
    mlflow_uri: str | None = None
    protocol: str = BASE_TO_NEW  # cross-dataset / domain-generalization: ``dataset`` is the source
    targets: tuple[str, ...] = ()  # transfer protocols: these targets (default: every one featurized)
    population: int | None = None  # trials trained together (pipelines.trial.population); None: by device
    precision: str = "auto"  # the training step's (dept.config.PRECISIONS): auto is bf16 with GPUs, fp32 without
    compile: str | None = None  # torch.compile mode of the training step


@dataclass
class DatasetPlan:
    dataset: str
    context: TrialContext
    experiment_path: str
    restore: bool  # a Tune experiment exists there and --resume was given
    parent_run_id: str | None  # existing parent run (resume)


@dataclass
class DatasetOutcome:
    dataset: str
    parent_run_id: str
    experiment_path: str
    records: list = field(default_factory=list)  # tracking.trial_logger.TrialRecord
    best: object = None  # tracking.summary.ConfigSummary
    best_trial: object = None  # tracking.trial_logger.TrialRecord
    seconds: float = 0.0
    zero_shot: dict = field(default_factory=dict)  # CLIP zero-shot test_* / val_* (pipelines.trial.zero_shot)

    def count(self, status: str) -> int:
        return sum(1 for r in self.records if r.status == status)


def storage_root(storage: str | None) -> str:
    """Absolute local path, or the URL as given (s3://, gs://, ...)."""
    if storage and urlparse(storage).scheme not in ("", "file"):
        return storage.rstrip("/")
    local = Path(urlparse(storage).path if storage and storage.startswith("file:") else (storage or DEFAULT_STORAGE))
    return str(local.expanduser().resolve())


def experiment_name(dataset: str, protocol: str) -> str:
    """The Tune experiment folder (and run name) of one dataset: the dataset, or ``<source>.<protocol>``."""
    return dataset if protocol == BASE_TO_NEW else f"{dataset}.{protocol}"


def _context(opts: TuneOptions, space: SearchSpace, dataset: str) -> TrialContext:
    return make_context(
        opts.features, dataset, shots=space.shots_values(), seeds=list(space.seeds), objective=space.objective,
        pseudo_new_fraction=space.pseudo_new_fraction, num_threads=max(1, int(opts.cpus_per_trial)),
        device="cuda" if opts.gpus_per_trial > 0 else "cpu", precision=opts.precision, compile=opts.compile,
        who=f"space {space.name}",
        model=opts.model, pretrained=opts.pretrained, protocol=opts.protocol, targets=opts.targets,
    )


def prepare(opts: TuneOptions):
    """Every check that needs no Ray, in order: space, tracking URI, feature store, Tune storage (writable, not in
    use by another ``tune``), MLflow runs. Returns (space, tracking URI, tracker, plans, the experiment's lock: the
    caller releases it)."""

    if not opts.experiment or "/" in opts.experiment:
        raise TuneSetupError(f"--experiment must be a non-empty name without '/', got {opts.experiment!r}")
    if opts.cpus_per_trial <= 0 or opts.gpus_per_trial < 0:
        raise TuneSetupError("--cpus-per-trial must be > 0 and --gpus-per-trial >= 0")
    if opts.max_concurrent is not None and opts.max_concurrent < 1:
        raise TuneSetupError(f"--max-concurrent must be >= 1, got {opts.max_concurrent}")
    if opts.max_failures < 0:
        raise TuneSetupError(f"--max-failures must be >= 0, got {opts.max_failures}")
    if opts.population is not None and opts.population < 1:
        raise TuneSetupError(f"--population must be >= 1 (or auto), got {opts.population}")

    if opts.protocol not in PROTOCOLS:
        raise TuneSetupError(f"--protocol {opts.protocol!r}: known: {', '.join(PROTOCOLS)}")
    if opts.targets and opts.protocol == BASE_TO_NEW:
        raise TuneSetupError("--targets is for --protocol cross-dataset or domain-generalization")
    if opts.protocol != BASE_TO_NEW and opts.dataset == "all":
        raise TuneSetupError(f"--protocol {opts.protocol}: name one source dataset (--source), not 'all'")
    space = load_space(opts.space).with_overrides(
        methods=list(opts.methods) or None, num_samples=opts.num_samples, objective=opts.objective,
        protocol=opts.protocol,
    )
    uri = opts.mlflow_uri or default_tracking_uri()
    check_tracking_uri(uri)

    if opts.dataset == "all":
        model_url = resolve_features(opts.features, model=opts.model, pretrained=opts.pretrained)
        datasets = list_datasets(model_url)
        if not datasets:
            raise TuneSetupError(f"no complete featurized datasets under {model_url} (run `dept-pipeline featurize` "
                                 "first, or let it finish)")
        # Datasets of test images only (ImageNet's variants, other transfer targets) have nothing to train on.
        test_only = [d for d in datasets if int(read_manifest(model_url, d).rows.get("train", 0)) == 0]
        for d in test_only:
            log.info("--dataset all: skipping %s, test images only (a transfer target: see --protocol)", d)
        datasets = [d for d in datasets if d not in test_only]
        if not datasets:
            raise TuneSetupError(f"no featurized dataset under {model_url} has training images (only transfer "
                                 f"targets: {', '.join(test_only)})")
    else:
        datasets = [opts.dataset]
    contexts = {d: _context(opts, space, d) for d in datasets}
    csc = space.params.get("class_specific")
    if opts.protocol != BASE_TO_NEW and csc is not None and True in csc.values:

        for ctx in contexts.values():
            try:
                check_class_specific(opts.protocol, ctx.targets, True)
            except ProtocolError as e:
                raise TuneSetupError(f"space {space.name}: {e}") from None

    root = f"{storage_root(opts.storage)}/{opts.experiment}"
    check_storage(storage_root(opts.storage),
                  [opts.experiment, *(f"{opts.experiment}/{experiment_name(d, opts.protocol)}" for d in datasets)])
    # Held until run_tune ends; taken before anything (MLflow experiment, parent runs, Tune state) is created.
    lock = ExperimentLock(root)
    lock.acquire()
    try:
        return (space, uri, *_plans(opts, space, uri, root, datasets, contexts, lock), lock)
    except BaseException:
        lock.release()
        raise


def _plans(opts: TuneOptions, space: SearchSpace, uri: str, root: str, datasets: list[str], contexts: dict,
           lock: ExperimentLock):
    from ray.tune import Tuner


    folders = {d: experiment_name(d, opts.protocol) for d in datasets}
    restorable = {d: Tuner.can_restore(f"{root}/{folders[d]}") for d in datasets}
    if not opts.resume:
        existing = [d for d in datasets if restorable[d]]
        if existing:
            raise TuneSetupError(f"a Tune experiment already exists at {root}/{folders[existing[0]]}; pass --resume "
                                 "to continue it, or choose another --experiment")

    tracker = Tracker(uri, opts.experiment)
    lock.hold_experiment(tracker)  # before any run is read: a second tune of the experiment stops here
    plans = []
    for d in datasets:
        path = f"{root}/{folders[d]}"
        parent = tracker.find_parent(d, opts.protocol, path)
        if parent is None:
            # The experiment's run of this dataset tuned in another Tune folder is not this sweep's to continue,
            # and a second parent beside it would mix two sweeps in one experiment.
            other = next(iter(tracker.parents(d, opts.protocol)), None)
            if other is not None:
                where = other.data.tags.get(EXPERIMENT_PATH_TAG, "?")
                ran = f"dataset {d}'s run ({other.info.run_id}) was tuned in {where}"
                if opts.resume and not restorable[d]:
                    raise TuneSetupError(f"--resume: no Tune experiment to resume at {mask_uri(path)}; MLflow "
                                         f"experiment {opts.experiment!r}: {ran}; pass the --storage it was tuned "
                                         "with, or choose another --experiment")
                raise TuneSetupError(
                    f"MLflow experiment {opts.experiment!r} at {mask_uri(uri)} already has a run for dataset {d}: "
                    f"{ran}, not in {mask_uri(path)}; continue it with the --storage it was tuned with and --resume, "
                    "or choose another --experiment")
        run = tracker.client.get_run(parent) if parent is not None else None
        tags = run.data.tags if run is not None else {}
        # A start killed (or failed) after its parent run was created and before Tune saved any state: same Tune
        # folder, no Tune experiment, parent never finished. Nothing ran that Tune remembers, so the parent is
        # reused and Tune starts afresh (child runs of trials Tune does not know are soft-deleted at the end).
        aborted_start = (run is not None and not restorable[d] and tags.get(EXPERIMENT_PATH_TAG) == mask_uri(path)
                         and run.info.status != "FINISHED")
        if parent is not None and not opts.resume and not aborted_start:
            raise TuneSetupError(f"MLflow experiment {opts.experiment!r} at {mask_uri(uri)} already has a run for "
                                 f"dataset {d} ({parent}); pass --resume to continue it, or choose another --experiment")
        if parent is not None:
            if (tags.get("space"), tags.get("selection_metric")) != (space.name, space.metric):
                raise TuneSetupError(
                    f"--resume: dataset {d} was tuned with space {tags.get('space')!r} selecting on "
                    f"{tags.get('selection_metric')!r}; resume with the same --space and --objective"
                )
            check_same_space(tracker, parent, tags, space, d)
        if parent is not None and not restorable[d] and not aborted_start:
            # Starting afresh under the old parent would mix two Tune experiments in one MLflow run.
            raise TuneSetupError(f"--resume: MLflow run {parent} of dataset {d} exists, but there is no Tune "
                                 f"experiment to resume at {path}; check --storage, or use another --experiment")
        if aborted_start:
            log.info("dataset %s: MLflow run %s is of a start that ended before Tune saved anything; reusing it",
                     d, parent)
        plans.append(DatasetPlan(d, contexts[d], path, restorable[d] and opts.resume, parent))
    return tracker, plans


SPACE_DIGEST_TAG = "space_sha256"
SPACE_ARTIFACT = "space.yaml"


def check_same_space(tracker, parent: str, tags: dict, space: SearchSpace, dataset: str) -> None:
    """``--resume`` runs the space that ran: a space file edited since (same name) is refused in one line naming what
    changed (read from the parent's ``space.yaml``, logged when it was created)."""
    recorded = tags.get(SPACE_DIGEST_TAG)
    if recorded is None or recorded == space.digest():
        return  # the same; or a parent from before the digest was recorded: nothing to compare with
    changed = ["?"]
    with tempfile.TemporaryDirectory(prefix="dept-space-") as tmp:
        try:
            # MLflow's progress bar would be the refusal's extra lines
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
            path = tracker.client.download_artifacts(parent, SPACE_ARTIFACT, tmp)
            changed = space_changes(yaml.safe_load(Path(path).read_text()) or {}, space.as_dict()) or ["?"]
        except Exception as e:  # noqa: BLE001  (the refusal stands; only its detail is missing)
            log.debug("could not read %s of run %s: %s", SPACE_ARTIFACT, parent, e)
    raise TuneSetupError(f"--resume: space {space.name!r} changed since dataset {dataset} was tuned "
                         f"({', '.join(changed[:4])}{', ...' if len(changed) > 4 else ''}); resume with the space "
                         "as it was, or tune the new one under another --experiment")


def _init_ray(address: str | None) -> bool:
    """Connect to (or start) Ray; True when this call started it (and so should shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    # A driver started inside someone's MLflow run must not hand that run to Ray's workers.
    if os.environ.pop("MLFLOW_RUN_ID", None):
        log.info("MLFLOW_RUN_ID removed from the environment: trials do not log to MLflow, the driver does")
    return ensure_ray(address)


def _run_dataset(opts: TuneOptions, space: SearchSpace, tracker, plan: DatasetPlan,
                 signals: StopSignals) -> DatasetOutcome:
    # Ray, torch and the Tune callback load here, once every argument has been checked: setup errors answer at once.
    from ray import tune

    from pipelines.tracking.trial_logger import MlflowTrialLogger
    from pipelines.trial.population import default_population, registry_name, start_registry
    from pipelines.trial.trainable import tune_trainable
    from pipelines.trial.zero_shot import ensure_zero_shot_run

    population = opts.population or default_population(opts.gpus_per_trial)
    key = f"{opts.experiment}/{experiment_name(plan.dataset, plan.context.protocol)}"
    ctx = dataclasses.replace(plan.context, population=population,
                              population_group=registry_name(key) if population > 1 else "")
    parent = plan.parent_run_id
    if parent is None:
        parent = tracker.create_parent(
            plan.dataset,
            {**ctx.tags(), "space": space.name, "selection_metric": space.metric, "selection_mode": space.mode,
             EXPERIMENT_PATH_TAG: mask_uri(plan.experiment_path), "num_trials": str(space.num_trials()),
             "features_url": mask_uri(ctx.features_url), "population": str(population),
             SPACE_DIGEST_TAG: space.digest()},
            name=(f"{plan.dataset} ({space.name})" if ctx.protocol == BASE_TO_NEW
                  else f"{plan.dataset} -> {ctx.protocol} ({space.name})"),
        )
        with tempfile.TemporaryDirectory(prefix="dept-space-") as tmp:  # what runs, recorded before it runs
            (Path(tmp) / SPACE_ARTIFACT).write_text(yaml.safe_dump(space.as_dict(), sort_keys=False))
            tracker.client.log_artifact(parent, str(Path(tmp) / SPACE_ARTIFACT))
    else:
        tracker.client.update_run(parent, status="RUNNING")
        tracker.set_up_ui(space.metric)  # an experiment made by an older version gets the current view too
    logger = MlflowTrialLogger(
        tracker, parent, key=key, context=ctx, space_name=space.name,
        metric=space.metric, mode=space.mode, experiment_path=plan.experiment_path,
    )
    # Tune installs its SIGINT handler as fit starts; the logger's setup hook runs right after, and wraps it.
    logger.on_setup = signals.watch_tune
    logger.interrupted = signals.interrupted
    resources = {"cpu": opts.cpus_per_trial, "gpu": opts.gpus_per_trial}
    registry = None
    if population > 1:

        # A member trial only relays its host's reports: a 1/P share of the CPUs, no GPU (its host holds that).
        resources = {"cpu": opts.cpus_per_trial / population, "gpu": 0}
        registry = start_registry(ctx, experiment_key=key, gpus=opts.gpus_per_trial,
                                  slots=population_slots(opts, space.num_trials(), resources["cpu"]))
        # A trial that ended (stopped, failed, retrying) leaves its population.
        logger.on_trial_end = lambda trial: registry.leave.remote(trial.trial_id,
                                                                  (trial.last_result or {}).get(POPULATION_TAG))
    # The trial's class restores from the checkpoint that replaced the one a killed driver's saved state names.
    trainable = tune.with_resources(trainable_class(tune.with_parameters(tune_trainable, context=ctx)), resources)
    started = time.perf_counter()
    ok = False
    interrupted = False
    try:

        # The paper tables' first row, once per dataset under its parent (a resumed experiment reuses it).
        zero_shot = ensure_zero_shot_run(tracker, parent, ctx)
        if plan.restore:
            tuner = tune.Tuner.restore(plan.experiment_path, trainable=trainable, resume_unfinished=True,
                                       resume_errored=False, param_space=space.param_space())
        else:
            tuner = tune.Tuner(
                trainable,
                param_space=space.param_space(),
                tune_config=tune.TuneConfig(
                    metric=space.metric, mode=space.mode, scheduler=space.make_scheduler(),
                    search_alg=space.make_search_alg(opts.max_concurrent), num_samples=space.tune_num_samples(),
                    max_concurrent_trials=opts.max_concurrent if space.searcher.kind != "random" else None,
                    # A trial worker runs the next trial instead of a fresh process per trial: saves the imports and
                    # the text-tower load (~4-7 s per trial measured in bench/RESULTS.md, "Tune + MLflow overhead").
                    reuse_actors=True,
                ),
                run_config=tune.RunConfig(
                    name=plan.experiment_path.rsplit("/", 1)[1],
                    storage_path=plan.experiment_path.rsplit("/", 1)[0],
                    failure_config=tune.FailureConfig(max_failures=opts.max_failures),
                    # Every epoch reports a checkpoint (training state; the last one: final.json + learned
                    # state), so a retried trial (lost node, failed worker) resumes after its last epoch. Keeping
                    # only the newest is enough for that; it also makes Tune save its experiment state as each
                    # checkpoint lands, so a killed driver loses little. That save lands after the older checkpoint
                    # is deleted: pipelines.trial.restore covers a driver killed in between.
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                    callbacks=[logger],
                    verbose=0,
                ),
            )
        tune_log = logging.getLogger("ray.tune.tune")
        quiet = _DropTuneInterruptLines()
        tune_log.addFilter(quiet)
        try:
            tuner.fit()
        except KeyboardInterrupt:  # a second Ctrl-C, or one before Tune's handler was in place
            signals.record(signal.SIGINT)
        finally:
            tune_log.removeFilter(quiet)
        if signals.interrupted():
            # Tune saved its state and returned; no summary: the best over part of the trials is no result.
            interrupted = True
            raise TuneInterrupted(signals.received, plan.dataset, saved=signals.tune_started or opts.resume)
        if not logger.complete:
            interrupted = True
            raise TuneSetupError(f"{plan.dataset}: the experiment was interrupted; run the same command with --resume")
        records = list(logger.records.values())
        with tempfile.TemporaryDirectory(prefix="dept-tune-summary-") as tmp:
            best, best_trial = write_parent_summary(
                tracker, parent, records, metric=space.metric, mode=space.mode,
                space_yaml=yaml.safe_dump(space.as_dict(), sort_keys=False), workdir=Path(tmp),
                dataset=plan.dataset,
            )
        ok = True
    finally:
        logger.close()
        if registry is not None:
            import ray

            ray.kill(registry)  # its hosts (owned by it) end with it
        finish_parent(tracker, parent, "FINISHED" if ok else "KILLED" if interrupted else "FAILED")
    return DatasetOutcome(plan.dataset, parent, plan.experiment_path, records, best, best_trial,
                          time.perf_counter() - started, zero_shot)


def population_slots(opts: TuneOptions, trials: int, member_cpus: float) -> int:
    """How many member trials Tune runs at once at most: the trials, ``--max-concurrent``, and how many members'
    CPU shares the cluster holds now (a population formed when all of them joined waits for no one)."""
    import ray

    cpus = ray.cluster_resources().get("CPU", 0.0)
    fit = int(cpus / member_cpus + 1e-9) if member_cpus > 0 else trials
    return max(1, min(trials, opts.max_concurrent or trials, fit))


def run_tune(opts: TuneOptions, progress: Callable[[str], None] = log.info) -> list[DatasetOutcome]:
    """Raises :class:`TuneInterrupted` when SIGINT / SIGTERM stopped it (Tune's state saved, parent runs KILLED)."""
    signals = StopSignals()
    signals.install()  # before Ray starts: a SIGTERM during the checks is a clean stop too
    try:
        return _run_tune(opts, progress, signals)
    except KeyboardInterrupt:
        raise TuneInterrupted(signals.received or signal.SIGINT, None,
                              saved=signals.tune_started or opts.resume) from None
    finally:
        signals.restore()


def _run_tune(opts: TuneOptions, progress: Callable[[str], None], signals: StopSignals) -> list[DatasetOutcome]:
    space, uri, tracker, plans, lock = prepare(opts)
    try:
        return _run_plans(opts, progress, signals, space, uri, tracker, plans)
    finally:
        lock.release()


def _run_plans(opts, progress, signals, space, uri, tracker, plans) -> list[DatasetOutcome]:

    # Our own progress lines replace Tune's console tables; the per-checkpoint experiment snapshots that make
    # --resume lose little are intended, so Tune's warning about their frequency is noise here.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    progress(f"{space.summary()}")
    progress(f"MLflow: {mask_uri(uri)}, experiment {opts.experiment!r}; Tune storage: {plans[0].experiment_path.rsplit('/', 1)[0]}")
    started_ray = _init_ray(opts.ray_address)
    signals.install()  # ray.init replaced it
    outcomes = []
    try:
        for i, plan in enumerate(plans, 1):
            verb = "resuming" if plan.restore else "starting"
            progress(f"[{i}/{len(plans)}] {plan.dataset}: {verb} {space.num_trials()} trials")
            outcome = _run_dataset(opts, space, tracker, plan, signals)
            outcomes.append(outcome)
            best = outcome.best
            best_txt = (f"best {space.metric} {best.mean(space.metric):.2f} over {len(best.completed())} seed(s)"
                        if best is not None else "no configuration completed all its seeds"
                        if outcome.count(COMPLETED) else "no trial completed")
            zs = outcome.zero_shot
            if zs and "test_acc" in zs:
                best_txt += f"; CLIP zero-shot source {zs['test_acc']:.2f} targets {zs.get('test_target_avg', math.nan):.2f}"
            elif zs:
                best_txt += (f"; CLIP zero-shot test base {zs['test_base_acc']:.2f} new {zs['test_new_acc']:.2f} "
                             f"HM {zs['test_hm']:.2f}")
            progress(f"[{i}/{len(plans)}] {plan.dataset}: done in {outcome.seconds:.0f}s — "
                     f"{outcome.count(COMPLETED)} completed, {outcome.count(STOPPED_EARLY)} stopped early, "
                     f"{outcome.count(FAILED)} failed; {best_txt}")
            for record in outcome.records:  # each failure in one line: what, and why
                if record.status == FAILED:
                    progress(f"[{i}/{len(plans)}] {plan.dataset}: failed: {run_name(record.hp)} "
                             f"(trial {record.trial_id}): {record.error or 'no error recorded'}")
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    return outcomes


def best_table(outcomes: list[DatasetOutcome], metric: str, mode: str = "max", protocol: str = BASE_TO_NEW) -> str:
    """The end-of-run table: the winning configuration per dataset (:mod:`pipelines.selection`: every seed
    completed, best mean ``metric``; the parent run's ``best_*`` and ``report`` use the same rule), with its test
    numbers: base and new averaged over seeds, HM of those averages (the transfer protocols: the source's test
    accuracy and the mean over targets, averaged over seeds). A dataset without a complete configuration shows its
    leading incomplete one, marked so in the seeds column. A winner that won an exact tie gets a line under the
    table saying so and by which criterion of ``pipelines.selection.TIE_RULE``."""

    transfer = protocol != BASE_TO_NEW
    tests = ["source test", "target avg"] if transfer else ["test base", "test new", "test HM"]
    header = ["dataset", "method", "loss w", "fusion w", "lr", "seeds", metric, *tests,
              "trials (done/stopped/failed)"]
    rows, ties = [], []
    for o in outcomes:
        counts = f"{o.count(COMPLETED)}/{o.count(STOPPED_EARLY)}/{o.count(FAILED)}"
        b = o.best
        if b is None:
            b = next(iter(rank_configs(o.records, metric, mode)), None)
        if b is None or not b.completed():
            rows.append([o.dataset, "-", "-", "-", "-", "0", "-", *["-"] * len(tests), counts])
            continue
        p = b.params
        numbers = ([b.mean("test_acc"), b.mean("test_target_avg")] if transfer else
                   [b.mean(TEST_BASE_ACC), b.mean(TEST_NEW_ACC), b.test_hm()])
        rows.append([
            o.dataset, method_label(str(p["method"]), bool(p["dept_effective"])), f"{p['loss_weight']:.2f}",
            f"{p['fusion_weight']:.2f}", f"{p['lr']:.2e}", b.seeds_text(), f"{b.mean(metric):.2f}",
            *[f"{x:.2f}" for x in numbers], counts,
        ])
        if b.tie:
            ties.append(f"{o.dataset}: {b.tie}")
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*["-" * w for w in widths])]
    lines.extend(fmt.format(*r) for r in rows)
    lines.extend(ties)  # shown as ties: the rule, not the run order, decided (pipelines.selection.TIE_RULE)
    return "\n".join(lines)
