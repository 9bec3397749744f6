"""``tune --population P``: Tune's trials trained P at a time as one ``dept.train_population``, while Ray Tune and
MLflow still see one trial per configuration.

Each configuration stays a Tune trial (its own config, reports, checkpoints, ASHA decisions, retries) and so an
MLflow child run like any other. What changes is where its training runs: the trial hands its configuration to the
experiment's :class:`PopulationRegistry` (a Ray actor the driver owns), which groups trials of one *shape* (same
method, context shape, CAT head or none, epochs, batch size, shots, seed: the same training images, see
:func:`population_key`) into populations of up to P and gives each a :class:`PopulationHost` (a Ray actor holding
the population's GPU share). The host reads the data and trains all members in one batched step; after every
epoch it hands each member trial its epoch's metrics and training state, the trial reports them to Tune, and the
host waits for every member's decision before the next epoch: a trial Tune lets go on asks for its next epoch; one
ASHA stops is reported by the driver's logger (:meth:`PopulationRegistry.leave`) and is masked out of the step. At
the end the host scores each member exactly as a single trial is scored (:func:`pipelines.trial.plan.plan_trial`)
and the trial reports its final result and learned state.

Members' numbers are those of single trials within float32 rounding (``dept.population``), so ``report`` cannot
tell the two apart but by the runs' ``population`` tag. A population forms when P members joined, when every trial
Tune runs at once has joined, or ``join_wait_s`` after its latest member joined (:class:`PopulationRegistry`); later
trials of that shape form the next one. A retried trial (failed worker, lost node) or a resumed experiment's trial
resumes from its own last checkpoint in a new population (its old population goes on without it). A host that
fails (or its node) fails its members' current attempts; each retries from its own checkpoint.

Resources: a member trial takes ``--cpus-per-trial / P`` of Tune's CPUs and no GPU; the host takes
``--gpus-per-trial`` GPUs (fractions share a GPU between populations) and trains on ``--cpus-per-trial`` threads.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
import traceback
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from pipelines import benchtimers
from pipelines.paths import write_bytes_atomic
from pipelines.trial import standin
from pipelines.trial.plan import HYPERPARAMETERS_FILE, STATE_FILE, epoch_reporter, plan_trial, text_tower
from pipelines.trial.settings import METHODS_REF, dept_value
from pipelines.vocabulary import POPULATION_SIZE_TAG, POPULATION_TAG

log = logging.getLogger(__name__)

#: The hyperparameters members of one population may differ in; every other setting is the population's shape.
MEMBER_SETTINGS = ("loss_weight", "fusion_weight", "fusion", "lr", "head_lr_mult", "warmup_epochs", "warmup_lr",
                   "momentum", "weight_decay", "kg_weight", "loss_weight_effective", "fusion_weight_effective")
NAMESPACE = "dept-pipeline"
#: Seconds a population waits for more members after its latest joined (Tune starts trials one by one), when it
#: cannot tell that no other trial will come.
DEFAULT_JOIN_WAIT_S = 10.0
#: Seconds a host waits for a member's decision after an epoch before it counts the member as gone (a member
#: whose worker died without Tune telling the driver).
DECISION_TIMEOUT_S = float(os.environ.get("DEPT_PIPELINE_POPULATION_DECISION_TIMEOUT_S", 1800))


def default_population(gpus_per_trial: float) -> int:
    """``--population auto``: 1 on CPU (Tune runs a trial per core there already), 8 with GPUs (one trial's step is
    launch-bound on a GPU; bench/RESULTS.md, "Trial populations")."""
    return 8 if gpus_per_trial > 0 else 1


def population_key(hp) -> tuple:
    """What members of one population share (``dept.population.check_population``'s shape, and the same training
    images): every resolved setting but :data:`MEMBER_SETTINGS`, and whether the CAT head is there at all."""
    params = hp.as_params()
    return tuple(sorted((k, str(v)) for k, v in params.items() if k not in MEMBER_SETTINGS))


def registry_name(experiment_key: str) -> str:
    """A name of its own per driver run (a killed driver's registry may not be gone yet when ``--resume`` starts)."""
    return f"dept-population-registry:{experiment_key}:{uuid.uuid4().hex[:12]}"


class PopulationFailure(RuntimeError):
    """A population host failed while training; the member trial fails with its error (and Tune retries it)."""


@dataclass
class Member:
    trial_id: str
    config: dict
    resume: bytes | None  # a dept.schedule.TrainResume, TrainResume.to_bytes


class PopulationHost:
    """One population: trains its members in a background thread, hands each member its items in order.

    Started before its members are known (:meth:`start` names them): the registry starts the first host with the
    experiment and each later one when a population's first member joins, so that the host's imports and
    text-tower load overlap the members' own process starts instead of following them."""

    def __init__(self, context):
        self.population_id = ""
        self.context = context
        self.members: dict[str, Member] = {}
        self._cond = threading.Condition()
        self._items: dict[str, list] = {}  # items not yet handed out
        self._handed: dict[str, int] = {}  # epoch of the last epoch item handed out
        self._continued: dict[str, int] = {}  # ... and asked past
        self._gone: set[str] = set()
        self._warm = threading.Thread(target=self._warm_up, name="population-warm-up", daemon=True)
        self._warm.start()
        self._thread = None

    def start(self, population_id: str, members: list[Member]) -> None:
        """Train ``members`` as population ``population_id`` (once per host)."""
        with self._cond:
            if self._thread is not None:
                raise RuntimeError(f"population host {self.population_id} was started already")
            self.population_id = population_id
            self.members = {m.trial_id: m for m in members}
            for m in members:
                self._items[m.trial_id], self._handed[m.trial_id], self._continued[m.trial_id] = [], 0, 0
            self._thread = threading.Thread(target=self._train, name=f"population-{population_id}", daemon=True)
            self._thread.start()
            self._cond.notify_all()

    def _warm_up(self) -> None:
        """What every population needs before its members are known; a failure here is met again (and reported
        to the members) when training starts."""
        try:
            with benchtimers.timed("host_warm"):  # bench only; a no-op unless asked for
                import dept.population  # noqa: F401  (torch and the training step: the host's slowest imports)

                text_tower(self.context)  # kept in the process's cache for the training thread
        except Exception:  # noqa: BLE001  (see the docstring)
            log.debug("population host warm-up failed:\n%s", traceback.format_exc())

    # -- called by member trials and the registry ---------------------------------------------------------------
    def next(self, trial_id: str):
        """The member's next item, waiting for it: ("epoch", metrics, resume bytes), ("final", result, {file:
        bytes}) or ("error", text). Asking again after an epoch item is the member's decision to go on."""
        with self._cond:
            while trial_id not in self._items:  # the member asked before the registry's start reached the host
                self._cond.wait()
            self._continued[trial_id] = self._handed[trial_id]
            self._cond.notify_all()
            while not self._items[trial_id]:
                self._cond.wait()
            item = self._items[trial_id].pop(0)
            if item[0] == "epoch":
                self._handed[trial_id] = int(item[1]["epoch"])
            return item

    def leave(self, trial_id: str) -> None:
        """The member's trial ended (ASHA stopped it, or its attempt failed): train it no further."""
        with self._cond:
            # Kept even before start() names the members: the two calls come from different callers, unordered.
            self._gone.add(trial_id)
            self._cond.notify_all()

    # -- training ---------------------------------------------------------------------------------------------
    def _put(self, trial_id: str, item) -> None:
        with self._cond:
            self._items[trial_id].append(item)
            self._cond.notify_all()

    def _decisions(self, epoch: int, trial_ids: list[str]) -> list[str]:
        """Wait until each member has gone on past ``epoch`` or left; returns those that left."""
        deadline = time.monotonic() + DECISION_TIMEOUT_S
        with self._cond:
            while True:
                pending = [t for t in trial_ids if t not in self._gone and self._continued[t] < epoch]
                if not pending:
                    return [t for t in trial_ids if t in self._gone]
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning("population %s: no decision from trial(s) %s after epoch %d in %.0f s; training "
                                "them no further", self.population_id, ", ".join(pending), epoch, DECISION_TIMEOUT_S)
                    self._gone.update(pending)
                    continue
                self._cond.wait(timeout=min(left, 5.0))

    def _train(self) -> None:
        try:
            self._run()
        except BaseException:  # every member still waiting gets the error; Tune retries each from its checkpoint
            text = traceback.format_exc()
            log.error("population %s failed:\n%s", self.population_id, text)
            for trial_id in self.members:
                self._put(trial_id, ("error", text))

    def _run(self) -> None:
        # torch and dept here: the registry actor and a member's relay import this module and train nothing.
        import torch

        from dept import PopulationOptions, save_state, train_population
        from dept.schedule import TrainResume

        if standin.enabled():  # bench only (pipelines.trial.standin)
            train_population = standin.train_population  # noqa: F811

        self._warm.join()
        benchtimers.record("host_start", 0.0)  # bench only; a no-op unless asked for
        ctx = self.context
        torch.set_num_threads(max(1, ctx.num_threads))
        started = time.perf_counter()
        ids = list(self.members)
        with benchtimers.timed("host_setup", members=len(ids)):  # bench only: the text tower, the data, the plans
            clip = text_tower(ctx)
            plans = [plan_trial(ctx.hyperparameters(self.members[t].config), ctx, clip) for t in ids]
        resume = [None if self.members[t].resume is None else TrainResume.from_bytes(self.members[t].resume)
                  for t in ids]
        last: list[dict] = [{} for _ in ids]

        def hand_out(trial_id: str):
            return lambda metrics, state: self._put(trial_id, ("epoch", metrics, state.to_bytes()))

        # run_trial's own per-epoch hook, per member: the last epoch's metrics go out with the final result
        reporters = [epoch_reporter(plans[p].hp, last[p], None, hand_out(t)) for p, t in enumerate(ids)]

        def after_epoch(epoch: int, members: list[int]) -> list[int]:
            with benchtimers.timed("barrier_wait", members=len(members)):  # bench only; a no-op unless asked for
                gone = set(self._decisions(epoch, [ids[p] for p in members]))
            return [p for p in members if ids[p] in gone]

        features, labels = plans[0].features, plans[0].labels  # one shape: the same training images
        options = PopulationOptions.for_precision(ctx.precision, ctx.compile)  # on a GPU: a memory-fitted step
        log.info("population %s: %d members, %s", self.population_id, len(ids), ", ".join(ids))
        results = train_population([p.learner for p in plans], features, labels, [p.train_config() for p in plans],
                                   on_epoch=lambda p, stats: reporters[p](stats), after_epoch=after_epoch, validate=lambda p, m: plans[p].validate(m),
                                   resume=resume, resumable=True, options=options, nonfinite="continue")
        done = [p for p, r in enumerate(results) if r.status == "done" and ids[p] not in self._gone]
        tested = {p: plans[p].learner for p in done}
        retrain = [p for p in done if plans[p].retrain is not None]
        if retrain:  # pseudo-new: the shipped models, retrained on every base class, as one population too
            again = {p: plans[p].retrain() for p in retrain}
            train_population([again[p][0] for p in retrain], again[retrain[0]][1], again[retrain[0]][2],
                             [plans[p].train_config() for p in retrain], options=options, nonfinite="continue")
            tested.update({p: again[p][0] for p in retrain})
        seconds = time.perf_counter() - started
        for p in done:
            final = {**plans[p].finish(last[p], tested[p]), "train_seconds": seconds}
            with tempfile.TemporaryDirectory(prefix="dept-population-") as tmp:
                save_state(tested[p], Path(tmp) / STATE_FILE)
                files = {STATE_FILE: (Path(tmp) / STATE_FILE).read_bytes(),
                         HYPERPARAMETERS_FILE: json.dumps(asdict(plans[p].hp), indent=1).encode()}
            self._put(ids[p], ("final", final, files))


class PopulationRegistry:
    """The driver-owned actor that groups one experiment's trials into populations and starts their hosts.

    A population forms when it has P members; or when every trial Tune can run at once (``slots``: the runner's
    count from the trials, ``--max-concurrent`` and the cluster's CPUs) has joined or is training, since no other
    can start before one ends; or else ``join_wait_s`` after the latest member joined."""

    def __init__(self, context, size: int, *, experiment_key: str, gpus: float = 0.0,
                 join_wait_s: float = DEFAULT_JOIN_WAIT_S, slots: int | None = None):
        self.context = context
        self.size = size
        self.experiment_key = experiment_key
        self.gpus = gpus
        self.join_wait_s = join_wait_s
        self.slots = slots
        self._cond = threading.Condition()
        self._open: dict[tuple, list[Member]] = {}  # shape -> members waiting for their population
        self._joined_at: dict[tuple, float] = {}  # shape -> when its latest waiting member joined
        self._formed: dict[str, tuple[str, object]] = {}  # trial id -> (population id, host) of its latest join
        self._hosts: dict[str, object] = {}  # population id -> host handle
        self._sizes: dict[str, int] = {}  # population id -> members it started with
        self._members: dict[str, set[str]] = {}  # population id -> its members' trial ids
        self._ended: dict[str, set[str]] = {}  # population id -> those whose trial (attempt) ended
        self._formations: list[dict] = []  # every population formed: id, members, why it formed then
        self._count = 0
        self._spare = self._new_host()  # the first population's host starts with the experiment
        # A join resolves the trial's settings, which reads the method library (torch): imported while the trials
        # start, not when the first of them joins.
        threading.Thread(target=dept_value, args=(METHODS_REF,), daemon=True).start()

    def join(self, trial_id: str, config: dict, resume: bytes | None):
        """(population id, host handle, size) for the trial, once its population has formed."""
        key = population_key(self.context.hyperparameters(config))
        with self._cond:
            waiting = self._open.setdefault(key, [])
            waiting[:] = [m for m in waiting if m.trial_id != trial_id]  # an attempt that died while waiting
            waiting.append(Member(trial_id, config, resume))
            self._joined_at[key] = time.monotonic()
            self._formed.pop(trial_id, None)
            if self._spare is None:  # a new population's host starts with its first member
                self._spare = self._new_host()
            why = self._ready(key)
            if why:
                self._form(key, why)
            while trial_id not in self._formed:
                left = self._joined_at.get(key, time.monotonic()) + self.join_wait_s - time.monotonic()
                if key in self._open and left <= 0:
                    self._form(key, f"no member joined for {self.join_wait_s:g} s")
                    continue
                self._cond.wait(timeout=max(0.05, left) if key in self._open else 1.0)
            population_id, host = self._formed[trial_id]
            return population_id, host, self._sizes[population_id]

    def formations(self) -> list[dict]:
        """Every population formed so far: ``id``, ``members`` (trial ids), ``why`` it formed when it did."""
        with self._cond:
            return [dict(f) for f in self._formations]

    def _ready(self, key: tuple) -> str:
        """Why the shape's waiting members should form their population now ("" for not yet)."""
        if len(self._open[key]) >= self.size:
            return "full"
        if self.slots is not None:
            busy = {m.trial_id for members in self._open.values() for m in members}
            for population_id, members in self._members.items():
                busy |= members - self._ended[population_id]
            if len(busy) >= self.slots:
                return f"every trial Tune runs at once ({self.slots}) joined"
        return ""

    def _new_host(self):
        import ray

        host_cls = ray.remote(PopulationHost).options(
            num_cpus=0, num_gpus=self.gpus, max_concurrency=self.size + 8, namespace=NAMESPACE)
        return host_cls.remote(self.context)

    def _form(self, key: tuple, why: str) -> None:
        members = self._open.pop(key)
        self._joined_at.pop(key, None)
        self._count += 1
        population_id = f"{self.experiment_key.rsplit('/', 1)[-1]}-p{self._count}"
        host, self._spare = self._spare or self._new_host(), None
        host.start.remote(population_id, members)
        self._hosts[population_id] = host
        self._sizes[population_id] = len(members)
        self._members[population_id] = {m.trial_id for m in members}
        self._ended[population_id] = set()
        for m in members:
            self._formed[m.trial_id] = (population_id, host)
        self._formations.append({"id": population_id, "members": [m.trial_id for m in members], "why": why})
        log.info("population %s formed: %d member(s) (%s)", population_id, len(members), why)
        benchtimers.record("population_formed", 0.0, members=len(members), why=why)  # bench only
        self._cond.notify_all()

    def leave(self, trial_id: str, population_id: str | None = None) -> None:
        """The driver: a trial ended (stopped, failed, retrying). Its population (``population_id``: the one its
        last result named; None: its latest) trains it no further."""
        import ray

        with self._cond:
            for members in self._open.values():
                members[:] = [m for m in members if m.trial_id != trial_id]
            formed = self._formed.get(trial_id)
            if formed is None:
                return
            population_id = population_id if population_id in self._hosts else formed[0]
            host = self._hosts.get(population_id)
            if host is None:
                return
            self._ended[population_id].add(trial_id)
            finished = self._ended[population_id] >= self._members[population_id]
            if finished:  # every member's trial has ended: free the host's memory (a GPU's, on a cluster)
                for table in (self._hosts, self._members, self._ended):
                    table.pop(population_id)
        host.leave.remote(trial_id)
        if finished:
            ray.kill(host)
            log.info("population %s: every member ended; its host is gone", population_id)


def start_registry(context, *, experiment_key: str, gpus: float, join_wait_s: float = DEFAULT_JOIN_WAIT_S,
                   slots: int | None = None):
    """The driver: the registry actor of ``context`` (its ``population`` and ``population_group``: the actor's name),
    owned by the driver, so that it and its hosts end with it. ``slots``: how many trials Tune runs at once at most
    (None: not known)."""
    import ray

    return ray.remote(PopulationRegistry).options(
        name=context.population_group, namespace=NAMESPACE, num_cpus=0, max_concurrency=1000,
    ).remote(context, context.population, experiment_key=experiment_key, gpus=gpus, join_wait_s=join_wait_s,
             slots=slots)


@dataclass(frozen=True)
class RelayedResume:
    """An epoch's TrainResume as the host sent it (``TrainResume.to_bytes``: the file ``TrainResume.save`` writes),
    saved as it is: a member only relays it, so its process never imports torch (8 members starting at once on 2
    cores paid ~2 CPU seconds each for that; bench/RESULTS.md, "tune --population P")."""

    data: bytes

    def save(self, path: str | Path) -> Path:
        return write_bytes_atomic(Path(path), self.data)


def run_member(config: dict, context, trial_id: str, resume, report_epoch, report_final) -> None:
    """A member trial's body (in ``tune_trainable``): join, then report what the host hands out, in order.
    ``report_epoch(metrics, state)`` reports an epoch with its checkpoint (it returns when Tune lets the trial go
    on; ``state.save(path)`` writes the epoch's TrainResume file); ``report_final(result, folder)`` the final
    result with the learned state in ``folder``. ``resume``: a TrainResume or None."""
    import ray

    registry = ray.get_actor(context.population_group, namespace=NAMESPACE)
    raw = None if resume is None else resume.to_bytes()
    population_id, host, size = ray.get(registry.join.remote(trial_id, config, raw))
    # with every result: the runs' tags of the same names
    tag = {POPULATION_TAG: population_id, POPULATION_SIZE_TAG: size}
    try:
        while True:
            item = ray.get(host.next.remote(trial_id))
            if item[0] == "epoch":
                report_epoch({**item[1], **tag}, RelayedResume(item[2]))
            elif item[0] == "final":
                with tempfile.TemporaryDirectory(prefix="dept-member-") as tmp:
                    for name, data in item[2].items():
                        (Path(tmp) / name).write_bytes(data)
                    report_final({**item[1], **tag}, tmp)
                return
            else:
                raise PopulationFailure(f"population {population_id} failed: {item[1].strip().splitlines()[-1]}")
    except BaseException:
        host.leave.remote(trial_id)  # this attempt is over: its population goes on without it
        raise
