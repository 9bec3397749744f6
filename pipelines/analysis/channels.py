"""``dept-pipeline analyze channels``: the paper's Figure 3 from an MLflow experiment (docs/channels.md).

Per dataset it compares three feature spaces on the cached test features (base-class images with the base classes'
texts, new with new): CLIP zero-shot (the dataset's zero-shot run: its template through the frozen text tower),
each method's plain run and the same method with DePT. For a trained variant the runs are those of the configuration
the report shows (the one winner rule of :mod:`pipelines.selection`, validation only), every seed; each seed's
learned state is downloaded from its run, rebuilt on the frozen text tower, and its prompts' class texts (the ITM
head's, the space shared by base and new classes) are scored by :func:`dept.channels.channel_importance`; the
figure and the numbers average over the seeds.

:func:`plan_channels` reads only MLflow metadata and the store's manifest, and answers every missing piece (runs,
zero-shot, the plain method, learned state, the store) in one line before :func:`analyse` loads torch.
"""
from __future__ import annotations

import json
import logging
import os
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from dept.protocols import BASE_TO_NEW
from pipelines.figures import WIDTH_IN, _pyplot, save_figures
from pipelines.report.table import (
    BASE_TO_NEW_TEST_KEYS,
    ReportError,
    RunInfo,
    one_per_config_and_seed,
    protocol_runs,
    rank_cell,
    run_info,
)
from pipelines.secrets import mask_uri
from pipelines.selection import PAPER_METHOD_NAMES, method_label, winner
from pipelines.store import read_manifest
from pipelines.trial.context import TrialContext, make_context
from pipelines.vocabulary import PARENT_TAG, ROLE_PARENT, ROLE_TAG, STATE_ARTIFACTS, STATE_NAMES, STATE_TAG

log = logging.getLogger(__name__)

FIGURE = "channel_importance.png"
NUMBERS = "channel_importance.json"
PLOTS_ARTIFACTS = "plots"  # the parent run's folder of figures (pipelines.figures)
ZERO_SHOT_LABEL = "CLIP zero-shot"


class AnalysisError(ValueError):
    """The analysis cannot run on this experiment (something it compares is missing); one line."""


@dataclass(frozen=True)
class Variant:
    """One feature space of the figure: zero-shot (one run), or a method with or without DePT (its winning
    configuration's runs, one per seed)."""

    label: str  # "CLIP zero-shot", "CoOp", "CoOp+DePT"
    method: str
    dept: bool
    run_ids: tuple[str, ...]
    seeds: tuple[str, ...] = ()
    template: str = ""  # zero-shot's class-text template


@dataclass(frozen=True)
class DatasetPlan:
    """What :func:`analyse` computes for one dataset, all checked."""

    dataset: str
    context: TrialContext  # the feature store (checked) and the model whose text tower is loaded
    parent_run_id: str | None  # where the figure is logged (None: the runs have no parent, e.g. ``train`` runs)
    zero_shot: Variant
    pairs: tuple[tuple[Variant, Variant], ...]  # (plain, with DePT) per method
    skipped: tuple[str, ...] = ()  # methods left out, and why


@dataclass
class DatasetAnalysis:
    plan: DatasetPlan
    window: int
    results: dict[str, list] = field(default_factory=dict)  # variant label -> one ChannelImportance per seed

    def summary(self, label: str) -> dict[str, float]:
        """The seeds' mean of each summary number of ``label``'s variant."""
        per_seed = [ci.summary() for ci in self.results[label]]
        return {k: statistics.fmean(s[k] for s in per_seed) for k in per_seed[0]}

    def variants(self) -> list[Variant]:
        return [self.plan.zero_shot] + [v for pair in self.plan.pairs for v in pair]


# -- the checks: MLflow metadata and the store's manifest only ----------------------------------------------------
def plan_channels(uri: str, experiment: str, *, dataset: str | None = None, features: str | None = None,
                  window: int = 64) -> list[DatasetPlan]:
    """Per dataset of ``experiment`` (or only ``dataset``): the runs compared, after every check (``window``: no
    wider than the features)."""
    try:
        runs = protocol_runs(uri, experiment, BASE_TO_NEW)
    except ReportError as e:
        raise AnalysisError(str(e)) from None
    by_id = {r.info.run_id: r for r in runs}
    infos = one_per_config_and_seed([i for i in (run_info(r, BASE_TO_NEW_TEST_KEYS) for r in runs) if i is not None])
    where = f"MLflow experiment {experiment!r} at {mask_uri(uri)}"
    datasets = sorted({i.dataset for i in infos})
    if not datasets:
        raise AnalysisError(f"{where} has no finished base-to-new runs to analyse")
    if dataset is not None:
        if dataset not in datasets:
            raise AnalysisError(f"{where} has no base-to-new runs of dataset {dataset!r} (its datasets: "
                                f"{', '.join(datasets)})")
        datasets = [dataset]
    return [_plan_dataset(name, [i for i in infos if i.dataset == name], by_id, where, experiment, features, window)
            for name in datasets]


def _plan_dataset(dataset: str, infos: list[RunInfo], by_id: dict, where: str, experiment: str,
                  features: str | None, window: int) -> DatasetPlan:
    zero_shots = [i for i in infos if i.zero_shot]
    if not zero_shots:
        raise AnalysisError(f"{where} has no CLIP zero-shot run of {dataset} to compare against "
                            f"(`dept-pipeline zero-shot --dataset {dataset} --experiment {experiment}` logs one)")
    zs_info = max(zero_shots, key=lambda i: i.start_time)
    zs_run = by_id[zs_info.run_id]
    zero_shot = Variant(ZERO_SHOT_LABEL, "clip", False, (zs_info.run_id,),
                        template=zs_run.data.tags.get("template") or zs_run.data.params.get("template", ""))

    cells: dict[tuple[str, bool], list[RunInfo]] = {}
    for i in infos:
        if not i.zero_shot:
            cells.setdefault((i.method, _applies_dept(i)), []).append(i)
    winners: dict[tuple[str, bool], Variant] = {}
    for (method, dept), cell in cells.items():
        metric, ranked = rank_cell(cell)
        won = winner(ranked, metric)
        if won is not None:
            done = won.completed()
            winners[(method, dept)] = Variant(method_label(method, dept), method, dept,
                                              tuple(r.source.run_id for r in done), tuple(r.seed for r in done))
    plain = sorted(m for m, d in winners if not d)
    with_dept = sorted(m for m, d in winners if d)
    if not plain:
        raise AnalysisError(f"{where} has no completed plain-method runs of {dataset} (without DePT, or at loss "
                            f"weight 0) to compare against; methods with DePT there: {', '.join(with_dept) or 'none'}")
    if not with_dept:
        raise AnalysisError(f"{where} has no completed runs with DePT of {dataset}; plain methods there: "
                            f"{', '.join(plain)}")
    order = list(PAPER_METHOD_NAMES)
    both = sorted((m for m in with_dept if m in plain), key=lambda m: (order.index(m) if m in order else len(order), m))
    if not both:
        raise AnalysisError(f"{where}: no method of {dataset} has completed runs both without and with DePT "
                            f"(plain: {', '.join(plain)}; with DePT: {', '.join(with_dept)})")
    skipped = tuple(f"{m}: {'no plain-method runs' if m not in plain else 'no runs with DePT'}"
                    for m in sorted(set(plain) ^ set(with_dept)))
    pairs = tuple((winners[(m, False)], winners[(m, True)]) for m in both)
    for variant in (v for pair in pairs for v in pair):
        for run_id in variant.run_ids:
            run = by_id[run_id]
            if run.data.tags.get(STATE_TAG) != "logged":
                raise AnalysisError(
                    f"MLflow run {run_id} ({run.info.run_name}; {variant.label} of {dataset}, seed "
                    f"{run.data.tags.get('seed', '?')}) has no {STATE_ARTIFACTS}/ artifacts to analyse: only "
                    "completed trials and train runs keep what they learned")

    first = by_id[pairs[0][1].run_ids[0]]
    recorded = first.data.tags.get("features_url", "")
    chosen = features or recorded
    if not chosen:
        raise AnalysisError(f"run {first.info.run_id} of {dataset} records no feature store (tag features_url); "
                            "give --features")
    try:
        context = make_context(chosen, dataset, shots=[None], seeds=[], who="analyze channels")
    except FileNotFoundError as e:
        hint = "" if features else " (the store the runs recorded; give --features if it moved)"
        raise AnalysisError(f"{e}{hint}") from None
    fingerprints = {by_id[r].data.tags.get("feature_fingerprint") for v in (zero_shot, *(x for p in pairs for x in p))
                    for r in v.run_ids} - {None}
    if fingerprints and fingerprints != {context.fingerprint}:
        raise AnalysisError(f"the feature store {context.features_url} ({dataset}) has fingerprint "
                            f"{context.fingerprint[:16]}, the runs were made on {', '.join(sorted(f[:16] for f in fingerprints))}")
    width = read_manifest(context.features_url, dataset).feature_dim
    if window > width:
        raise AnalysisError(f"--window {window} is wider than the features of {dataset} ({width} channels)")
    parent = first.data.tags.get(PARENT_TAG)
    if parent is not None and (parent not in by_id or by_id[parent].data.tags.get(ROLE_TAG) != ROLE_PARENT):
        parent = None
    return DatasetPlan(dataset, context, parent, zero_shot, pairs, skipped)


def _applies_dept(info: RunInfo) -> bool:
    """Whether the run trained a CAT head: DePT at loss weight 0 is the plain method (``dept_effective``)."""
    applied = dict(info.config).get("dept_effective")
    return info.dept if applied is None else applied == "true"


# -- the computation ---------------------------------------------------------------------------------------------
def analyse(plan: DatasetPlan, uri: str, *, window: int, device: str = "cpu") -> DatasetAnalysis:
    """Channel importance of every variant of ``plan`` (each seed) on the dataset's test features."""
    # torch here: plan_channels answers before it loads.
    from mlflow import MlflowClient

    from dept.channels import base_new_channel_importance, learner_text_features
    from dept.state import load_state
    from dept.zero_shot import zero_shot_classifier
    from pipelines.store import DatasetStore
    from pipelines.trial.plan import text_tower

    clip = text_tower(plan.context, device=device, keep=False)
    store = DatasetStore.open(plan.context.features_url, plan.dataset, expected_identity=clip.identity)
    base, new = store.features("test", classes="base"), store.features("test", classes="new")
    out = DatasetAnalysis(plan, window)

    def importance(base_text, new_text):
        return base_new_channel_importance(base.features, base.labels, base_text, new.features, new.labels, new_text,
                                           window=window)

    zs = plan.zero_shot
    out.results[zs.label] = [importance(zero_shot_classifier(clip, base.classnames, zs.template).text_features.cpu(),
                                        zero_shot_classifier(clip, new.classnames, zs.template).text_features.cpu())]
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # the command's own lines say what ran
    client = MlflowClient(tracking_uri=uri)
    for variant in (v for pair in plan.pairs for v in pair):
        per_seed = []
        for run_id in variant.run_ids:
            with tempfile.TemporaryDirectory(prefix="dept-channels-") as tmp:
                path = client.download_artifacts(run_id, f"{STATE_ARTIFACTS}/{STATE_NAMES[0]}", tmp)
                learner = load_state(path, clip)
            if list(learner.base_classnames) != list(base.classnames):
                raise AnalysisError(f"run {run_id} was trained on other base classes than the store's {plan.dataset}")
            per_seed.append(importance(learner_text_features(learner, base.classnames, base.features),
                                       learner_text_features(learner, new.classnames, new.features)))
        out.results[variant.label] = per_seed
        log.info("%s %s: %s", plan.dataset, variant.label, out.summary(variant.label))
    return out


def numbers(analysis: DatasetAnalysis) -> dict:
    """The figure's numbers (channel_importance.json): per variant its runs, summary and per-seed CI curves."""
    return {
        "dataset": analysis.plan.dataset, "window": analysis.window, "split": "test",
        "variants": {v.label: {"method": v.method, "dept": v.dept, "run_ids": list(v.run_ids), "seeds": list(v.seeds),
                               "summary": analysis.summary(v.label),
                               "ci_base": [ci.base.tolist() for ci in analysis.results[v.label]],
                               "ci_new": [ci.new.tolist() for ci in analysis.results[v.label]]}
                     for v in analysis.variants()},
    }


def write_outputs(analysis: DatasetAnalysis, folder: Path) -> list[Path]:
    """The figure and its numbers, written to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = save_figures({FIGURE: channel_figure(analysis)}, folder)
    numbers_path = folder / NUMBERS
    numbers_path.write_text(json.dumps(numbers(analysis), indent=1) + "\n")
    return [*paths, numbers_path]


def log_to_parent(analysis: DatasetAnalysis, uri: str) -> list[Path] | None:
    """The figure and its numbers as the parent run's ``plots/`` artifacts; None without a parent."""
    if analysis.plan.parent_run_id is None:
        return None
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    with tempfile.TemporaryDirectory(prefix="dept-channels-") as tmp:
        paths = write_outputs(analysis, Path(tmp))
        for path in paths:
            client.log_artifact(analysis.plan.parent_run_id, str(path), artifact_path=PLOTS_ARTIFACTS)
    return [Path(PLOTS_ARTIFACTS) / p.name for p in paths]


# -- the figure -----------------------------------------------------------------------------------------------------
def channel_figure(analysis: DatasetAnalysis):
    """Per method a row: CI of every window (sorted by its base CI; base and new, mean over seeds) for zero-shot,
    the plain method and the method with DePT, then the distribution of CI-base : CI-new over the windows."""
    import torch  # the module stays torch-free for plan_channels

    plt = _pyplot()
    plan = analysis.plan
    rows = len(plan.pairs)
    fig, axes = plt.subplots(rows, 4, figsize=(WIDTH_IN, 2.5 * rows + 1.1), layout="constrained", squeeze=False,
                             gridspec_kw={"width_ratios": [1, 1, 1, 1.3]})
    colours = {ZERO_SHOT_LABEL: "0.35"}
    for row, (plain, with_dept) in enumerate(plan.pairs):
        colours.update({plain.label: "tab:orange", with_dept.label: "tab:green"})
        variants = (plan.zero_shot, plain, with_dept)
        curves = {v.label: (torch.stack([ci.base for ci in analysis.results[v.label]]).mean(0),
                            torch.stack([ci.new for ci in analysis.results[v.label]]).mean(0)) for v in variants}
        lo = min(float(torch.cat(c).min()) for c in curves.values())
        hi = max(float(torch.cat(c).max()) for c in curves.values())
        pad = 0.05 * (hi - lo or 1.0)
        for col, v in enumerate(variants):
            ax = axes[row][col]
            base, new = curves[v.label]
            order = torch.argsort(base)
            xs = range(1, len(base) + 1)
            dots = (ax.scatter(xs, base[order], s=3, color="tab:blue", label="base classes"),
                    ax.scatter(xs, new[order], s=3, color="tab:orange", label="new classes"))
            seeds = len(analysis.results[v.label])
            ax.set_title(v.label + (f" ({seeds} seeds)" if seeds > 1 else ""), fontsize=9)
            ax.set_ylim(lo - pad, hi + pad)
            ax.set_xticks([1, len(base)])
            if col:
                ax.tick_params(labelleft=False)
            ax.grid(alpha=0.3)
        axes[row][0].set_ylabel("channel importance")
        ax = axes[row][3]
        for v in variants:
            ratios = torch.cat([ci.ratio for ci in analysis.results[v.label]])
            ratios = ratios[torch.isfinite(ratios)].numpy()  # windows where CI-new is 0 have no ratio
            if not len(ratios):
                continue
            s = analysis.summary(v.label)
            ax.hist(ratios, bins=30, density=True, histtype="step", linewidth=1.5, color=colours[v.label],
                    label=f"{v.label} (mean {s['ratio_mean']:.3f})")
        ax.set_xlabel("CI-base : CI-new", fontsize=9)
        ax.set_ylabel("density", fontsize=9)
        ax.legend(fontsize=6.5, loc="best", framealpha=0.8)
        ax.grid(alpha=0.3)
    for ax in axes[-1][:3]:
        ax.set_xlabel("window, by base CI", fontsize=8)
    fig.suptitle(f"{plan.dataset}: channel importance (CI) of base and new classes, test images, cyclic windows of "
                 f"{analysis.window} channels\nin each model's shared image-text space (DePT's CAT head left out); "
                 "mean over seeds", fontsize=10)
    fig.legend(handles=list(dots), loc="outside lower center", ncol=2, fontsize=8, frameon=False, markerscale=3)
    return fig
