"""Where the published numbers beside ours come from, and which cells of the published tables this copy lacks.

Both CSVs of published numbers carry a ``source`` column per row: the paper or reference-repository table the
number was read from (``pipelines/data/paper_results.csv``: base-to-new, its CLIP rows being CoCoOp's numbers;
``paper_transfer_results.csv``: cross-dataset and domain generalisation). ``paper_numbers_not_found.csv`` lists
the cells of the published transfer tables that ``report`` could show but that no readable copy was found of
(docs/protocols.md, "Numbers not found"): the report marks them :data:`NOT_FOUND_MARK`, not "—" (none published).

A CSV without the ``source`` column (an older copy) still reads, with every source empty.
"""
from __future__ import annotations

import csv
import io
from importlib import resources
from typing import Iterable

PAPER_RESULTS = "paper_results.csv"
PAPER_TRANSFER_RESULTS = "paper_transfer_results.csv"
NOT_FOUND = "paper_numbers_not_found.csv"
SOURCE_COLUMN = "source"
#: A published cell this copy lacks; "—" stays for a cell the paper gives no number for.
NOT_FOUND_MARK = "?"
NOT_FOUND_NOTE = (f"{NOT_FOUND_MARK}: the published table has this number, but no readable copy of it was found "
                  "(docs/protocols.md, \"Numbers not found\").")
#: Where the CLIP rows of paper_results.csv come from, said wherever they are shown.
CLIP_ROWS_NOTE = ("CLIP (zero-shot) paper rows: CoCoOp's numbers (CoCoOp CVPR 2022 Table 1), the zero-shot row "
                  "DePT's base-to-new comparison starts from, not numbers DePT measured.")

#: (protocol, method, variant, dataset): the key of one published transfer number.
TransferKey = tuple[str, str, str, str]


def parse_paper_csv(text: str) -> list[dict[str, str]]:
    """A CSV of published numbers as rows, ``source`` stripped ("" where the CSV has no such column)."""
    return [{**row, SOURCE_COLUMN: (row.get(SOURCE_COLUMN) or "").strip()} for row in csv.DictReader(io.StringIO(text))]


def read_paper_csv(name: str) -> list[dict[str, str]]:
    """The rows of ``pipelines/data/<name>`` (:func:`parse_paper_csv`)."""
    return parse_paper_csv(resources.files("pipelines").joinpath(f"data/{name}").read_text())


def _transfer_key(row: dict[str, str]) -> TransferKey:
    return row["protocol"], row["method"], row["variant"], row["dataset"]


def transfer_sources() -> dict[TransferKey, str]:
    """(protocol, method, variant, dataset) -> the source of that published transfer number."""
    return {_transfer_key(r): r[SOURCE_COLUMN] for r in read_paper_csv(PAPER_TRANSFER_RESULTS)}


def not_found() -> dict[TransferKey, str]:
    """The published transfer cells this copy lacks -> where they were looked for (``expected_in``)."""
    return {_transfer_key(r): r["expected_in"] for r in read_paper_csv(NOT_FOUND)}


def joined(sources: Iterable[str]) -> str:
    """The distinct non-empty sources, first seen first, "; "-joined ("" for none)."""
    return "; ".join(dict.fromkeys(s for s in sources if s))


def source_note(labelled: Iterable[tuple[str, str]]) -> str | None:
    """One footnote line naming where the paper numbers come from, each source with the rows (labels) it gave when
    there are several; None when no row has one. ``labelled``: (row label, source) pairs in table order."""
    by_source: dict[str, dict[str, None]] = {}
    for label, source in labelled:
        for s in source.split("; "):
            if s:
                by_source.setdefault(s, {})[label] = None
    if len(by_source) < 2:
        return f"Paper numbers from: {next(iter(by_source))}." if by_source else None
    return "Paper numbers from: " + "; ".join(f"{s} for {', '.join(labels)}" for s, labels in by_source.items()) + "."


def base_to_new_notes(blocks) -> list[str]:
    """The base-to-new table's source lines (:class:`pipelines.report.table.Block` s): which source gave the paper
    numbers of which rows, and, when CLIP's zero-shot rows show paper numbers, that they are CoCoOp's."""
    labelled = [(r.label, r.paper.source) for b in blocks for r in b.rows if r.paper is not None]
    labelled += [(b.average.label, b.paper_printed.source) for b in blocks if b.paper_printed is not None]
    note = source_note(labelled)
    lines = [note] if note else []
    if any(b.zero_shot and any(r.paper is not None for r in b.rows) for b in blocks):
        lines.append(CLIP_ROWS_NOTE)
    return lines
