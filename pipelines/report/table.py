"""The paper-style base-to-new table, read back from MLflow, beside the published numbers.

Per (dataset, method, DePT on/off) the report takes the configuration a researcher would have picked without
peeking at test images — the one with the best mean *selection* metric over its seeds (``val_hm`` by default; the
metric each run was tuned on is in its ``selection_metric`` tag) — and shows its test base and new accuracy as mean
± std over seeds, and HM of those means (METHOD.md: per dataset, mean of seeds for base and new, then HM). The
average row averages base and new over the datasets shown and takes the HM of those averages (not the mean of the
per-dataset HMs).

Published numbers (``pipelines/data/paper_results.csv``, ViT-B/16, 16 shots, seeds 1-3) sit beside ours for the
11 base-to-new datasets. The paper column of our average row is recomputed the same way from the paper's
per-dataset rows of the datasets shown, so the two are comparable; the row the paper *printed* (over all 11) is
given in a note, because for CoOp and CoCoOp it does not equal the mean of the paper's own per-dataset rows.

The table opens, as the paper's do, with CLIP's zero-shot row per dataset (the runs of role ``zero-shot`` that
``tune`` logs under each parent and ``dept-pipeline zero-shot`` logs on its own; nothing is selected: the newest per
dataset), beside the paper's CLIP numbers (``method`` CLIP, ``variant`` zero-shot in the CSV: ViT-B/16 with
hand-crafted prompts, from CoCoOp's Table 1 (Zhou et al., CVPR 2022), the row DePT's comparisons start from).
"""
from __future__ import annotations

import csv
import io
import logging
import math
import statistics
from dataclasses import dataclass, field
from importlib import resources
from typing import Iterable

from pipelines.metrics import harmonic_mean
from pipelines.secrets import mask_uri
from pipelines.tracking.client import ROLE_TRAIN, ROLE_TRIAL, ROLE_ZERO_SHOT, STATUS_TAG

log = logging.getLogger(__name__)

#: Method ids (``--method``) -> the names the paper's table uses.
PAPER_METHOD_NAMES = {"coop": "CoOp", "cocoop": "CoCoOp", "kgcoop": "KgCoOp"}
#: The 11 base-to-new datasets in the paper's table order.
PAPER_DATASETS = ("ImageNet", "Caltech101", "OxfordPets", "StanfordCars", "Flowers102", "Food101", "FGVCAircraft",
                  "SUN397", "DTD", "EuroSAT", "UCF101")
#: Zero-shot CLIP: the ``method`` tag of its runs (pipelines.zero_shot), its name in the table, and its key in
#: paper_results.csv (method, variant).
ZERO_SHOT_METHOD = "clip"
ZERO_SHOT_LABEL = "CLIP (zero-shot)"
PAPER_ZERO_SHOT = ("CLIP", "zero-shot")


def method_label(method: str, dept: bool) -> str:
    """A method as the paper's table names it: "CoOp", "CoOp+DePT"."""
    name = PAPER_METHOD_NAMES.get(method, method)
    return f"{name}+DePT" if dept else name


class ReportError(ValueError):
    """The report cannot be made (no such experiment, no finished runs); one line."""


@dataclass(frozen=True)
class PaperRow:
    base: float
    new: float
    hm: float


def load_paper_results() -> dict[tuple[str, str, str], PaperRow]:
    """(dataset, method, variant) -> published base / new / HM; variant is ``baseline``, ``dept``, or
    ``zero-shot`` (method CLIP)."""
    text = resources.files("pipelines").joinpath("data/paper_results.csv").read_text()
    out = {}
    for row in csv.DictReader(io.StringIO(text)):
        out[(row["dataset"], row["method"], row["variant"])] = PaperRow(
            float(row["base"]), float(row["new"]), float(row["hm"])
        )
    return out


@dataclass
class RunInfo:
    """One finished trial (or ``train``) run, as the report needs it."""

    run_id: str
    dataset: str
    method: str
    dept: bool
    seed: str
    config: tuple  # params without the seed
    selection_metric: str
    selection_mode: str
    metrics: dict
    completed: bool = True  # False: stopped early by the scheduler (no test metrics)
    zero_shot: bool = False  # CLIP zero-shot (no training, no seed): shown as is, nothing selected
    start_time: int = 0  # ms; the newest zero-shot run of a dataset is shown


@dataclass
class Row:
    dataset: str
    method: str
    dept: bool
    seeds: int
    base: float
    base_std: float
    new: float
    new_std: float
    hm: float
    selection_metric: str = ""
    selection_value: float = float("nan")
    configs_compared: int = 1
    paper: PaperRow | None = None
    zero_shot: bool = False
    vs_zero_shot: float = float("nan")  # HM minus CLIP zero-shot's HM on the same dataset(s), when logged

    @property
    def label(self) -> str:
        return ZERO_SHOT_LABEL if self.zero_shot else method_label(self.method, self.dept)


@dataclass
class Block:
    """One method variant: a row per dataset, then the average row."""

    method: str
    dept: bool
    rows: list[Row] = field(default_factory=list)
    zero_shot: bool = False
    average: Row | None = None
    paper_average: PaperRow | None = None  # recomputed over the same datasets as ours
    paper_printed: PaperRow | None = None  # the paper's printed average row (11 datasets)
    paper_recomputed_all: PaperRow | None = None  # the mean of the paper's 11 per-dataset rows


def _dataset_order(name: str) -> tuple:
    return (PAPER_DATASETS.index(name), "") if name in PAPER_DATASETS else (len(PAPER_DATASETS), name)


def collect_runs(uri: str, experiment: str) -> list[RunInfo]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = [e.name for e in client.search_experiments(max_results=50)]
        raise ReportError(f"no MLflow experiment {experiment!r} at {mask_uri(uri)} "
                          f"(there: {', '.join(names) or 'none'})")
    runs, token = [], None
    while True:
        page = client.search_runs([exp.experiment_id], max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    out = []
    for run in runs:
        tags, params = run.data.tags, run.data.params
        if tags.get("role") == ROLE_ZERO_SHOT:
            if run.info.status == "FINISHED" and all(k in run.data.metrics for k in ("test_base_acc", "test_new_acc")):
                out.append(RunInfo(
                    run_id=run.info.run_id, dataset=tags.get("dataset", "?"), method=ZERO_SHOT_METHOD, dept=False,
                    seed="", config=(), selection_metric="", selection_mode="max", metrics=dict(run.data.metrics),
                    zero_shot=True, start_time=run.info.start_time or 0,
                ))
            continue
        if tags.get("role") not in (ROLE_TRIAL, ROLE_TRAIN) or tags.get(STATUS_TAG) not in ("completed",
                                                                                             "stopped_early"):
            continue
        completed = tags.get(STATUS_TAG) == "completed"
        if completed and not all(k in run.data.metrics for k in ("test_base_acc", "test_new_acc")):
            continue
        config = tuple(sorted((k, v) for k, v in params.items() if k != "seed"))
        out.append(RunInfo(
            run_id=run.info.run_id,
            dataset=tags.get("dataset", "?"),
            method=tags.get("method", params.get("method", "?")),
            dept=tags.get("dept", params.get("dept", "true")) == "true",
            seed=tags.get("seed", params.get("seed", "?")),
            config=config,
            selection_metric=tags.get("selection_metric", "val_hm"),
            selection_mode=tags.get("selection_mode", "max"),
            metrics=dict(run.data.metrics),
            completed=completed,
            start_time=run.info.start_time or 0,
        ))
    return _latest_per_config_and_seed(out)


def _latest_per_config_and_seed(runs: list[RunInfo]) -> list[RunInfo]:
    """One run per (dataset, method, configuration, seed): the newest. Two tune runs of one configuration (an
    experiment tuned twice) would otherwise count a seed twice in the mean and the seed count."""
    latest: dict[tuple, RunInfo] = {}
    others = []
    for r in runs:
        if r.zero_shot:
            others.append(r)
            continue
        key = (r.dataset, r.method, r.dept, r.config, r.seed)
        if key not in latest or r.start_time > latest[key].start_time:
            latest[key] = r
    return others + list(latest.values())


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _zero_shot_block(runs: list[RunInfo], paper: dict) -> Block | None:
    """CLIP zero-shot: per dataset its newest run (every run of the same features gives the same numbers)."""
    newest: dict[str, RunInfo] = {}
    for r in runs:
        if r.dataset not in newest or r.start_time > newest[r.dataset].start_time:
            newest[r.dataset] = r
    if not newest:
        return None
    block = Block(ZERO_SHOT_METHOD, False, zero_shot=True)
    for dataset, r in newest.items():
        base, new = r.metrics["test_base_acc"], r.metrics["test_new_acc"]
        block.rows.append(Row(dataset, ZERO_SHOT_METHOD, False, 0, base, float("nan"), new, float("nan"),
                              harmonic_mean(base, new), paper=paper.get((dataset, *PAPER_ZERO_SHOT)), zero_shot=True))
    return block


def _paper_key(block: Block) -> tuple[str, str]:
    """(method, variant) of a block in paper_results.csv."""
    if block.zero_shot:
        return PAPER_ZERO_SHOT
    return PAPER_METHOD_NAMES.get(block.method, block.method), "dept" if block.dept else "baseline"


def build_report(runs: Iterable[RunInfo], paper: dict | None = None) -> list[Block]:
    paper = load_paper_results() if paper is None else paper
    runs = list(runs)
    by_cell: dict[tuple[str, str, bool], dict[tuple, list[RunInfo]]] = {}
    for r in runs:
        if not r.zero_shot:
            by_cell.setdefault((r.dataset, r.method, r.dept), {}).setdefault(r.config, []).append(r)

    blocks: dict[tuple[str, bool], Block] = {}
    for (dataset, method, dept), configs in by_cell.items():
        def score(group: list[RunInfo]) -> float:
            metric = group[0].selection_metric
            vals = [g.metrics[metric] for g in group if metric in g.metrics]
            return statistics.fmean(vals) if vals else float("nan")

        mode = next(iter(configs.values()))[0].selection_mode
        sign = 1.0 if mode == "max" else -1.0
        # As for the tune summary: configurations with every seed finished compete first; means use finished runs.
        finished = {k: [r for r in g if r.completed] for k, g in configs.items()}
        complete = [finished[k] for k, g in configs.items() if finished[k] and len(finished[k]) == len(g)]
        candidates = [(score(g), g) for g in (complete or [g for g in finished.values() if g])]
        if not candidates:
            continue
        ranked = [c for c in candidates if not math.isnan(c[0])] or candidates
        value, group = max(ranked, key=lambda c: sign * c[0] if not math.isnan(c[0]) else -math.inf)
        base, base_std = _mean_std([g.metrics["test_base_acc"] for g in group])
        new, new_std = _mean_std([g.metrics["test_new_acc"] for g in group])
        variant = "dept" if dept else "baseline"
        row = Row(dataset, method, dept, len({g.seed for g in group}), base, base_std, new, new_std,
                  harmonic_mean(base, new), group[0].selection_metric, value, len(configs),
                  paper.get((dataset, PAPER_METHOD_NAMES.get(method, method), variant)))
        blocks.setdefault((method, dept), Block(method, dept)).rows.append(row)

    method_order = list(PAPER_METHOD_NAMES)
    ordered = sorted(blocks.values(), key=lambda b: (
        method_order.index(b.method) if b.method in method_order else len(method_order), b.method, b.dept))
    zero_shot = _zero_shot_block([r for r in runs if r.zero_shot], paper)
    if zero_shot is not None:
        ordered.insert(0, zero_shot)  # the paper's tables open with it
    for block in ordered:
        block.rows.sort(key=lambda r: _dataset_order(r.dataset))
        base = statistics.fmean(r.base for r in block.rows)
        new = statistics.fmean(r.new for r in block.rows)
        block.average = Row("Average", block.method, block.dept, min(r.seeds for r in block.rows), base,
                            float("nan"), new, float("nan"), harmonic_mean(base, new), zero_shot=block.zero_shot)
        name, variant = _paper_key(block)
        ours_in_paper = [r.paper for r in block.rows if r.paper is not None]
        if ours_in_paper and len(ours_in_paper) == len(block.rows):
            pb = statistics.fmean(p.base for p in ours_in_paper)
            pn = statistics.fmean(p.new for p in ours_in_paper)
            block.paper_average = PaperRow(pb, pn, harmonic_mean(pb, pn))
        block.paper_printed = paper.get(("Average", name, variant))
        all_rows = [paper.get((d, name, variant)) for d in PAPER_DATASETS]
        if all(all_rows):
            pb = statistics.fmean(p.base for p in all_rows)
            pn = statistics.fmean(p.new for p in all_rows)
            block.paper_recomputed_all = PaperRow(pb, pn, harmonic_mean(pb, pn))
    if zero_shot is not None:
        zs = {r.dataset: r.hm for r in zero_shot.rows}
        for block in ordered[1:]:
            for r in block.rows:
                r.vs_zero_shot = r.hm - zs[r.dataset] if r.dataset in zs else float("nan")
            if {r.dataset for r in block.rows} == set(zs):  # averages over the same datasets only
                block.average.vs_zero_shot = block.average.hm - zero_shot.average.hm
    return ordered


def _f(x: float | None, std: float | None = None) -> str:
    if x is None or math.isnan(x):
        return "—"
    if std is None or math.isnan(std):
        return f"{x:.2f}"
    return f"{x:.2f} ± {std:.2f}"


def format_markdown(blocks: list[Block], *, experiment: str = "") -> str:
    lines = []
    if experiment:
        lines.append(f"Base-to-new results of MLflow experiment `{experiment}` (test accuracy, %; mean ± std over "
                     "seeds; HM of the means). Per cell, the configuration with the best mean selection metric "
                     "(validation only) is shown.")
        lines.append("")
    has_zero_shot = any(b.zero_shot for b in blocks)
    # Beside each HM, how far it is from zero-shot's on the same data: where tuning helps, where it hurts.
    vs = " HM vs zero-shot |" if has_zero_shot else ""

    def delta(r: Row) -> str:
        if not has_zero_shot:
            return ""
        return " |" if r.zero_shot else f" {'—' if math.isnan(r.vs_zero_shot) else f'{r.vs_zero_shot:+.2f}'} |"

    lines.append(f"| Dataset | Method | Seeds | Base | New | HM |{vs} Paper base | Paper new | Paper HM |")
    lines.append(f"| --- | --- | ---: | ---: | ---: | ---: |{' ---: |' if has_zero_shot else ''} ---: | ---: | ---: |")
    notes = []
    for block in blocks:
        for r in block.rows:
            p = r.paper
            seeds = "—" if r.zero_shot else r.seeds
            lines.append(f"| {r.dataset} | {r.label} | {seeds} | {_f(r.base, r.base_std)} | {_f(r.new, r.new_std)} "
                         f"| {_f(r.hm)} |{delta(r)} {_f(p.base if p else None)} | {_f(p.new if p else None)} "
                         f"| {_f(p.hm if p else None)} |")
        a, pa = block.average, block.paper_average
        n = len(block.rows)
        lines.append(f"| **Average** ({n} dataset{'' if n == 1 else 's'}) | {a.label} | | {_f(a.base)} | {_f(a.new)} "
                     f"| **{_f(a.hm)}** |{delta(a)} {_f(pa.base if pa else None)} | {_f(pa.new if pa else None)} "
                     f"| {_f(pa.hm if pa else None)} |")
        if block.paper_printed is not None:
            pp, pr = block.paper_printed, block.paper_recomputed_all
            note = (f"{a.label}: the paper printed the 11-dataset average {pp.base:.2f} / {pp.new:.2f} / {pp.hm:.2f}")
            if pr is not None and (abs(pr.base - pp.base) >= 0.05 or abs(pr.new - pp.new) >= 0.05):
                note += (f"; the mean of its own per-dataset rows is {pr.base:.2f} / {pr.new:.2f} / {pr.hm:.2f} "
                         "(the printed row does not match it)")
            notes.append(note + ".")
    lines.append("")
    lines.append("Average rows: base and new averaged over the datasets shown, HM of those averages. The paper "
                 "column of an average row is recomputed the same way from the paper's rows of the same datasets "
                 "(blank when a dataset is not one of the paper's 11).")
    if has_zero_shot:
        lines.append(f"{ZERO_SHOT_LABEL}: the frozen model with the dataset's hand-crafted prompt, nothing trained "
                     "(no seeds; every test image); HM vs zero-shot: a row's HM minus zero-shot's on the same "
                     "dataset(s).")
    lines.extend(f"- {n}" for n in notes)
    return "\n".join(lines) + "\n"


CSV_COLUMNS = ("dataset", "method", "dept", "seeds", "base", "base_std", "new", "new_std", "hm",
               "selection_metric", "selection_value", "configs_compared", "hm_vs_zero_shot", "paper_base", "paper_new",
               "paper_hm", "note")


def format_csv(blocks: list[Block]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()

    def num(x):
        return "" if x is None or (isinstance(x, float) and math.isnan(x)) else round(x, 4)

    for block in blocks:
        for r in list(block.rows) + [block.average]:
            p = r.paper if r is not block.average else block.paper_average
            if r is block.average:
                note = "HM of averaged base and new; paper recomputed over the same datasets"
            else:
                note = "CLIP zero-shot: nothing trained, no seeds" if block.zero_shot else ""
            writer.writerow({
                "dataset": r.dataset, "method": block.method, "dept": str(block.dept).lower(),
                "seeds": "" if block.zero_shot else r.seeds,
                "base": num(r.base), "base_std": num(r.base_std), "new": num(r.new), "new_std": num(r.new_std),
                "hm": num(r.hm), "selection_metric": r.selection_metric, "selection_value": num(r.selection_value),
                "configs_compared": r.configs_compared if r is not block.average and not block.zero_shot else "",
                "hm_vs_zero_shot": num(r.vs_zero_shot),
                "paper_base": num(p.base) if p else "", "paper_new": num(p.new) if p else "",
                "paper_hm": num(p.hm) if p else "", "note": note,
            })
        if block.paper_printed is not None:
            pp = block.paper_printed
            writer.writerow({"dataset": "Average (paper printed, 11 datasets)", "method": block.method,
                             "dept": str(block.dept).lower(), "paper_base": pp.base, "paper_new": pp.new,
                             "paper_hm": pp.hm, "note": "as printed in the paper"})
    return buf.getvalue()


def make_report(uri: str, experiment: str, fmt: str = "md") -> str:
    runs = collect_runs(uri, experiment)
    if not runs:
        raise ReportError(f"MLflow experiment {experiment!r} at {mask_uri(uri)} has no finished runs with test "
                          "metrics yet")
    blocks = build_report(runs)
    return format_markdown(blocks, experiment=experiment) if fmt == "md" else format_csv(blocks)
