"""The one rule that names the winning configuration: used by ``tune``'s summary table, the parent run's
``best_*`` and ``report`` (a leaf module: no torch, no MLflow, no Ray).

- A *configuration* is every hyperparameter but the seed. One run counts per (configuration, seed): of duplicates
  (an aborted attempt, an experiment tuned twice) a completed one beats one that is not, then the newest wins.
- A configuration is *complete* when every expected seed has a completed run. Only complete configurations can
  win, on the mean over their seeds of the selection metric (validation only; never a test metric). Incomplete
  ones are ranked after them, and shown as incomplete: the mean of a luckier subset of seeds is no result.
- An exact tie on that mean is broken by :data:`TIE_RULE` (:func:`tie_break_key`), never by the order runs were
  logged or read in, and shown as a tie (:func:`tie_note`).
- DePT at loss weight 0 *is* the plain method (no CAT head is trained or fused; METHOD.md): it is named, grouped
  and ranked as the plain method (:func:`canonical_params`, :func:`dept_in_effect`).
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
    params: Mapping[str, Any] | None = None  # the configuration's params (MLflow spelling): the tie rule reads them


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

    @property
    def params(self) -> Mapping[str, Any]:
        """The configuration's params, as its runs carry them (else its key, when that is a (name, value) tuple)."""
        for r in self.runs.values():
            if r.params is not None:
                return r.params
        try:
            return dict(self.config)
        except (TypeError, ValueError):
            return {}

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
        return (not g.complete, math.isnan(score), -sign * score if not math.isnan(score) else 0.0,
                tie_break_key(g.params))

    return sorted(groups.values(), key=order)


def winner(ranked: list[ConfigOutcome], metric: str) -> ConfigOutcome | None:
    """The first of :func:`rank`'s list when it is complete and scored; else no configuration wins."""
    if ranked and ranked[0].complete and not math.isnan(ranked[0].mean(metric)):
        return ranked[0]
    return None


# -- the tie rule ---------------------------------------------------------------------------------------------------
#: The rule, as ``tune --help``, ``report --help`` and docs/selection.md say it.
TIE_RULE = ("An exact tie on the mean selection metric goes to the simpler configuration: the lower loss weight in "
            "effect (the plain method counts 0), then the lower lr, then the method name, then the params as text; "
            "never to the order the runs were logged in.")


def _number(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.inf  # a configuration without the setting sorts after those with it


def tie_break_key(params: Mapping[str, Any]) -> tuple:
    """:data:`TIE_RULE` as a sort key (smaller wins): a function of the configuration alone, so the summary (from
    trial records) and ``report`` (from MLflow runs) order tied configurations alike, whatever order they come in."""
    p = canonical_params(params)
    text = ",".join(f"{k}={v}" for k, v in sorted(p.items()))
    return (_number(p.get("loss_weight", 0.0)), _number(p.get("lr")), str(p.get("method", "")), text)


#: The criteria of :func:`tie_break_key`, in order, as a tie note names the one that decided.
_TIE_CRITERIA = ("lower loss weight", "lower lr", "method name", "params as text")


def tied_with(ranked: list[ConfigOutcome], metric: str) -> list[ConfigOutcome]:
    """The configurations after the first of :func:`rank`'s list with exactly its mean ``metric`` (complete ones
    only: an incomplete one never ties with a winner)."""
    if not ranked or not ranked[0].complete:
        return []
    score = ranked[0].mean(metric)
    return [g for g in ranked[1:] if g.complete and g.mean(metric) == score]


def tie_note(ranked: list[ConfigOutcome], metric: str, describe=None) -> str:
    """"" without a tie; else e.g. "tie on val_hm 65.21 with 1 other configuration (CoCoOp+DePT λ0.70 lr1.0e-02),
    broken by lower lr (2.0e-03 < 1.0e-02)". ``describe``: a configuration's short name (default
    :func:`describe_params`)."""
    others = tied_with(ranked, metric)
    if not others:
        return ""
    describe = describe or (lambda g: describe_params(g.params))
    first, runner_up = tie_break_key(ranked[0].params), tie_break_key(others[0].params)
    i = next((i for i, (a, b) in enumerate(zip(first, runner_up)) if a != b), len(first) - 1)
    shown = {0: lambda k: f"{k[0]:.2f}", 1: lambda k: f"{k[1]:.1e}", 2: lambda k: k[2]}.get(i)
    why = _TIE_CRITERIA[i] + (f" ({shown(first)} < {shown(runner_up)})" if shown else "")
    n = len(others)
    names = ", ".join(describe(g) for g in others)
    return (f"tie on {metric} {ranked[0].mean(metric):.2f} with {n} other configuration{'s' * (n != 1)} ({names}), "
            f"broken by {why}")


# -- naming rules: what counts as one configuration, and what a method is called ----------------------------------
#: The paper's names of the base methods (report rows, figure legends).
PAPER_METHOD_NAMES = {"coop": "CoOp", "cocoop": "CoCoOp", "kgcoop": "KgCoOp"}


def dept_in_effect(params: Mapping[str, Any], asked: Any = None) -> bool:
    """Whether a run really applied DePT: its ``dept_effective`` param (false at loss weight 0: the plain
    method), else (runs logged before that param) what was asked: ``asked``, else its ``dept`` param."""
    value = params.get("dept_effective")
    if value is None:
        value = params.get("dept", "true") if asked is None else asked
    return param_value(value).lower() == "true" if isinstance(value, (bool, str)) else bool(value)


def canonical_params(params: Mapping[str, Any]) -> dict[str, str]:
    """Params as MLflow spells them, with DePT at loss weight 0 written as the plain method (``dept`` false, loss
    and fusion weight 0, as ``Hyperparameters.resolved`` writes ``dept: false``): the two are one configuration,
    whichever way a space asked for it."""
    out = {k: param_value(v) for k, v in params.items()}
    if "dept_effective" in out and not dept_in_effect(out):
        out.update(dept="false", loss_weight="0.0", fusion_weight="0.0")
    return out


def config_key(hp) -> tuple:
    """One configuration: every resolved hyperparameter but the seed (``Hyperparameters.as_params``), as the
    MLflow params spell them (:func:`canonical_params`)."""
    params = hp.as_params()
    params.pop("seed")
    return tuple(sorted(canonical_params(params).items()))


def method_label(method: str, dept: bool) -> str:
    """A method as the paper's table names it: "CoOp", "CoOp+DePT". ``dept``: DePT *in effect*
    (:func:`dept_in_effect`): at loss weight 0 it is the plain method, and named so."""
    name = PAPER_METHOD_NAMES.get(method, method)
    return f"{name}+DePT" if dept else name


def describe_params(params: Mapping[str, Any], method: str | None = None, dept: bool | None = None) -> str:
    """A configuration in a few words, as tie notes and the report's winner line name it: "CoOp+DePT λ0.70
    lr2.0e-03" (the plain method: "CoOp lr2.0e-03"); ``method`` / ``dept``: where the caller knows them better
    than the params (a run's tags)."""
    p = canonical_params(params)
    dept = dept_in_effect(p) if dept is None else dept
    lr, lw = _number(p.get("lr")), _number(p.get("loss_weight"))
    text = method_label(method or p.get("method", "?"), dept)
    if dept and math.isfinite(lw):
        text += f" λ{lw:.2f}"
    return text + (f" lr{lr:.1e}" if math.isfinite(lr) else "")
