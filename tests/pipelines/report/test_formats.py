"""The report's three formats (pipelines.report.formats): the same rows in Markdown, CSV (a ``row`` column) and
LaTeX (booktabs), the zero-shot row included; ``report --format latex`` through the CLI."""
from __future__ import annotations

import csv
import io
import re

import pytest

from pipelines.metrics import harmonic_mean
from pipelines.report.formats import FORMATS, format_csv, format_latex, format_markdown
from pipelines.report.table import PAPER_DATASETS, RunInfo, build_report


def run(dataset, method, dept, seed, base, new, zero_shot=False):
    return RunInfo(run_id=f"{dataset}-{method}-{dept}-{seed}", dataset=dataset, method=method, dept=dept,
                   seed=str(seed), config=(("lr", "0.002"),), selection_metric="val_hm", selection_mode="max",
                   metrics={"test_base_acc": base, "test_new_acc": new, "test_hm": harmonic_mean(base, new),
                            "val_hm": 50.0}, zero_shot=zero_shot)


@pytest.fixture()
def blocks():
    runs = [run("DTD", "clip", False, "", 50.0, 60.0, zero_shot=True), run("my_data", "clip", False, "", 40.0, 45.0,
                                                                          zero_shot=True)]
    for seed, d in ((1, 0.0), (2, 2.0)):
        runs += [run(ds, "coop", True, seed, 80.0 + d, 55.0 + d) for ds in ("DTD", "my_data")]
        runs += [run("DTD", "kgcoop", False, seed, 75.0 + d, 62.0 + d)]
    return build_report(runs)


def test_csv_row_column_tells_the_kinds_of_rows_apart_and_keeps_zero_shot(blocks):
    rows = list(csv.DictReader(io.StringIO(format_csv(blocks))))
    assert {r["row"] for r in rows} == {"dataset", "average", "paper_printed"}
    zs = [r for r in rows if r["method"] == "clip" and r["row"] == "dataset"]
    assert [(r["dataset"], float(r["hm"])) for r in zs] == [("DTD", pytest.approx(harmonic_mean(50, 60), abs=1e-3)),
                                                             ("my_data", pytest.approx(harmonic_mean(40, 45), abs=1e-3))]
    dataset_rows = [r for r in rows if r["row"] == "dataset"]
    assert all(r["dataset"] != "Average" and r["base"] for r in dataset_rows)
    printed = [r for r in rows if r["row"] == "paper_printed"]
    assert printed and all(not r["base"] and r["paper_hm"] for r in printed)  # the paper's, none of ours


def test_latex_is_a_booktabs_table_with_the_markdown_rows(blocks):
    tex = format_latex(blocks, experiment="exp_1")
    lines = tex.splitlines()
    assert lines.count("\\toprule") == 1 and lines.count("\\bottomrule") == 1
    assert lines.count("\\midrule") == len(blocks)  # after the header, then between the method blocks
    body = [ln for ln in lines if ln.endswith("\\\\")]
    columns = body[0].count("&") + 1
    assert re.search(r"\\begin\{tabular\}\{ll(r+)\}", tex).group(1) == "r" * (columns - 2)
    assert all(ln.count("&") == columns - 1 for ln in body)  # every row has every column
    md_rows = [ln for ln in format_markdown(blocks).splitlines() if ln.startswith("| ") and "---" not in ln]
    assert len(body) == len(md_rows)  # the same rows: header, datasets, averages
    assert "my\\_data" in tex and "my_data" not in tex  # escaped
    assert "±" not in tex and "$\\pm$" in tex and "—" not in tex  # plain LaTeX, no Unicode symbols
    assert body[1].startswith("DTD & CLIP (zero-shot) & ")  # zero-shot opens the table, as in the paper
    coop_dtd = next(ln for ln in body if ln.startswith("DTD & CoOp+DePT"))
    assert "81.00 $\\pm$ 1.41" in coop_dtd and "& 2 &" in coop_dtd
    assert any(ln.startswith("\\textbf{Average (2)}") for ln in body)


def test_every_format_has_the_zero_shot_row(blocks):
    for fmt, formatter in FORMATS.items():
        text = formatter(blocks, experiment="exp")
        assert "CLIP (zero-shot)" in text or ",clip," in text, fmt


def test_report_cli_latex(tmp_path):
    from click.testing import CliRunner

    from pipelines.cli import main

    result = CliRunner().invoke(main, ["report", "--mlflow-uri", f"sqlite:///{tmp_path / 'none.db'}",
                                       "--format", "latex"])
    assert result.exit_code == 2 and "no MLflow store" in result.output  # the choice is accepted, the store checked
    result = CliRunner().invoke(main, ["report", "--format", "tex"])
    assert result.exit_code == 2 and "'tex' is not one of 'md', 'csv', 'latex'" in result.output


def test_latex_of_all_eleven_datasets_has_one_row_each():
    blocks = build_report([run(d, "coop", False, 1, 70.0, 60.0) for d in PAPER_DATASETS])
    body = [ln for ln in format_latex(blocks).splitlines() if ln.endswith("\\\\")]
    assert len(body) == 1 + len(PAPER_DATASETS) + 1
