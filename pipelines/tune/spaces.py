"""Search spaces: YAML files that say which DePT trials ``dept-pipeline tune`` runs.

A space is chosen by name (a file shipped in ``tune_spaces/``: ``paper``, ``dept-coefficients``, ``smoke``, ...)
or by path (any ``.yaml`` / ``.yml`` file). Format (every key but ``params`` is optional)::

    description: free text, shown by ``dept-pipeline tune --help`` and logged to MLflow
    params:                      # hyperparameters; any not named here takes its documented default
      method: coop               # a fixed value ...
      dept: {grid: [true, false]}          # ... or searched: grid (every value, crossed with the rest),
      loss_weight: {uniform: [0.0, 1.0]}   #   uniform [low, high], loguniform [low, high] (low > 0),
      lr: {loguniform: [1.0e-3, 1.0e-2]}   #   choice [a, b, ...] (one value drawn per sample)
      n_ctx: {choice: [4, 16]}
    seeds: [1, 2, 3]             # every sampled configuration runs once per seed (default [1])
    num_samples: 8               # sampled configurations (default 1); trials = num_samples x grid x seeds
    objective: val               # val (default) | pseudo-new: what the selection metric is computed on
    pseudo_new_fraction: 0.34    # pseudo-new only: share of base classes held out as pseudo-new (default 1/3)
    metric: val_hm               # selection metric (default val_hm; pseudo_hm for objective pseudo-new)
    mode: max                    # max | min (default max)
    scheduler: asha              # asha (default) | none, or a mapping:
    #  scheduler: {type: asha, grace_period: 1, reduction_factor: 2, max_t: 10}   (time unit: epochs)
    searcher: random             # random (default) | optuna (needs the optuna package), or a mapping:
    #  searcher: {type: random, seed: 0}       (seed: reproducible draws; default: none)

Hyperparameters (``params`` keys): the fields of :class:`pipelines.trial.settings.Hyperparameters`, where each is
defined once (type, range, default read from ``dept``'s config dataclasses and methods, help); their table, generated
from those fields, is in ``tune_spaces/README.md``. Method-dependent defaults (``lr``, ``batch_size``, ``n_ctx``,
``ctx_init``, ``class_specific``, ``kg_weight``) are filled in per trial and logged to MLflow as the trial's params.
Without DePT (``dept: false``) the loss weight and fusion weight are 0: DePT with both at 0 *is* the base method.
DePT at loss weight 0 is the base method too (no CAT head to train or fuse): its params say so
(``dept_effective: false``, ``fusion_weight_effective: 0``) and its numbers are the base method's.

Seeds are not a ``params`` key: ``seeds`` runs each sampled configuration once per seed (with the random searcher
through a grid over ``seed`` with random values held constant across the grid; with Optuna through Ray's
``Repeater``, so Optuna sees the mean over seeds). Optuna cannot take grid values.

Any malformed file is refused before anything runs, with one line naming the file and the key.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dept.protocols import BASE_TO_NEW
from pipelines.trial.settings import SETTINGS, Setting, default_of, method_names, seed_of
from pipelines.vocabulary import (
    PSEUDO_BASE_ACC,
    PSEUDO_HM,
    PSEUDO_NEW_ACC,
    VAL_ACC,
    VAL_BASE_ACC,
    VAL_HM,
    VAL_NEW_ACC,
)

log = logging.getLogger(__name__)

SEARCH_KINDS = ("uniform", "loguniform", "choice", "grid")
OBJECTIVES = ("val", "pseudo-new")
SCHEDULERS = ("asha", "none")
SEARCHERS = ("random", "optuna")

#: Metrics a trial reports that may drive selection, per objective. Test metrics are never among them.
SELECTABLE_METRICS = {
    "val": (VAL_HM, VAL_BASE_ACC, VAL_NEW_ACC, "train_loss"),
    "pseudo-new": (PSEUDO_HM, PSEUDO_BASE_ACC, PSEUDO_NEW_ACC, "train_loss"),
    # the transfer protocols (cross-dataset, domain generalisation): accuracy over all source classes on the
    # source's few-shot val images; targets are never looked at while selecting
    "source-val": (VAL_ACC, "train_loss"),
}
DEFAULT_METRIC = {"val": VAL_HM, "pseudo-new": PSEUDO_HM, "source-val": VAL_ACC}
#: The objective of the transfer protocols (set by ``--protocol``, not chosen in a space file).
TRANSFER_OBJECTIVE = "source-val"

TOP_LEVEL_KEYS = (
    "description", "params", "seeds", "num_samples", "objective", "pseudo_new_fraction", "metric", "mode",
    "scheduler", "searcher",
)


class SpaceError(ValueError):
    """A search space file cannot be used; the message is one line naming the file and the key."""


@dataclass(frozen=True)
class ParamSpec:
    name: str
    kind: str  # "fixed" or one of SEARCH_KINDS
    values: tuple  # fixed: (value,); uniform/loguniform: (low, high); choice/grid: the options

    @property
    def sampled(self) -> bool:
        return self.kind in ("uniform", "loguniform", "choice")


@dataclass(frozen=True)
class SchedulerSpec:
    kind: str = "asha"
    grace_period: int = 1
    reduction_factor: float = 2.0
    max_t: int | None = None  # None: the largest epochs any trial can have


@dataclass(frozen=True)
class SearcherSpec:
    kind: str = "random"
    seed: int | None = None


@dataclass(frozen=True)
class SearchSpace:
    name: str
    source: str  # the file it was read from
    params: dict[str, ParamSpec]
    description: str = ""
    seeds: tuple[int, ...] = (1,)
    num_samples: int = 1
    objective: str = "val"
    pseudo_new_fraction: float = 1.0 / 3.0
    metric: str = VAL_HM
    mode: str = "max"
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    searcher: SearcherSpec = field(default_factory=SearcherSpec)

    # -- derived facts --------------------------------------------------------------------------------------
    def _fail(self, key: str, why: str) -> SpaceError:
        return SpaceError(f"search space {self.source}: {key}: {why}")

    def grid_size(self) -> int:
        return math.prod(len(p.values) for p in self.params.values() if p.kind == "grid")

    def has_sampled(self) -> bool:
        return any(p.sampled for p in self.params.values())

    def num_trials(self) -> int:
        """How many trials Tune will run for one dataset."""
        return self.num_samples * self.grid_size() * len(self.seeds)

    def max_epochs(self) -> int:
        spec = self.params.get("epochs")
        if spec is None:
            return default_of("epochs")
        return int(max(spec.values))

    def methods(self) -> list[str]:
        spec = self.params.get("method")
        return [default_of("method")] if spec is None else sorted(set(spec.values))

    def shots_values(self) -> list[int | None]:
        spec = self.params.get("shots")
        return [None] if spec is None else sorted(set(spec.values))

    # -- overrides from the command line --------------------------------------------------------------------
    def with_overrides(
        self, *, methods: list[str] | None = None, num_samples: int | None = None, objective: str | None = None,
        protocol: str = BASE_TO_NEW,
    ) -> "SearchSpace":
        space = self
        if protocol != BASE_TO_NEW:
            # Trials train on every source class: no new classes to select on. The space's base-to-new metric
            # becomes the source's validation accuracy (train_loss stays train_loss).
            if objective == "pseudo-new" or (objective is None and space.objective == "pseudo-new"):
                raise SpaceError(f"--protocol {protocol}: objective pseudo-new is for base-to-new only (trials "
                                 "train on every source class); use --objective val")
            metric = space.metric if space.metric in SELECTABLE_METRICS[TRANSFER_OBJECTIVE] else VAL_ACC
            space = dataclasses.replace(space, objective=TRANSFER_OBJECTIVE, metric=metric)
            objective = None
        if methods:
            bad = [m for m in methods if m not in method_names()]
            if bad:
                raise SpaceError(f"--method {bad[0]!r}: unknown method; known: {', '.join(method_names())}")
            unique = tuple(dict.fromkeys(methods))
            spec = ParamSpec("method", "fixed", unique) if len(unique) == 1 else ParamSpec("method", "grid", unique)
            space = dataclasses.replace(space, params={**space.params, "method": spec})
        if num_samples is not None:
            if num_samples < 1:
                raise SpaceError(f"--num-samples must be >= 1, got {num_samples}")
            space = dataclasses.replace(space, num_samples=num_samples)
        if objective is not None and objective != space.objective:
            if objective not in OBJECTIVES:
                raise SpaceError(f"--objective {objective!r}: known: {', '.join(OBJECTIVES)}")
            # The metric names differ per objective; carry the same quantity over.
            metric = space.metric
            if metric not in SELECTABLE_METRICS[objective]:
                metric = {VAL_HM: PSEUDO_HM, VAL_BASE_ACC: PSEUDO_BASE_ACC, VAL_NEW_ACC: PSEUDO_NEW_ACC,
                          PSEUDO_HM: VAL_HM, PSEUDO_BASE_ACC: VAL_BASE_ACC,
                          PSEUDO_NEW_ACC: VAL_NEW_ACC}[metric]
            space = dataclasses.replace(space, objective=objective, metric=metric)
        space.validate()
        return space

    def validate(self) -> None:
        """Checks that need the whole space (each key was checked while parsing)."""
        if self.metric not in SELECTABLE_METRICS[self.objective]:
            hint = " (test metrics are never used for selection)" if self.metric.startswith("test_") else ""
            raise self._fail(
                "metric",
                f"{self.metric!r} cannot be selected on with objective {self.objective!r}{hint}; "
                f"choose one of {', '.join(SELECTABLE_METRICS[self.objective])}",
            )
        if self.num_samples > 1 and not self.has_sampled():
            raise self._fail(
                "num_samples", f"{self.num_samples} samples but no value is sampled (uniform/loguniform/choice): "
                "every sample would repeat the same trials; use 1"
            )
        if self.scheduler.kind == "asha":
            max_t = self.scheduler.max_t or self.max_epochs()
            if self.scheduler.grace_period > max_t:
                raise self._fail("scheduler.grace_period", f"{self.scheduler.grace_period} exceeds max_t {max_t}")
        if self.searcher.kind == "optuna":
            grids = [p.name for p in self.params.values() if p.kind == "grid"]
            if grids:
                raise self._fail(
                    f"params.{grids[0]}", "grid values need searcher random (Optuna samples; use choice)"
                )
            try:
                import optuna  # noqa: F401
            except ImportError:
                raise self._fail(
                    "searcher", "optuna is not installed (pip install 'dept-pipeline[optuna]'), or use searcher random"
                ) from None

    # -- Ray Tune objects -----------------------------------------------------------------------------------
    def param_space(self) -> dict:
        """The ``Tuner(param_space=...)`` dict: fixed values as constants, searched ones as Tune domains."""
        from ray import tune

        space: dict[str, Any] = {}
        for name, spec in self.params.items():
            if spec.kind == "fixed":
                space[name] = spec.values[0]
            elif spec.kind == "uniform":
                space[name] = tune.uniform(*spec.values)
            elif spec.kind == "loguniform":
                space[name] = tune.loguniform(*spec.values)
            elif spec.kind == "choice":
                space[name] = tune.choice(list(spec.values))
            else:
                space[name] = tune.grid_search(list(spec.values))
        if self.searcher.kind == "random":
            space["seed"] = tune.grid_search(list(self.seeds)) if len(self.seeds) > 1 else self.seeds[0]
        return space

    def tune_num_samples(self) -> int:
        """``TuneConfig.num_samples``: per grid point for the random searcher; total trials under Repeater."""
        return self.num_samples if self.searcher.kind == "random" else self.num_samples * len(self.seeds)

    def make_scheduler(self):
        from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

        if self.scheduler.kind == "none":
            return FIFOScheduler()
        return ASHAScheduler(
            time_attr="epoch",
            max_t=self.scheduler.max_t or self.max_epochs(),
            grace_period=self.scheduler.grace_period,
            reduction_factor=self.scheduler.reduction_factor,
        )

    def make_search_alg(self, max_concurrent: int | None = None):
        """The search algorithm. ``max_concurrent`` goes here for the random searcher (Tune ignores
        ``TuneConfig.max_concurrent_trials`` for it); other searchers take it from ``TuneConfig``."""
        if self.searcher.kind == "random":
            from ray.tune.search import BasicVariantGenerator

            # constant_grid_search: a sampled configuration keeps its values across the grid (so across seeds).
            return BasicVariantGenerator(constant_grid_search=True, random_state=self.searcher.seed,
                                         max_concurrent=max_concurrent or 0)
        from ray.tune.search import Repeater
        from ray.tune.search.optuna import OptunaSearch

        searcher = OptunaSearch(seed=self.searcher.seed)
        return Repeater(searcher, repeat=len(self.seeds), set_index=True) if len(self.seeds) > 1 else searcher

    def seed_of(self, config: dict) -> int:
        return seed_of(config, self.seeds)

    def summary(self) -> str:
        searched = [f"{p.name}~{p.kind}" for p in self.params.values() if p.kind != "fixed"]
        return (
            f"space {self.name}: {self.num_trials()} trials (samples {self.num_samples} x grid {self.grid_size()} "
            f"x seeds {list(self.seeds)}), searched: {', '.join(searched) or 'nothing'}, "
            f"metric {self.metric} ({self.mode}, objective {self.objective}), scheduler {self.scheduler.kind}, "
            f"searcher {self.searcher.kind}"
        )

    def as_dict(self) -> dict:
        """A plain, YAML-able description (logged beside the experiment so a run can be traced to its space)."""
        out: dict[str, Any] = {
            "description": self.description,
            "params": {
                n: (p.values[0] if p.kind == "fixed" else {p.kind: list(p.values)}) for n, p in self.params.items()
            },
            "seeds": list(self.seeds),
            "num_samples": self.num_samples,
            "objective": self.objective,
            "metric": self.metric,
            "mode": self.mode,
            "scheduler": _spec_dict(self.scheduler),
            "searcher": _spec_dict(self.searcher),
        }
        if self.objective == "pseudo-new":
            out["pseudo_new_fraction"] = self.pseudo_new_fraction
        return out

    def digest(self) -> str:
        """sha256 of what the space runs (:meth:`as_dict` without its description): a parent run records it, and
        ``--resume`` refuses a space that no longer says the same."""
        what = {k: v for k, v in self.as_dict().items() if k != "description"}
        return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def space_changes(before: dict, after: dict) -> list[str]:
    """The keys (``params.lr``, ``seeds``, ...) whose values differ between two :meth:`SearchSpace.as_dict` results."""
    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            if isinstance(v, dict) and k in ("params", "scheduler", "searcher"):
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    a, b = flat(before), flat(after)
    return sorted(k for k in set(a) | set(b) if k != "description" and a.get(k) != b.get(k))


def _spec_dict(spec: SchedulerSpec | SearcherSpec) -> dict:
    if spec.kind == "none":
        return {"type": "none"}
    fields_ = {k: v for k, v in dataclasses.asdict(spec).items() if k != "kind" and v is not None}
    return {"type": spec.kind, **fields_}




# -- parsing ------------------------------------------------------------------------------------------------
def _coerce(value: Any, rule: Setting, fail) -> Any:
    """One value checked against its setting, in a search space's range."""
    try:
        return rule.check(value, space=True)
    except ValueError as e:
        raise fail(str(e)) from None


def _parse_param(name: str, raw: Any, source: str) -> ParamSpec:
    key = f"params.{name}"

    def fail(why: str) -> SpaceError:
        return SpaceError(f"search space {source}: {key}: {why}")

    if name == "seed":
        raise fail("seeds are listed under the top-level key 'seeds', not under params")
    rule = SETTINGS.get(name)
    if rule is None or not rule.in_space:
        raise fail(f"unknown hyperparameter; known: {', '.join(n for n, s in SETTINGS.items() if s.in_space)}")
    if isinstance(raw, list):
        raise fail("a bare list is ambiguous: write {choice: [...]} or {grid: [...]}")
    if not isinstance(raw, dict):
        return ParamSpec(name, "fixed", (_coerce(raw, rule, fail),))
    if len(raw) != 1 or next(iter(raw)) not in SEARCH_KINDS:
        raise fail(f"a searched value is one of {{{': [...], '.join(SEARCH_KINDS)}: [...]}}, got {raw!r}")
    kind, values = next(iter(raw.items()))
    if not isinstance(values, list) or not values:
        raise fail(f"{kind} needs a non-empty list, got {values!r}")
    if kind in ("uniform", "loguniform"):
        if rule.kind is not float:
            raise fail(f"{kind} needs a real-valued hyperparameter; use choice or grid for {rule.type_name()}")
        if len(values) != 2:
            raise fail(f"{kind} needs [low, high], got {values!r}")
        low, high = (_coerce(v, rule, fail) for v in values)
        if not low < high:
            raise fail(f"{kind} needs low < high, got [{low}, {high}]")
        if kind == "loguniform" and low <= 0:
            raise fail(f"loguniform needs low > 0, got {low}")
        return ParamSpec(name, kind, (low, high))
    coerced = tuple(_coerce(v, rule, fail) for v in values)
    if len(set(coerced)) != len(coerced):
        raise fail(f"{kind} lists a value twice: {values!r}")
    return ParamSpec(name, kind, coerced)


def _parse_mapping_or_name(raw: Any, key: str, kinds: tuple[str, ...], fields_: dict[str, type], source: str) -> dict:
    def fail(why: str) -> SpaceError:
        return SpaceError(f"search space {source}: {key}: {why}")

    if isinstance(raw, str):
        raw = {"type": raw}
    if not isinstance(raw, dict):
        raise fail(f"expected one of {', '.join(kinds)} or a mapping with 'type', got {raw!r}")
    raw = dict(raw)
    kind = raw.pop("type", kinds[0])
    if kind not in kinds:
        raise SpaceError(f"search space {source}: {key}.type: {kind!r} is not one of {', '.join(kinds)}")
    out: dict[str, Any] = {"kind": kind}
    for name, value in raw.items():
        if name not in fields_:
            raise SpaceError(
                f"search space {source}: {key}.{name}: unknown key; known: type, {', '.join(fields_) or '(none)'}"
            )
        want = fields_[name]
        ok = isinstance(value, want) and not isinstance(value, bool)
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok or (isinstance(value, (int, float)) and value < (1 if name != "seed" else 0)):
            raise SpaceError(f"search space {source}: {key}.{name}: expected a positive {want.__name__}, got {value!r}")
        out[name] = value
    return out


def parse_space(data: Any, *, name: str, source: str) -> SearchSpace:
    """A :class:`SearchSpace` from the parsed YAML of one file."""

    def fail(key: str, why: str) -> SpaceError:
        return SpaceError(f"search space {source}: {key}: {why}")

    if not isinstance(data, dict):
        raise SpaceError(f"search space {source}: expected a mapping of keys (params, seeds, ...), got {type(data).__name__}")
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            raise fail(str(key), f"unknown key; known: {', '.join(TOP_LEVEL_KEYS)}")
    raw_params = data.get("params")
    if not isinstance(raw_params, dict) or not raw_params:
        raise fail("params", "required: a mapping of hyperparameter -> value or {uniform|loguniform|choice|grid: [...]}")
    params = {str(k): _parse_param(str(k), v, source) for k, v in raw_params.items()}

    seeds = data.get("seeds", [1])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if (
        not isinstance(seeds, list) or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
    ):
        raise fail("seeds", f"expected a non-empty list of non-negative integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise fail("seeds", f"a seed is listed twice: {seeds!r}")

    num_samples = data.get("num_samples", 1)
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
        raise fail("num_samples", f"expected an integer >= 1, got {num_samples!r}")

    objective = data.get("objective", "val")
    if objective not in OBJECTIVES:
        raise fail("objective", f"{objective!r} is not one of {', '.join(OBJECTIVES)}")
    fraction = data.get("pseudo_new_fraction", 1.0 / 3.0)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise fail("pseudo_new_fraction", f"expected a number strictly between 0 and 1, got {fraction!r}")
    if "pseudo_new_fraction" in data and objective != "pseudo-new":
        raise fail("pseudo_new_fraction", "only applies with objective: pseudo-new")

    metric = data.get("metric", DEFAULT_METRIC[objective])
    if not isinstance(metric, str):
        raise fail("metric", f"expected a metric name, got {metric!r}")
    mode = data.get("mode", "max")
    if mode not in ("max", "min"):
        raise fail("mode", f"{mode!r} is not max or min")

    sched = _parse_mapping_or_name(
        data.get("scheduler", "asha"), "scheduler", SCHEDULERS,
        {"grace_period": int, "reduction_factor": float, "max_t": int}, source,
    )
    if sched["kind"] == "none" and len(sched) > 1:
        raise fail("scheduler", "type none takes no other keys")
    if sched.get("reduction_factor", 2.0) <= 1:
        raise fail("scheduler.reduction_factor", f"must be > 1, got {sched['reduction_factor']}")
    searcher = _parse_mapping_or_name(data.get("searcher", "random"), "searcher", SEARCHERS, {"seed": int}, source)

    description = data.get("description", "")
    if not isinstance(description, str):
        raise fail("description", "expected text")

    space = SearchSpace(
        name=name,
        source=source,
        params=params,
        description=description.strip(),
        seeds=tuple(seeds),
        num_samples=num_samples,
        objective=objective,
        pseudo_new_fraction=float(fraction),
        metric=metric,
        mode=mode,
        scheduler=SchedulerSpec(**sched),
        searcher=SearcherSpec(**searcher),
    )
    space.validate()
    return space


def resolve_space_path(name_or_path: str) -> tuple[str, Path]:
    """(name, path) of a space given by shipped name or by file path."""
    from tune_spaces import space_names, space_path

    candidate = Path(name_or_path).expanduser()
    # A folder of the same name (the quickstart's ./demo) is no space file: the shipped name wins.
    if candidate.suffix in (".yaml", ".yml") or candidate.is_file() or "/" in name_or_path:
        if not candidate.is_file():
            raise SpaceError(f"search space file not found: {candidate.resolve()}")
        return candidate.stem, candidate.resolve()
    path = space_path(name_or_path)
    if path is None:
        raise SpaceError(
            f"unknown search space {name_or_path!r}; shipped: {', '.join(space_names())} (or give a .yaml path)"
        )
    return name_or_path, path


def load_space(name_or_path: str) -> SearchSpace:
    """Read and validate a space by shipped name (``paper``) or path (``my_space.yaml``)."""
    name, path = resolve_space_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise SpaceError(f"search space {path}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    return parse_space(data, name=name, source=str(path))
