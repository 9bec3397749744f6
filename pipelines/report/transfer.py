"""The paper-style tables of the two transfer protocols (DePT's Table 2, cross-dataset; Table 3, domain
generalisation), read back from MLflow, beside the published numbers.

A prompt is trained on every class of a source dataset (the paper: ImageNet, 16 shots) and tested on the source and,
untouched, on each target. Per (method, DePT in effect: the ``dept_effective`` param) the configuration is the one of
:mod:`pipelines.selection`'s rule, as in the base-to-new table (:mod:`pipelines.report.table`): the best mean of the
selection metric (``val_acc``: source validation images only, targets never looked at) over seeds, among the
configurations with every seed completed. One row per method, CLIP zero-shot first (the newest ``zero-shot`` run of
the source); columns: the source's test accuracy, each target's (the paper's targets in its order, then others
sorted), and the average over the targets of the per-target means over seeds. One table per source dataset.

Published numbers (``pipelines/data/paper_transfer_results.csv``) hold only what the paper prints: for
domain generalisation no "target average" rows are stored; :func:`load_paper_transfer` computes them when reading,
as the mean of a method's four targets. A row's paper cells are shown only for the paper's source (ImageNet); the
paper average beside ours is the printed one when our targets are the paper's, else the mean of the paper's
per-target numbers over our targets when it gives all of them, else none ("—"). Each published number carries its
source (:mod:`pipelines.report.sources`), named under the tables; a cell of the published tables this copy lacks
(``paper_numbers_not_found.csv``) shows ``?``, not "—".
"""
from __future__ import annotations

import csv
import io
import math
import statistics
from dataclasses import dataclass, field
from typing import Iterable

from dept.protocols import CROSS_DATASET, DEFAULT_SOURCE, DOMAIN_GENERALIZATION, TRANSFER_PROTOCOLS
from pipelines.report.formats import cell_number, csv_number, tex_escape, tex_number
from pipelines.report.sources import (
    NOT_FOUND_MARK,
    NOT_FOUND_NOTE,
    PAPER_TRANSFER_RESULTS,
    joined,
    not_found,
    read_paper_csv,
    source_note,
    transfer_sources,
)
from pipelines.report.table import (
    PAPER_METHOD_NAMES,
    ZERO_SHOT_LABEL,
    ReportError,
    RunInfo,
    method_label,
    one_per_config_and_seed,
    protocol_runs,
    rank_cell,
    run_info,
)
from pipelines.secrets import mask_uri
from pipelines.vocabulary import TARGET_METRIC_PREFIX, TRANSFER_TEST_METRICS, VAL_ACC

PAPER_SOURCE = DEFAULT_SOURCE
#: The paper's targets in its tables' column order.
PAPER_TARGETS = {
    CROSS_DATASET: ("Caltech101", "OxfordPets", "StanfordCars", "Flowers102", "Food101", "FGVCAircraft", "SUN397",
                    "DTD", "EuroSAT", "UCF101"),
    DOMAIN_GENERALIZATION: ("ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR"),
}
TITLES = {CROSS_DATASET: "Cross-dataset", DOMAIN_GENERALIZATION: "Domain-generalisation"}
#: What transfer runs log (pipelines.tracking.client names them).
SOURCE_METRIC = TRANSFER_TEST_METRICS[0]
TARGET_PREFIX = TARGET_METRIC_PREFIX
SELECTION_METRIC = VAL_ACC
#: The ``dataset`` of the paper's average rows in the CSV.
TARGET_AVERAGE = "target average"
MISSING = "—"


def load_paper_transfer() -> dict[tuple[str, str, str, str], float]:
    """(protocol, method, variant, dataset) -> published accuracy; variant ``base`` or ``DePT``. The
    domain-generalisation target averages are computed here from the four targets (the CSV stores what is
    printed only)."""
    out = {(r["protocol"], r["method"], r["variant"], r["dataset"]): float(r["acc"])
           for r in read_paper_csv(PAPER_TRANSFER_RESULTS)}
    dg = PAPER_TARGETS[DOMAIN_GENERALIZATION]
    for protocol, method, variant in {k[:3] for k in out if k[0] == DOMAIN_GENERALIZATION}:
        accs = [out.get((protocol, method, variant, t)) for t in dg]
        if all(a is not None for a in accs):
            out[(protocol, method, variant, TARGET_AVERAGE)] = statistics.fmean(accs)
    return out


@dataclass
class Cell:
    mean: float
    std: float = float("nan")
    paper: float | None = None
    paper_source: str = ""  # where ``paper`` comes from
    paper_not_found: str = ""  # a published number this copy lacks: where it was looked for


@dataclass
class TransferRow:
    method: str
    dept: bool
    source: Cell
    targets: dict[str, Cell]
    average: Cell
    zero_shot: bool = False
    seeds: int = 0
    seeds_expected: int = 0
    complete: bool = True
    selection_metric: str = ""
    selection_value: float = float("nan")
    configs_compared: int = 1

    @property
    def label(self) -> str:
        return ZERO_SHOT_LABEL if self.zero_shot else method_label(self.method, self.dept)

    @property
    def seeds_text(self) -> str:
        """As the base-to-new table's: "2", or "1/2 incomplete" (completed / expected)."""
        return str(self.seeds) if self.complete else f"{self.seeds}/{self.seeds_expected} incomplete"


@dataclass
class TransferTable:
    protocol: str
    source: str
    targets: list[str]  # column order
    rows: list[TransferRow] = field(default_factory=list)


def _dept_effective(run, info: RunInfo) -> bool:
    """What the run really applied (the ``dept_effective`` param: "True"/"true"), else its ``dept`` tag."""
    value = run.data.params.get("dept_effective")
    return info.dept if value is None else value.lower() == "true"


def collect_transfer_runs(uri: str, experiment: str, protocol: str) -> list[RunInfo]:
    """The zero-shot, trial and train runs of ``protocol``; a one-line :class:`ReportError` naming the protocols
    the experiment does have when it has none of this one."""
    mine = protocol_runs(uri, experiment, protocol)
    if not mine:
        raise ReportError(f"MLflow experiment {experiment!r} at {mask_uri(uri)} has no runs")
    out = []
    for run in mine:
        targets = [t for t in run.data.tags.get("targets", "").split(",") if t]
        info = run_info(run, (SOURCE_METRIC, *(TARGET_PREFIX + t for t in targets)), SELECTION_METRIC)
        if info is not None:
            info.dept = _dept_effective(run, info)
            out.append(info)
    out = one_per_config_and_seed(out)
    if not out:
        raise ReportError(f"MLflow experiment {experiment!r} at {mask_uri(uri)} has no finished {protocol} runs "
                          "with test metrics yet")
    return out


def _target_order(protocol: str):
    paper = PAPER_TARGETS[protocol]
    return lambda t: (paper.index(t), "") if t in paper else (len(paper), t)


def _average(cells: dict[str, Cell], targets: list[str]) -> float:
    """Mean over the targets of the per-target means; none unless the row has every target of the table."""
    vals = [cells[t].mean for t in targets if t in cells and not math.isnan(cells[t].mean)]
    return statistics.fmean(vals) if vals and len(vals) == len(targets) else float("nan")


def _add_paper(row: TransferRow, table: TransferTable, paper: dict, sources: dict, missing: dict) -> None:
    if row.zero_shot or table.source != PAPER_SOURCE:
        return
    key = (table.protocol, PAPER_METHOD_NAMES.get(row.method, row.method), "DePT" if row.dept else "base")

    def fill(cell: Cell, dataset: str) -> None:
        cell.paper = paper.get((*key, dataset))
        cell.paper_source = sources.get((*key, dataset), "") if cell.paper is not None else ""
        cell.paper_not_found = missing.get((*key, dataset), "") if cell.paper is None else ""

    fill(row.source, PAPER_SOURCE)
    for t, cell in row.targets.items():
        fill(cell, t)
    if set(table.targets) == set(PAPER_TARGETS[table.protocol]):
        row.average.paper = paper.get((*key, TARGET_AVERAGE))
    else:
        ps = [paper.get((*key, t)) for t in table.targets]
        row.average.paper = statistics.fmean(ps) if ps and all(p is not None for p in ps) else None
    # the average's source: its targets' (and the printed average's); not found when a number it needs is and the
    # paper has every target of the table (an average over a target the paper lacks is never published)
    over = [(*key, t) for t in (*table.targets, TARGET_AVERAGE)]
    if row.average.paper is not None:
        row.average.paper_source = joined(sources.get(k, "") for k in over)
    elif set(table.targets) <= set(PAPER_TARGETS[table.protocol]):
        row.average.paper_not_found = joined(missing.get(k, "") for k in over)


def build_transfer_report(runs: Iterable[RunInfo], protocol: str, paper: dict | None = None,
                          sources: dict | None = None, missing: dict | None = None) -> list[TransferTable]:
    """``paper``, ``sources``, ``missing``: the published numbers, their sources and the published cells this copy
    lacks (default: the package's CSVs, :mod:`pipelines.report.sources`)."""
    paper = load_paper_transfer() if paper is None else paper
    sources = transfer_sources() if sources is None else sources
    missing = not_found() if missing is None else missing
    by_source: dict[str, list[RunInfo]] = {}
    for r in runs:
        by_source.setdefault(r.dataset, []).append(r)
    tables = []
    for source in sorted(by_source, key=lambda s: (s != PAPER_SOURCE, s)):
        runs_s = by_source[source]
        targets = sorted({k[len(TARGET_PREFIX):] for r in runs_s for k in r.metrics if k.startswith(TARGET_PREFIX)},
                         key=_target_order(protocol))
        table = TransferTable(protocol, source, targets)
        zero_shot = [r for r in runs_s if r.zero_shot]
        if zero_shot:  # nothing selected: the newest (every run of the same features gives the same numbers)
            z = max(zero_shot, key=lambda r: r.start_time)
            cells = {t: Cell(z.metrics[TARGET_PREFIX + t]) for t in targets if TARGET_PREFIX + t in z.metrics}
            table.rows.append(TransferRow("clip", False, Cell(z.metrics[SOURCE_METRIC]), cells,
                                          Cell(_average(cells, targets)), zero_shot=True))
        by_cell: dict[tuple[str, bool], list[RunInfo]] = {}
        for r in runs_s:
            if not r.zero_shot:
                by_cell.setdefault((r.method, r.dept), []).append(r)
        method_order = list(PAPER_METHOD_NAMES)
        for (method, dept) in sorted(by_cell, key=lambda k: (
                method_order.index(k[0]) if k[0] in method_order else len(method_order), k[0], k[1])):
            cell = by_cell[(method, dept)]
            metric, ranked = rank_cell(cell)  # the one winner rule, as the base-to-new table applies it
            top = ranked[0]
            if not top.completed():
                continue  # nothing of this cell has test numbers

            def cell_of(key: str) -> Cell:  # the spread of a subset of seeds is not shown
                return Cell(top.mean(key), top.std(key) if top.complete else float("nan"))

            cells = {t: cell_of(TARGET_PREFIX + t) for t in targets}
            cells = {t: c for t, c in cells.items() if not math.isnan(c.mean)}
            table.rows.append(TransferRow(
                method, dept, cell_of(SOURCE_METRIC), cells, Cell(_average(cells, targets)),
                seeds=len(top.completed()), seeds_expected=len(top.seeds), complete=top.complete,
                selection_metric=metric, selection_value=top.mean(metric), configs_compared=len(ranked)))
        for row in table.rows:
            _add_paper(row, table, paper, sources, missing)
        tables.append(table)
    return tables


# -- formats -------------------------------------------------------------------------------------------------
def _paper_cells(r: "TransferRow", table: "TransferTable") -> list[Cell] | None:
    """The row's cells (source, each target, average) as its paper row shows them, or None when the paper gives none
    of them (a source other than the paper's, CLIP zero-shot): no row of dashes then."""
    theirs = [r.source] + [r.targets.get(t, Cell(float("nan"))) for t in table.targets] + [r.average]
    return None if all(c.paper is None and not c.paper_not_found for c in theirs) else theirs


def _paper_text(c: Cell, number) -> str:
    """A paper cell: ``number(value)`` (its "—" for none), or the mark of a published number this copy lacks."""
    return NOT_FOUND_MARK if c.paper is None and c.paper_not_found else number(c.paper)


def _notes(tables: list[TransferTable]) -> list[str]:
    notes = ["Average: the mean over the targets of the per-target means over seeds (— when a row lacks a "
             "target). Paper rows: the published numbers for source ImageNet; their "
             "average is the printed one when the targets are the paper's, else the mean of its per-target numbers "
             "over the targets shown; — where the paper gives none."]
    cells = [(f"{r.label} (paper)", c) for t in tables for r in t.rows for c in (_paper_cells(r, t) or ())]
    note = source_note((label, c.paper_source) for label, c in cells)
    if note:
        notes.append(note)
    if any(c.paper is None and c.paper_not_found for _, c in cells):
        notes.append(NOT_FOUND_NOTE)
    if any(r.zero_shot for t in tables for r in t.rows):
        notes.append(f"{ZERO_SHOT_LABEL}: the frozen model with hand-crafted prompts, nothing trained (no seeds).")
    if any(not r.complete for t in tables for r in t.rows):
        notes.append("Seeds marked incomplete (completed / expected): no configuration of that method has every "
                     "seed completed, so none is selected; shown is the leading one's mean over its completed seeds.")
    return notes


def format_transfer_markdown(tables: list[TransferTable], *, experiment: str = "") -> str:
    lines = []
    for table in tables:
        what = f"{TITLES[table.protocol]} results"
        if experiment:
            what += f" of MLflow experiment `{experiment}`"
        lines += [f"{what}: source {table.source}, {len(table.targets)} target(s) (test accuracy, %; mean ± std "
                  f"over seeds). Per method, the configuration with the best mean {SELECTION_METRIC} over seeds "
                  "(source validation images only) is shown.", ""]
        lines.append(f"| Method | Seeds | Source ({table.source}) | " + " | ".join(table.targets) + " | Average |")
        lines.append("| --- | ---: | ---: |" + " ---: |" * (len(table.targets) + 1))
        for r in table.rows:
            ours = [cell_number(r.source.mean, r.source.std, missing=MISSING)]
            ours += [cell_number(r.targets[t].mean, r.targets[t].std, missing=MISSING) if t in r.targets else MISSING
                     for t in table.targets]
            ours.append(cell_number(r.average.mean, missing=MISSING))
            seeds = MISSING if r.zero_shot else r.seeds_text
            lines.append(f"| {r.label} | {seeds} | " + " | ".join(ours) + " |")
            theirs = _paper_cells(r, table)
            if theirs is not None:
                lines.append(f"| {r.label} (paper) | | " + " | ".join(
                    _paper_text(c, lambda p: cell_number(p, missing=MISSING)) for c in theirs) + " |")
        lines.append("")
    lines += _notes(tables)
    return "\n".join(lines) + "\n"


#: One line per cell; ``row``: ``source`` (the source's test accuracy), ``target`` or ``average``.
TRANSFER_CSV_COLUMNS = ("row", "protocol", "source", "method", "dept", "seeds", "dataset", "acc", "acc_std",
                        "paper_acc", "selection_metric", "selection_value", "configs_compared", "note", "paper_source")


def format_transfer_csv(tables: list[TransferTable], *, experiment: str = "") -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=TRANSFER_CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()

    for table in tables:
        for r in table.rows:
            note = "CLIP zero-shot: nothing trained, no seeds" if r.zero_shot else ""
            if not r.complete:
                note = f"incomplete: {r.seeds} of {r.seeds_expected} seeds completed; no configuration selected"
            cells = [("source", table.source, r.source)] + [("target", t, r.targets[t]) for t in table.targets
                                                             if t in r.targets]
            cells.append(("average", "Average", r.average))
            for kind, dataset, c in cells:
                writer.writerow({
                    "row": kind, "protocol": table.protocol, "source": table.source, "method": r.method,
                    "dept": str(r.dept).lower(), "seeds": "" if r.zero_shot else r.seeds, "dataset": dataset,
                    "acc": csv_number(c.mean), "acc_std": csv_number(c.std), "paper_acc": csv_number(c.paper),
                    "selection_metric": r.selection_metric, "selection_value": csv_number(r.selection_value),
                    "configs_compared": "" if r.zero_shot else r.configs_compared,
                    "note": "mean over the targets of the per-target means" if kind == "average" and not note else note,
                    "paper_source": c.paper_source or (f"not found (looked for in {c.paper_not_found})"
                                                       if c.paper_not_found else ""),
                })
    return buf.getvalue()


def format_transfer_latex(tables: list[TransferTable], *, experiment: str = "") -> str:
    """A booktabs ``tabular`` per source: the Markdown rows, each method's paper row in italics below it."""
    lines = [f"% {n}" for n in _notes(tables)] + ["% requires \\usepackage{booktabs}"]
    for table in tables:
        header = ["Method", "Seeds", f"Source ({table.source})", *table.targets, "Average"]
        lines += [f"% {TITLES[table.protocol]} results" + (f" of MLflow experiment {experiment}" if experiment else ""),
                  "\\begin{tabular}{ll" + "r" * (len(header) - 2) + "}", "\\toprule",
                  " & ".join(tex_escape(h) for h in header) + " \\\\", "\\midrule"]
        for r in table.rows:
            ours = [tex_escape(r.label), "" if r.zero_shot else tex_escape(r.seeds_text), tex_number(r.source.mean, r.source.std)]
            ours += [tex_number(r.targets[t].mean, r.targets[t].std) if t in r.targets else "--" for t in table.targets]
            ours.append(tex_number(r.average.mean))
            theirs = _paper_cells(r, table)
            lines.append(" & ".join(ours) + " \\\\")
            if theirs is not None:
                lines.append(" & ".join([f"\\textit{{{tex_escape(r.label)} (paper)}}", ""]
                                        + [_paper_text(c, tex_number) for c in theirs]) + " \\\\")
        lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


#: ``report --format`` -> formatter(tables, experiment=...), as :data:`pipelines.report.formats.FORMATS`.
TRANSFER_FORMATS = {"md": format_transfer_markdown, "csv": format_transfer_csv, "latex": format_transfer_latex}


def make_transfer_report(uri: str, experiment: str, protocol: str, fmt: str = "md", plots=None) -> str:
    """The tables as ``fmt``; with ``plots`` (a folder), each source's figure (source accuracy against the targets'
    mean, as ``tune`` logs it to the parent) under ``plots/<source>/``."""
    if protocol not in TRANSFER_PROTOCOLS:
        raise ReportError(f"protocol {protocol!r} is not a transfer protocol ({', '.join(TRANSFER_PROTOCOLS)})")
    runs = collect_transfer_runs(uri, experiment, protocol)
    if plots is not None:
        from pipelines.figures import report_figures

        report_figures(runs, plots)
    tables = build_transfer_report(runs, protocol)
    return TRANSFER_FORMATS[fmt](tables, experiment=experiment)
