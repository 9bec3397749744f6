"""The figures of one dataset's trials, logged to its parent run (``plots/``) and saved by ``report --plots``:

- ``base_new_hm_vs_loss_weight.png``: test base / new / HM against DePT's loss weight, one curve per method (per
  loss weight the configuration best on validation, mean over its seeds, bars: std) that starts at loss weight 0
  from the plain method, also drawn as a level line (band: std); a run at loss weight 0 *is* the plain method;
- ``fusion_weight_sweep.png``: the winner's test base / new / HM and selection HM re-scored at every fusion weight
  after training (x = fusion weight); when the winner is a plain method (no CAT head, nothing to fuse), the best
  configuration with DePT, and the title says so;
- ``base_vs_new.png``: test base against new of every completed trial, iso-HM lines, CLIP zero-shot as a star.

Points come from the tune driver's trial records (:func:`parent_figures`) or from MLflow runs
(:func:`report_figures`); both become :class:`TrialPoint`. 800 px wide: the MLflow UI's artifact preview shows
them unscaled. Imports of ``pipelines`` are made at call time: ``tracking`` and ``report`` both use this module.
"""
from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.metrics import is_number
from pipelines.selection import SeedRun, config_key, method_label, one_per_seed, rank, winner
from pipelines.vocabulary import (
    COMPLETED,
    ROLE_TAG,
    ROLE_ZERO_SHOT,
    TEST_BASE_ACC,
    TEST_HM,
    TEST_NEW_ACC,
)

WIDTH_IN, DPI = 8.0, 100  # 800 px
TEST_KEYS = (TEST_BASE_ACC, TEST_NEW_ACC, TEST_HM, "test_acc", "test_target_avg")  # base-to-new; transfer
_SWEEP_METRIC = re.compile(r"^(?P<curve>.+)_sweep/fw(?P<weight>\d+(?:\.\d+)?)$")  # pipelines.vocabulary.sweep_key
_COLOURS = {"coop": "tab:blue", "cocoop": "tab:orange", "kgcoop": "tab:green"}


@dataclass(frozen=True)
class TrialPoint:
    """One trial as the figures need it."""

    method: str
    dept: bool
    config: tuple  # hyperparameters without the seed: a trial's configuration
    seed: str
    loss_weight: float
    fusion_weight: float
    completed: bool
    selection: float  # the selection metric (validation only)
    start_time: int = 0  # ms; of duplicate runs of one configuration and seed the newest counts
    test: dict = field(default_factory=dict)  # test_base_acc / test_new_acc / test_hm
    sweep: dict = field(default_factory=dict)  # curve ("test_hm", "val_hm", ...) -> {fusion weight: value}


def points_from_records(records, metric: str) -> list[TrialPoint]:
    """From the tune driver's ``TrialRecord``s."""
    out = []
    for r in records:
        res = r.result
        weights = res.get("sweep_fusion_weights") or []
        sweep = {k.removeprefix("sweep_"): dict(zip(weights, v)) for k, v in res.items()
                 if k.startswith("sweep_") and k != "sweep_fusion_weights" and v}
        applied = r.hp.applied_dept()  # DePT at loss weight 0 is the plain method: drawn and named as it
        out.append(TrialPoint(r.hp.method, bool(applied["dept_effective"]), config_key(r.hp), str(r.hp.seed),
                              float(applied["loss_weight_effective"]), float(r.hp.fusion_weight),
                              r.status == COMPLETED, _num(res.get(metric)), 0,
                              {k: res[k] for k in TEST_KEYS if is_number(res.get(k))}, sweep))
    return out


def points_from_runs(runs) -> list[TrialPoint]:
    """From the report's ``RunInfo``s of one dataset (zero-shot runs left out)."""
    out = []
    for r in runs:
        if r.zero_shot:
            continue
        params = dict(r.config)
        sweep: dict[str, dict[float, float]] = {}
        for key, value in r.metrics.items():
            m = _SWEEP_METRIC.match(key)
            if m:
                sweep.setdefault(m["curve"], {})[float(m["weight"])] = value
        out.append(TrialPoint(r.method, r.dept, r.config, r.seed, _num(params.get("loss_weight")),
                              _num(params.get("fusion_weight")), r.completed, _num(r.metrics.get(r.selection_metric)),
                              r.start_time, {k: r.metrics[k] for k in TEST_KEYS if k in r.metrics}, sweep))
    return out


def parent_figures(tracker, parent_run_id: str, records, best, workdir: Path, *, metric: str, mode: str,
                   dataset: str) -> list[Path]:
    """The parent run's figures (written to ``workdir``); ``best``: the winning ``ConfigSummary`` or None. The
    zero-shot point is the parent's zero-shot child run, when there is one."""
    zero_shot = next((r.data.metrics for r in tracker.children(parent_run_id)
                      if r.data.tags.get(ROLE_TAG) == ROLE_ZERO_SHOT), None)
    best_key = config_key(best.trials[0].hp) if best is not None else None
    figures = make_figures(points_from_records(records, metric), dataset=dataset, mode=mode, best=best_key,
                           zero_shot=zero_shot)
    return save_figures(figures, workdir)


def report_figures(runs, outdir: Path) -> list[Path]:
    """``report --plots DIR``: per dataset of the report's runs, ``DIR/<dataset>/*.png``."""
    written = []
    for dataset in sorted({r.dataset for r in runs}):
        mine = [r for r in runs if r.dataset == dataset]
        trained = [r for r in mine if not r.zero_shot]
        if not trained:
            continue
        zero_shot = max((r for r in mine if r.zero_shot), key=lambda r: r.start_time, default=None)
        figures = make_figures(points_from_runs(trained), dataset=dataset, mode=trained[0].selection_mode,
                               zero_shot=zero_shot.metrics if zero_shot else None)
        folder = outdir / dataset
        folder.mkdir(parents=True, exist_ok=True)
        written.extend(save_figures(figures, folder))
    return written


def make_figures(points: list[TrialPoint], *, dataset: str, mode: str = "max", best: tuple | None = None,
                 zero_shot: dict | None = None) -> dict:
    """File name -> matplotlib Figure (not saved). ``best``: the configuration whose sweep is drawn (default: the
    winner, ``pipelines.selection``)."""
    _pyplot()
    done = [r.source for r in one_per_seed(_seed_runs(points)) if r.source.completed and r.source.test]
    if not done:
        return {}
    if not any(TEST_BASE_ACC in p.test for p in done):  # the transfer protocols: source against targets
        return {"source_vs_targets.png": _scatter_figure(done, dataset, zero_shot, TRANSFER_AXES)}
    figures = {"base_new_hm_vs_loss_weight.png": _loss_weight_figure(points, dataset, mode)}
    best_points = _winning_points([p for p in points if best is None or p.config == best], mode)
    winner_name = _label(best_points[0].method, best_points[0].dept) if best_points else ""
    if best_points and not any(p.sweep for p in best_points):  # a plain method won: no CAT head to fuse
        best_points = _winning_points([p for p in points if p.dept and p.sweep], mode)
    else:
        winner_name = ""
    if any(p.sweep for p in best_points):
        figures["fusion_weight_sweep.png"] = _sweep_figure(best_points, dataset, plain_winner=winner_name)
    figures["base_vs_new.png"] = _scatter_figure(done, dataset, zero_shot)
    return figures


def save_figures(figures: dict, outdir: Path) -> list[Path]:
    plt = _pyplot()
    paths = []
    for name, fig in figures.items():
        path = outdir / name
        fig.savefig(path, dpi=DPI)
        plt.close(fig)
        paths.append(path)
    return paths


# -- the figures ------------------------------------------------------------------------------------------------
def _loss_weight_figure(points, dataset, mode):
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(WIDTH_IN, 4.2), layout="constrained")
    panels = ((TEST_BASE_ACC, "base (fused head)"), (TEST_NEW_ACC, "new (ITM head)"), (TEST_HM, "HM"))
    by_series: dict[tuple[str, bool], list[TrialPoint]] = {}
    for p in points:
        by_series.setdefault((p.method, p.dept), []).append(p)
    lws = sorted({p.loss_weight for p in points if p.dept and not math.isnan(p.loss_weight)}) or [1.0]
    span = (-0.05, max(lws) + 0.05)  # from loss weight 0: the plain method
    plain = {method: _winner(series, mode) for (method, dept), series in by_series.items() if not dept}
    for (method, dept), series in sorted(by_series.items(), key=lambda kv: _series_order(*kv[0])):
        colour, label = _COLOURS.get(method), _label(method, dept)
        if dept:
            xs, stats = [], []
            if plain.get(method) is not None:  # the curve starts from the plain method, at loss weight 0
                xs.append(0.0)
                stats.append(_seed_stats(plain[method]))
            for lw in sorted({p.loss_weight for p in series}):
                won = _winner([p for p in series if p.loss_weight == lw], mode)
                if won is not None:
                    xs.append(lw)
                    stats.append(_seed_stats(won))
            for ax, (key, _) in zip(axes, panels):
                ax.errorbar(xs, [s[key][0] for s in stats], yerr=[s[key][1] for s in stats], color=colour,
                            marker="o", capsize=3, label=label if ax is axes[0] else None)
        else:
            won = _winner(series, mode)
            if won is None:
                continue
            s = _seed_stats(won)
            for ax, (key, _) in zip(axes, panels):
                mean, std = s[key]
                ax.hlines(mean, *span, color=colour, linestyle="--", label=label if ax is axes[0] else None)
                ax.fill_between(span, mean - std, mean + std, color=colour, alpha=0.12, linewidth=0)
    for ax, (_, title) in zip(axes, panels):
        ax.set_title(title, fontsize=11)
        ax.set_xlabel("loss weight λ")
        ax.set_xlim(*span)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    fig.suptitle(f"{dataset}: test accuracy against DePT's loss weight\nper λ the configuration best on validation, "
                 "mean ± std over seeds;\nat λ 0 and dashed: the plain method (band: std)", fontsize=11)
    fig.legend(loc="outside lower center", ncol=3, fontsize=9, frameon=False)
    return fig


def _sweep_figure(best_points, dataset, plain_winner: str = ""):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(WIDTH_IN, 4.5), layout="constrained")
    p0 = best_points[0]
    curves = [(TEST_BASE_ACC, "test base (fused head)", "tab:blue", "-"), (TEST_HM, "test HM", "tab:green", "-")]
    curves += [(c, f"{c.split('_')[0]} HM (selection)", "tab:purple", "--")
               for c in sorted(p0.sweep) if c.endswith("_hm") and not c.startswith("test")]
    for curve, label, colour, style in curves:
        per_seed = [p.sweep[curve] for p in best_points if curve in p.sweep]
        if not per_seed:
            continue
        weights = sorted(set.intersection(*(set(s) for s in per_seed)))
        means = [statistics.fmean(s[w] for s in per_seed) for w in weights]
        ax.plot(weights, means, color=colour, linestyle=style, marker=".", label=label)
        if len(per_seed) > 1:
            stds = [statistics.stdev(s[w] for s in per_seed) for w in weights]
            ax.fill_between(weights, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                            color=colour, alpha=0.15, linewidth=0)
    new = statistics.fmean(p.test[TEST_NEW_ACC] for p in best_points if TEST_NEW_ACC in p.test)
    ax.axhline(new, color="tab:orange", linestyle=":", label="test new (ITM head; no fusion)")
    ax.axvline(p0.fusion_weight, color="0.4", linewidth=1)
    ax.annotate(f"trained at {p0.fusion_weight:.2f}", xy=(p0.fusion_weight, 0.98), xycoords=("data", "axes fraction"),
                xytext=(4, 0), textcoords="offset points", va="top", fontsize=9, color="0.3")
    ax.set_xlim(0, 1)
    ax.set_xlabel("fusion weight a (CAT head's share of the base-class logits)")
    ax.set_ylabel("accuracy (%)")
    seeds = len(best_points)
    which = (f"the best configuration with DePT (the winner, {plain_winner}, has no CAT head)" if plain_winner
             else "the winner")
    ax.set_title(f"{dataset}: fusion-weight sweep of {which}, {_label(p0.method, p0.dept)} "
                 f"λ={p0.loss_weight:.2f}\n(re-scored after training; mean over {seeds} seed{'s' * (seeds != 1)}"
                 f"{', band: std' if seeds > 1 else ''})", fontsize=11)
    ax.grid(alpha=0.3)
    fig.legend(loc="outside lower center", ncol=3, fontsize=9, frameon=False)
    return fig


#: (x metric, y metric, x label, y label) of the scatter figure.
BASE_NEW_AXES = (TEST_BASE_ACC, TEST_NEW_ACC, "test base accuracy (%)", "test new accuracy (%)")
TRANSFER_AXES = ("test_acc", "test_target_avg", "test accuracy on the source (%)", "test accuracy, mean over targets (%)")


def _scatter_figure(done, dataset, zero_shot, axes=BASE_NEW_AXES):
    plt = _pyplot()
    kx, ky, label_x, label_y = axes
    done = [p for p in done if kx in p.test and ky in p.test]
    fig, ax = plt.subplots(figsize=(WIDTH_IN, 5.5), layout="constrained")
    xs = [p.test[kx] for p in done]
    ys = [p.test[ky] for p in done]
    star = bool(zero_shot) and kx in zero_shot and ky in zero_shot
    if star:
        xs.append(zero_shot[kx])
        ys.append(zero_shot[ky])
    lo, hi = max(0.0, min(xs + ys) - 5), min(100.0, max(xs + ys) + 5)
    # Iso-HM lines: a point's HM is read off without a legend lookup.
    for hm in range(10, 100, 10) if axes == BASE_NEW_AXES else ():
        if hm < lo / 2 or hm > hi:
            continue
        b = [x / 10 for x in range(int(10 * max(hm / 2 + 0.1, lo)), int(10 * hi) + 1)]
        pairs = [(x, hm * x / (2 * x - hm)) for x in b if 2 * x - hm > 0]
        pairs = [(x, y) for x, y in pairs if lo <= y <= hi]
        if pairs:
            ax.plot(*zip(*pairs), color="0.8", linewidth=0.8, zorder=0)
            ax.annotate(f"HM {hm}", pairs[-1], fontsize=8, color="0.55", xytext=(-28, 2), textcoords="offset points")
    for (method, dept) in sorted({(p.method, p.dept) for p in done}, key=lambda md: _series_order(*md)):
        mine = [p for p in done if (p.method, p.dept) == (method, dept)]
        colour = _COLOURS.get(method)
        ax.scatter([p.test[kx] for p in mine], [p.test[ky] for p in mine], s=36,
                   marker="o", color=colour if dept else "none", edgecolors=colour, label=_label(method, dept))
    if star:
        ax.scatter([zero_shot[kx]], [zero_shot[ky]], marker="*", s=220, color="black", label="CLIP zero-shot",
                   zorder=3)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel(label_x)
    ax.set_ylabel(label_y)
    what = "base against new" if axes == BASE_NEW_AXES else "source against the targets' mean"
    ax.set_title(f"{dataset}: {what}, every completed trial ({len(done)})\nfilled: with DePT, hollow: without"
                 + ("; grey: iso-HM lines" if axes == BASE_NEW_AXES else ""), fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=9)
    return fig


# -- helpers ----------------------------------------------------------------------------------------------------
def _seed_runs(points):
    return [SeedRun(p.config, p.seed, COMPLETED if p.completed and p.test else "not completed",
                    {"selection": p.selection, **p.test}, p.start_time, p, params=dict(p.config)) for p in points]


def _winner(points, mode: str):
    """The configuration (``selection.ConfigOutcome``) the one winner rule picks among ``points``, or None."""
    return winner(rank(_seed_runs(points), "selection", mode), "selection")


def _winning_points(points, mode: str) -> list[TrialPoint]:
    """The seeds of the configuration the one winner rule picks among ``points`` (none: no complete one)."""
    won = _winner(points, mode)
    return [r.source for r in won.completed()] if won is not None else []


def _seed_stats(outcome) -> dict[str, tuple[float, float]]:
    """key -> (mean, std over seeds) of a ``ConfigOutcome``, as the tables compute them (HM: of the mean base and
    new); a single seed's spread is drawn as 0."""
    def spread(key: str) -> float:
        v = outcome.std(key)
        return 0.0 if math.isnan(v) else v

    return {TEST_BASE_ACC: (outcome.mean(TEST_BASE_ACC), spread(TEST_BASE_ACC)),
            TEST_NEW_ACC: (outcome.mean(TEST_NEW_ACC), spread(TEST_NEW_ACC)),
            TEST_HM: (outcome.test_hm(), spread(TEST_HM))}


def _series_order(method: str, dept: bool) -> tuple:
    return (list(_COLOURS).index(method) if method in _COLOURS else len(_COLOURS), method, dept)


def _label(method: str, dept: bool) -> str:
    return method_label(method, dept)


def _num(v) -> float:
    """A metric or a param (MLflow keeps params as text) as a float; NaN when it is none."""
    try:
        return float(v) if not isinstance(v, bool) and v is not None else float("nan")
    except ValueError:
        return float("nan")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
