"""The published numbers are complete and attributed: per table, every cell of the published table's shape (methods x
datasets x numbers) is either in the package's CSVs, with a source, or listed as not found (and then named in
docs/protocols.md); ``report`` shows each one (a number, or ``?`` for one not found, never "—") and names the
sources under the table, saying that the CLIP rows are CoCoOp's numbers."""
from __future__ import annotations

import csv
import io
import itertools
from pathlib import Path

from pipelines.metrics import harmonic_mean
from pipelines.report.formats import format_csv, format_latex, format_markdown
from pipelines.report.sources import (
    CLIP_ROWS_NOTE,
    NOT_FOUND,
    NOT_FOUND_MARK,
    PAPER_RESULTS,
    PAPER_TRANSFER_RESULTS,
    not_found,
    parse_paper_csv,
    read_paper_csv,
)
from pipelines.report.table import PAPER_DATASETS, RunInfo, build_report
from pipelines.report.transfer import (
    PAPER_SOURCE,
    PAPER_TARGETS,
    TARGET_AVERAGE,
    build_transfer_report,
    format_transfer_csv,
    format_transfer_markdown,
)
from pipelines.selection import PAPER_METHOD_NAMES

DOCS = Path(__file__).resolve().parents[3] / "docs" / "protocols.md"

# The published tables' shapes. Base-to-new (DePT's tables, METHOD.md): 7 methods, each without and with DePT, a row
# per dataset and the average row, 3 numbers a row; and CLIP zero-shot's 12 rows (CoCoOp's numbers).
BASE_TO_NEW_METHODS = ("CoOp", "CoCoOp", "KgCoOp", "MaPLe", "CLIP-Adapter", "VPT", "PromptSRC")
BASE_TO_NEW_ROWS = (*PAPER_DATASETS, "Average")
# Transfer: the methods report can show (DePT's CoOp, CoCoOp, KgCoOp rows), without and with DePT; cross-dataset:
# the source, 10 targets and the printed target average; domain generalisation: the source and 4 targets (the
# average is computed when read, not published as a number of its own).
TRANSFER_METHODS = tuple(PAPER_METHOD_NAMES.values())
TRANSFER_VARIANTS = ("base", "DePT")
TRANSFER_COLUMNS = {"cross-dataset": (PAPER_SOURCE, *PAPER_TARGETS["cross-dataset"], TARGET_AVERAGE),
                    "domain-generalization": (PAPER_SOURCE, *PAPER_TARGETS["domain-generalization"])}


def test_base_to_new_has_every_cell_of_the_published_tables_each_with_its_source():
    rows = read_paper_csv(PAPER_RESULTS)
    shape = {(d, m, v) for d in BASE_TO_NEW_ROWS for m in BASE_TO_NEW_METHODS for v in ("baseline", "dept")}
    shape |= {(d, "CLIP", "zero-shot") for d in BASE_TO_NEW_ROWS}
    assert len(shape) == 12 * 7 * 2 + 12
    keys = [(r["dataset"], r["method"], r["variant"]) for r in rows]
    assert len(keys) == len(set(keys)) and set(keys) == shape
    for r in rows:  # 3 numbers a row, all present
        assert all(r[c] and float(r[c]) > 0 for c in ("base", "new", "hm")), r
        assert r["source"], r
    clip = {r["source"] for r in rows if r["method"] == "CLIP"}
    assert clip == {"CoCoOp CVPR 2022 Table 1 (CLIP, hand-crafted prompts)"}
    assert all("DePT CVPR 2024" in r["source"] for r in rows if r["method"] != "CLIP")


def test_transfer_tables_cells_are_each_in_the_csv_with_a_source_or_listed_as_not_found():
    rows = read_paper_csv(PAPER_TRANSFER_RESULTS)
    present = {(r["protocol"], r["method"], r["variant"], r["dataset"]): r for r in rows}
    assert len(present) == len(rows)
    missing = not_found()
    assert len(missing) == len(read_paper_csv(NOT_FOUND))  # no cell listed twice
    # docs/protocols.md, "Numbers not found": a line per published row with cells not found, naming them
    docs = {ln.split("`")[1]: ln for ln in DOCS.read_text().splitlines() if ln.startswith("- `")}
    for protocol, columns in TRANSFER_COLUMNS.items():
        shape = set(itertools.product([protocol], TRANSFER_METHODS, TRANSFER_VARIANTS, columns))
        assert len(shape) == len(TRANSFER_METHODS) * 2 * len(columns)  # 72 cross-dataset, 30 domain generalisation
        mine = {k for k in present if k[0] == protocol}
        gap = {k for k in missing if k[0] == protocol}
        assert mine | gap == shape and not mine & gap, protocol
        assert all(present[k]["acc"] and present[k]["source"] for k in mine)
        assert all(missing[k] for k in gap)  # where it was looked for
        for _, method, variant, dataset in gap:
            line = docs.get(f"{protocol} {method} {variant}", "")
            assert f" {dataset}," in line or line.endswith(f" {dataset}."), (protocol, method, variant, dataset)
    dg = {r["source"] for r in rows if r["protocol"] == "domain-generalization"}
    assert dg == {"Koorye/DePT additional_results/domain_generalization.md "
                  "(examples/domain_generalization_performance.png)"}


def transfer_run(method: str, dept: bool, protocol: str) -> RunInfo:
    metrics = {"val_acc": 50.0, "test_acc": 70.0, **{f"test_acc/{t}": 60.0 for t in PAPER_TARGETS[protocol]}}
    return RunInfo(run_id=f"{method}{dept}", dataset=PAPER_SOURCE, method=method, dept=dept, seed="1",
                   config=(("lr", "0.002"),), selection_metric="val_acc", selection_mode="max", metrics=metrics,
                   seeds=("1",))


def test_the_transfer_report_shows_each_published_number_or_marks_it_not_found():
    missing = not_found()
    paper_rows = {(r["protocol"], r["method"], r["variant"], r["dataset"]): float(r["acc"])
                  for r in read_paper_csv(PAPER_TRANSFER_RESULTS)}
    for protocol, columns in TRANSFER_COLUMNS.items():
        runs = [transfer_run(m, d, protocol) for m in PAPER_METHOD_NAMES for d in (False, True)]
        tables = build_transfer_report(runs, protocol)
        text = format_transfer_markdown(tables)
        cells_of = (ln.strip().strip("|").split("|") for ln in text.splitlines() if ln.startswith("| "))
        lines = {c[0].strip(): [x.strip() for x in c[2:]] for c in cells_of}  # label -> source, targets, average
        shown = 0
        for method, variant in itertools.product(TRANSFER_METHODS, TRANSFER_VARIANTS):
            label = method + ("+DePT" if variant == "DePT" else "")
            cells = dict(zip((PAPER_SOURCE, *PAPER_TARGETS[protocol], TARGET_AVERAGE), lines[f"{label} (paper)"]))
            assert "—" not in cells.values(), (protocol, label, cells)  # the paper has each of these numbers
            for column in columns:
                key = (protocol, method, variant, column)
                expected = NOT_FOUND_MARK if key in missing else f"{paper_rows[key]:.2f}"
                assert cells[column] == expected, (key, cells[column])
                shown += 1
        assert shown == len(TRANSFER_METHODS) * 2 * len(columns)
        notes = [ln for ln in text.splitlines() if ln.startswith("Paper numbers from: ")]
        assert len(notes) == 1 and ("additional_results" in notes[0]) == (protocol == "domain-generalization")
        assert any(ln.startswith(f"{NOT_FOUND_MARK}: ") for ln in text.splitlines())
        out = list(csv.DictReader(io.StringIO(format_transfer_csv(tables))))
        assert all(r["paper_source"] for r in out)  # a source, or where a number not found was looked for
        assert sum(r["paper_source"].startswith("not found") for r in out) >= sum(k[0] == protocol for k in missing)


def b2n_run(dataset: str, method: str, dept: bool) -> RunInfo:
    return RunInfo(run_id=f"{dataset}{method}{dept}", dataset=dataset, method=method, dept=dept, seed="1",
                   config=(("lr", "0.0035"),), selection_metric="val_hm", selection_mode="max",
                   metrics={"test_base_acc": 80.0, "test_new_acc": 70.0, "val_hm": 60.0}, seeds=("1",))


def zero_shot_run(dataset: str) -> RunInfo:
    return RunInfo(run_id=f"zs{dataset}", dataset=dataset, method="clip", dept=False, seed="", config=(),
                   selection_metric="", selection_mode="max", zero_shot=True,
                   metrics={"test_base_acc": 70.0, "test_new_acc": 75.0, "test_hm": harmonic_mean(70.0, 75.0)})


def test_the_base_to_new_report_shows_every_paper_number_and_names_its_sources():
    runs = [b2n_run(d, m, dept) for d in PAPER_DATASETS for m in PAPER_METHOD_NAMES for dept in (False, True)]
    blocks = build_report(runs + [zero_shot_run(d) for d in PAPER_DATASETS])
    text = format_markdown(blocks)
    rows = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in text.splitlines()
            if ln.startswith("| ") and not ln.startswith("| ---")][1:]
    assert len(rows) == (1 + 2 * len(PAPER_METHOD_NAMES)) * (len(PAPER_DATASETS) + 1)
    assert all("—" not in cell for r in rows for cell in r[-3:]), "a paper cell without its number"
    notes = [ln for ln in text.splitlines() if ln.startswith("Paper numbers from: ")]
    assert len(notes) == 1
    assert "CoCoOp CVPR 2022 Table 1" in notes[0] and "DePT CVPR 2024" in notes[0]
    assert CLIP_ROWS_NOTE in text and CLIP_ROWS_NOTE in format_latex(blocks)
    out = list(csv.DictReader(io.StringIO(format_csv(blocks))))
    assert all(r["paper_source"] for r in out)
    assert {r["paper_source"] for r in out if r["method"] == "clip"} == \
        {"CoCoOp CVPR 2022 Table 1 (CLIP, hand-crafted prompts)"}


def test_a_csv_without_the_source_column_still_reads():
    """Old copies of the CSVs (before the ``source`` column) read the same, every source empty."""
    (row,) = parse_paper_csv("dataset,method,variant,base,new,hm\nDTD,CoOp,dept,83.20,56.13,67.04\n")
    assert row["source"] == "" and row["base"] == "83.20"
