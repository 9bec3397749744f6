"""The one rule that names the winning configuration: used by ``tune``'s summary table, the parent run's
``best_*`` and ``report`` (a leaf module: no torch, no MLflow, no Ray).

- A *configuration* is every hyperparameter but the seed. One run counts per (configuration, seed): of duplicates
  (an aborted attempt, an experiment tuned twice) a completed one beats one that is not, then the newest wins.
- A configuration is *complete* when every expected seed has a completed run. Only complete configurations can
  win, on the mean over their seeds of the selection metric (validation only; never a test metric). Incomplete
  ones are ranked after them, and shown as incomplete: the mean of a luckier subset of seeds is no result.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from pipelines.metrics import harmonic_mean, is_number
from pipelines.vocabulary import COMPLETED, TEST_BASE_ACC, TEST_NEW_ACC, param_value


@dataclass(frozen=True)
class SeedRun:
    """One run of one configuration and seed, as the rule needs it."""

    config: tuple  # hashable: the hyperparameters without the seed
    seed: str
    status: str  # completed | stopped_early | error | running | retrying
    metrics: Mapping[str, Any]
    start_time: int = 0  # ms; among duplicates the newest counts
    source: Any = None  # what the caller made it from (a TrialRecord, a report RunInfo)


@dataclass
class ConfigOutcome:
    """One configuration over its seeds (one run per seed)."""

    config: tuple
    seeds: tuple[str, ...]  # the seeds it should have
    runs: dict[str, SeedRun] = field(default_factory=dict)  # seed -> the run that counts

    def completed(self) -> list[SeedRun]:
        return [r for _, r in sorted(self.runs.items()) if r.status == COMPLETED]

    @property
    def complete(self) -> bool:
        return bool(self.seeds) and all(s in self.runs and self.runs[s].status == COMPLETED for s in self.seeds)

    def mean(self, key: str) -> float:
        vals = [r.metrics[key] for r in self.completed() if is_number(r.metrics.get(key), nan=False)]
        return statistics.fmean(vals) if vals else float("nan")

    def std(self, key: str) -> float:
        """Over the seeds; NaN with fewer than two (a spread of one seed is no "± 0.00")."""
        vals = [r.metrics[key] for r in self.completed() if is_number(r.metrics.get(key), nan=False)]
        return statistics.stdev(vals) if len(vals) > 1 else float("nan")

    def test_hm(self) -> float:
        """HM of the seed-averaged test base and new (the paper's convention), not the mean of HMs."""
        return harmonic_mean(self.mean(TEST_BASE_ACC), self.mean(TEST_NEW_ACC))

    def seeds_text(self) -> str:
        """"2" when complete, else "1/2 incomplete" (completed seeds / expected)."""
        done = len(self.completed())
        return str(done) if self.complete else f"{done}/{len(self.seeds)} incomplete"


def one_per_seed(runs: Iterable[SeedRun]) -> list[SeedRun]:
    """The run that counts for each (configuration, seed): completed before not, then the newest."""
    best: dict[tuple, SeedRun] = {}
    for r in runs:
        key = (r.config, r.seed)
        old = best.get(key)
        if old is None or (r.status == COMPLETED, r.start_time) > (old.status == COMPLETED, old.start_time):
            best[key] = r
    return list(best.values())


def rank(runs: Iterable[SeedRun], metric: str, mode: str, seeds: Iterable[str] | None = None) -> list[ConfigOutcome]:
    """Every configuration, best first: complete ones by the mean of ``metric`` over their seeds, then incomplete
    ones the same way (those with no completed seed last). ``seeds``: the seeds each configuration should have
    (default: every seed any run has)."""
    runs = one_per_seed(runs)
    expected = tuple(sorted({str(s) for s in seeds} if seeds is not None else {r.seed for r in runs}))
    groups: dict[tuple, ConfigOutcome] = {}
    for r in runs:
        groups.setdefault(r.config, ConfigOutcome(r.config, expected)).runs[r.seed] = r
    sign = 1.0 if mode == "max" else -1.0

    def order(g: ConfigOutcome) -> tuple:
        score = g.mean(metric)
        return (not g.complete, math.isnan(score), -sign * score if not math.isnan(score) else 0.0)

    return sorted(groups.values(), key=order)


def winner(ranked: list[ConfigOutcome], metric: str) -> ConfigOutcome | None:
    """The first of :func:`rank`'s list when it is complete and scored; else no configuration wins."""
    if ranked and ranked[0].complete and not math.isnan(ranked[0].mean(metric)):
        return ranked[0]
    return None


# -- naming rules: what counts as one configuration, and what a method is called ----------------------------------
#: The paper's names of the base methods (report rows, figure legends).
PAPER_METHOD_NAMES = {"coop": "CoOp", "cocoop": "CoCoOp", "kgcoop": "KgCoOp"}


def config_key(hp) -> tuple:
    """One configuration: every resolved hyperparameter but the seed (``Hyperparameters.as_params``), as the
    MLflow params spell them."""
    params = hp.as_params()
    params.pop("seed")
    return tuple(sorted((k, param_value(v)) for k, v in params.items()))


def method_label(method: str, dept: bool) -> str:
    """A method as the paper's table names it: "CoOp", "CoOp+DePT"."""
    name = PAPER_METHOD_NAMES.get(method, method)
    return f"{name}+DePT" if dept else name
