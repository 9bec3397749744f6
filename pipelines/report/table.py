"""The paper-style base-to-new table, read back from MLflow, beside the published numbers.

Per (dataset, method, DePT on/off) the report takes the configuration a researcher would have picked without
peeking at test images — the one with the best mean *selection* metric over its seeds (``val_hm`` by default; the
metric each run was tuned on is in its ``selection_metric`` tag) among those with every seed completed (the one
rule of :mod:`pipelines.selection`, as ``tune``'s summary; a cell without one shows its leading configuration as
incomplete) — and shows its test base and new accuracy as mean ± std over seeds, and HM of those means
(METHOD.md: per dataset, mean of seeds for base and new, then HM). DePT in effect decides the cell: a run at
loss weight 0 is the plain method's. Each row shows the selected lr and loss weight; the dataset's *winner*, the
same rule over every configuration of the dataset (tune's summary names it), is marked, and an exact tie is shown
with the rule that broke it (``pipelines.selection.TIE_RULE``). The
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
Each published row carries its ``source`` (:mod:`pipelines.report.sources`); the formats name them under the table.
"""
from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass, field
from typing import Iterable

from dept.protocols import BASE_TO_NEW
from pipelines.metrics import harmonic_mean
from pipelines.report.sources import PAPER_RESULTS, SOURCE_COLUMN, joined, read_paper_csv
from pipelines.secrets import mask_uri
from pipelines.selection import (
    COMPLETED,
    PAPER_METHOD_NAMES,
    SeedRun,
    canonical_params,
    dept_in_effect,
    describe_params,
    method_label,
    one_per_seed,
    rank,
    tie_note,
    winner,
)
from pipelines.vocabulary import (
    PROTOCOL_TAG,
    ROLE_TAG,
    ROLE_TRAIN,
    ROLE_TRIAL,
    ROLE_ZERO_SHOT,
    STATUS_TAG,
    TEST_BASE_ACC,
    TEST_NEW_ACC,
    VAL_HM,
)

log = logging.getLogger(__name__)

#: Method ids (``--method``) -> the names the paper's table uses.
#: The 11 base-to-new datasets in the paper's table order.
PAPER_DATASETS = ("ImageNet", "Caltech101", "OxfordPets", "StanfordCars", "Flowers102", "Food101", "FGVCAircraft",
                  "SUN397", "DTD", "EuroSAT", "UCF101")
#: Zero-shot CLIP: the ``method`` tag of its runs (pipelines.trial.zero_shot), its name in the table, and its key in
#: paper_results.csv (method, variant).
ZERO_SHOT_METHOD = "clip"
ZERO_SHOT_LABEL = "CLIP (zero-shot)"
PAPER_ZERO_SHOT = ("CLIP", "zero-shot")


class ReportError(ValueError):
    """The report cannot be made (no such experiment, no finished runs); one line."""


@dataclass(frozen=True)
class PaperRow:
    base: float
    new: float
    hm: float
    # where the numbers come from (the CSV's ``source``; joined for a recomputed row); not part of the numbers' equality
    source: str = field(default="", compare=False)


def load_paper_results() -> dict[tuple[str, str, str], PaperRow]:
    """(dataset, method, variant) -> published base / new / HM and source; variant is ``baseline``, ``dept``, or
    ``zero-shot`` (method CLIP)."""
    return {(row["dataset"], row["method"], row["variant"]):
            PaperRow(float(row["base"]), float(row["new"]), float(row["hm"]), row[SOURCE_COLUMN])
            for row in read_paper_csv(PAPER_RESULTS)}


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
    completed: bool = True  # False: stopped early, failed, still running, or without test metrics
    status: str = COMPLETED  # the run's trial_status; "completed" only with its test metrics
    seeds: tuple[str, ...] = ()  # the seeds its tune run asked of every configuration (tag ``seeds``)
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
    complete: bool = True  # False: no configuration of the cell has every seed completed (pipelines.selection)
    seeds_expected: int = 0
    lr: float = float("nan")  # the selected configuration's lr and loss weight in effect (searched settings)
    loss_weight: float = float("nan")
    winner: bool = False  # the dataset's winner (pipelines.selection over every configuration of the dataset)
    tie: str = ""  # how an exact tie on the selection metric was broken within the cell ("" without one)
    winner_line: str = ""  # the winner's: DatasetWinner.line(), the dataset-wide tie included

    @property
    def seeds_text(self) -> str:
        """The seeds column: "2", or "1/2 incomplete" (completed / expected)."""
        return str(self.seeds) if self.complete else f"{self.seeds}/{self.seeds_expected} incomplete"

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


#: The test metrics a finished base-to-new run has.
BASE_TO_NEW_TEST_KEYS = (TEST_BASE_ACC, TEST_NEW_ACC)


def run_protocol(tags: dict) -> str:
    return tags.get(PROTOCOL_TAG) or BASE_TO_NEW


def search_experiment(uri: str, experiment: str) -> list:
    """Every MLflow run of ``experiment`` (all pages); one-line :class:`ReportError` when there is no such
    experiment."""
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
    return runs


def run_info(run, test_keys: Iterable[str], default_metric: str = VAL_HM) -> RunInfo | None:
    """A zero-shot, trial or train run as the report needs it (None for other runs, and for an unfinished
    zero-shot one); ``test_keys``: the metrics a completed run must have."""
    tags, params = run.data.tags, run.data.params
    has_test = all(k in run.data.metrics for k in test_keys)
    if tags.get(ROLE_TAG) == ROLE_ZERO_SHOT:
        if run.info.status == "FINISHED" and has_test:
            return RunInfo(
                run_id=run.info.run_id, dataset=tags.get("dataset", "?"), method=ZERO_SHOT_METHOD, dept=False,
                seed="", config=(), selection_metric="", selection_mode="max", metrics=dict(run.data.metrics),
                zero_shot=True, start_time=run.info.start_time or 0,
            )
        return None
    if tags.get(ROLE_TAG) not in (ROLE_TRIAL, ROLE_TRAIN) or not tags.get(STATUS_TAG):
        return None
    # Every trial run, failed and unfinished ones too: a configuration with a seed that did not complete is
    # incomplete, not scored on its other seeds (pipelines.selection).
    status = tags[STATUS_TAG] if tags[STATUS_TAG] != COMPLETED or has_test else "no_test_metrics"
    config = tuple(sorted(canonical_params({k: v for k, v in params.items() if k != "seed"}).items()))
    return RunInfo(
        run_id=run.info.run_id,
        dataset=tags.get("dataset", "?"),
        method=tags.get("method", params.get("method", "?")),
        dept=dept_in_effect(params, asked=tags.get("dept")),  # loss weight 0: the plain method
        seed=tags.get("seed", params.get("seed", "?")),
        config=config,
        selection_metric=tags.get("selection_metric", default_metric),
        selection_mode=tags.get("selection_mode", "max"),
        metrics=dict(run.data.metrics),
        completed=status == COMPLETED,
        status=status,
        seeds=tuple(s for s in tags.get("seeds", "").split(",") if s),
        start_time=run.info.start_time or 0,
    )


def protocol_runs(uri: str, experiment: str, protocol: str) -> list:
    """The experiment's MLflow runs of ``protocol``; a one-line :class:`ReportError` naming the protocols it does
    have when it has runs but none of this one."""
    runs = search_experiment(uri, experiment)
    mine = [r for r in runs if run_protocol(r.data.tags) == protocol]
    if runs and not mine:
        have = sorted({run_protocol(r.data.tags) for r in runs})
        raise ReportError(f"MLflow experiment {experiment!r} at {mask_uri(uri)} has no {protocol} runs (its runs' "
                          f"protocols: {', '.join(have)}; report --protocol NAME)")
    return mine


def collect_runs(uri: str, experiment: str) -> list[RunInfo]:
    """The base-to-new runs (runs of the transfer protocols are :mod:`pipelines.report.transfer`'s)."""
    infos = (run_info(run, BASE_TO_NEW_TEST_KEYS) for run in protocol_runs(uri, experiment, BASE_TO_NEW))
    return one_per_config_and_seed([r for r in infos if r is not None])


def seed_run(r: RunInfo) -> SeedRun:
    status = r.status if r.status != COMPLETED or r.completed else "not_completed"  # either field may say so
    return SeedRun((r.dataset, r.method, r.dept, r.config), r.seed, status, r.metrics, r.start_time, r,
                   params=dict(r.config))


def rank_cell(cell: list[RunInfo]) -> tuple[str, list]:
    """(selection metric, configurations best first) of one table cell's runs: the one winner rule
    (pipelines.selection), as tune's summary and the parent run's best_* apply it."""
    metric, mode = cell[0].selection_metric, cell[0].selection_mode
    seeds = {s for r in cell for s in r.seeds} | {r.seed for r in cell}
    return metric, rank([seed_run(r) for r in cell], metric, mode, seeds=seeds)


@dataclass(frozen=True)
class DatasetWinner:
    """The configuration the one rule picks among every configuration of a dataset, as tune's summary names it."""

    dataset: str
    config: tuple  # its ``SeedRun.config`` (dataset, method, dept, params)
    name: str  # e.g. "KgCoOp+DePT λ0.70 lr2.0e-03"
    metric: str
    value: float
    tie: str = ""  # pipelines.selection.tie_note, "" without a tie

    def line(self) -> str:
        return (f"{self.dataset}: {self.name}, {self.metric} {self.value:.2f}"
                + (f" ({self.tie})" if self.tie else ""))


def dataset_winners(runs: Iterable[RunInfo]) -> dict[str, DatasetWinner]:
    """Per dataset, the winner over all its trained configurations (every method, with and without DePT): the
    configuration tune's summary and the parent run's ``best_*`` name. A dataset without one is left out."""
    by_dataset: dict[str, list[RunInfo]] = {}
    for r in runs:
        if not r.zero_shot:
            by_dataset.setdefault(r.dataset, []).append(r)
    out = {}
    for dataset, mine in by_dataset.items():
        metric, ranked = rank_cell(mine)
        won = winner(ranked, metric)
        if won is not None:
            out[dataset] = DatasetWinner(dataset, won.config, _describe(won), metric, won.mean(metric),
                                         tie_note(ranked, metric, _describe))
    return out


def _describe(outcome) -> str:
    """A configuration of the report's runs in a few words (method and DePT from its runs' tags)."""
    run = next(iter(outcome.runs.values())).source
    return describe_params(outcome.params, run.method, run.dept)


def one_per_config_and_seed(runs: list[RunInfo]) -> list[RunInfo]:
    """One run per (dataset, method, configuration, seed), as the winner rule counts them: an experiment tuned
    twice, or an aborted attempt, never counts a seed twice."""
    return [r for r in runs if r.zero_shot] + [s.source for s in one_per_seed(seed_run(r) for r in runs
                                                                               if not r.zero_shot)]


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
        base, new = r.metrics[TEST_BASE_ACC], r.metrics[TEST_NEW_ACC]
        block.rows.append(Row(dataset, ZERO_SHOT_METHOD, False, 0, base, float("nan"), new, float("nan"),
                              harmonic_mean(base, new), paper=paper.get((dataset, *PAPER_ZERO_SHOT)), zero_shot=True))
    return block


def _float(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _paper_key(block: Block) -> tuple[str, str]:
    """(method, variant) of a block in paper_results.csv."""
    if block.zero_shot:
        return PAPER_ZERO_SHOT
    return PAPER_METHOD_NAMES.get(block.method, block.method), "dept" if block.dept else "baseline"


def build_report(runs: Iterable[RunInfo], paper: dict | None = None) -> list[Block]:
    paper = load_paper_results() if paper is None else paper
    runs = list(runs)
    by_cell: dict[tuple[str, str, bool], list[RunInfo]] = {}
    for r in runs:
        if not r.zero_shot:
            by_cell.setdefault((r.dataset, r.method, r.dept), []).append(r)

    winners = dataset_winners(runs)
    blocks: dict[tuple[str, bool], Block] = {}
    for (dataset, method, dept), cell in by_cell.items():
        metric, ranked = rank_cell(cell)
        top = ranked[0]
        params = canonical_params(top.params)
        if not top.completed():
            continue  # nothing of this cell has test numbers
        variant = "dept" if dept else "baseline"
        row = Row(dataset, method, dept, len(top.completed()), top.mean(TEST_BASE_ACC), top.std(TEST_BASE_ACC),
                  top.mean(TEST_NEW_ACC), top.std(TEST_NEW_ACC), top.test_hm(), metric, top.mean(metric),
                  len(ranked), paper.get((dataset, PAPER_METHOD_NAMES.get(method, method), variant)),
                  complete=top.complete, seeds_expected=len(top.seeds), lr=_float(params.get("lr")),
                  loss_weight=_float(params.get("loss_weight")),
                  winner=dataset in winners and winners[dataset].config == top.config,
                  tie=tie_note(ranked, metric, _describe) if top.complete else "")
        if row.winner:
            row.winner_line = winners[dataset].line()
        if not row.complete:  # the spread of a subset of seeds is not shown
            row.base_std = row.new_std = float("nan")
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
                            float("nan"), new, float("nan"), harmonic_mean(base, new), zero_shot=block.zero_shot,
                            complete=all(r.complete for r in block.rows))
        name, variant = _paper_key(block)
        ours_in_paper = [r.paper for r in block.rows if r.paper is not None]
        if ours_in_paper and len(ours_in_paper) == len(block.rows):
            pb = statistics.fmean(p.base for p in ours_in_paper)
            pn = statistics.fmean(p.new for p in ours_in_paper)
            block.paper_average = PaperRow(pb, pn, harmonic_mean(pb, pn), joined(p.source for p in ours_in_paper))
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
