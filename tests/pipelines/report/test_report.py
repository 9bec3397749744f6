"""The paper-style report: seed means/std, validation-only selection, HM-of-averages, published numbers beside ours;
read back from a real MLflow (SQLite) store through the CLI."""
from __future__ import annotations

import csv
import io
import statistics
import subprocess
import sys

import pytest
from click.testing import CliRunner

from pipelines.cli import main
from pipelines.metrics import harmonic_mean
from pipelines.report.formats import format_csv, format_markdown
from pipelines.report.table import PAPER_DATASETS, PaperRow, RunInfo, build_report, load_paper_results


def run(dataset, method, dept, seed, base, new, val_hm, config=(("lr", "0.0035"),)):
    return RunInfo(
        run_id=f"{dataset}-{method}-{dept}-{seed}-{config}", dataset=dataset, method=method, dept=dept, seed=str(seed),
        config=config, selection_metric="val_hm", selection_mode="max",
        metrics={"test_base_acc": base, "test_new_acc": new, "test_hm": harmonic_mean(base, new), "val_hm": val_hm},
    )


def test_report_needs_no_torch_and_its_hm_is_the_method_librarys():
    """``report`` summarises MLflow numbers without importing torch (any ``dept`` import does), so it keeps its own
    copy of the HM formula; this keeps the copy equal to dept's."""
    from dept.evaluate import harmonic_mean as dept_hm

    probe = "import sys, pipelines.report; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip() == "False"
    for base, new in ((0.0, 0.0), (80.0, 0.0), (83.2, 56.13), (50.0, 50.0), (99.9, 0.1)):
        assert harmonic_mean(base, new) == dept_hm(base, new)


def test_paper_csv_ships_with_the_package():
    paper = load_paper_results()
    assert paper[("DTD", "CoOp", "dept")] == PaperRow(83.20, 56.13, 67.04)
    assert all((d, "KgCoOp", "dept") in paper for d in PAPER_DATASETS)
    assert paper[("Average", "CoOp", "dept")].hm == 77.29


def test_cell_is_seed_mean_with_std_and_hm_of_means():
    blocks = build_report([run("DTD", "coop", True, 1, 80.0, 50.0, 60), run("DTD", "coop", True, 2, 70.0, 60.0, 61)])
    (block,) = blocks
    (row,) = block.rows
    assert row.seeds == 2
    assert row.base == 75.0 and row.new == 55.0
    assert row.base_std == pytest.approx(statistics.stdev([80.0, 70.0]))
    assert row.hm == pytest.approx(harmonic_mean(75.0, 55.0))  # HM of the means, not the mean of the HMs
    assert row.hm != pytest.approx((harmonic_mean(80, 50) + harmonic_mean(70, 60)) / 2)
    assert row.paper is not None and row.paper == load_paper_results()[("DTD", "CoOp", "dept")]


def test_configuration_is_selected_on_validation_not_test():
    good_val = (("lr", "0.001"),)
    good_test = (("lr", "0.01"),)
    runs = [
        run("EuroSAT", "coop", True, 1, 60.0, 40.0, val_hm=70, config=good_val),
        run("EuroSAT", "coop", True, 2, 62.0, 42.0, val_hm=72, config=good_val),
        run("EuroSAT", "coop", True, 1, 90.0, 80.0, val_hm=50, config=good_test),
        run("EuroSAT", "coop", True, 2, 92.0, 82.0, val_hm=52, config=good_test),
    ]
    (row,) = build_report(runs)[0].rows
    assert row.base == 61.0 and row.new == 41.0
    assert row.selection_value == 71.0 and row.configs_compared == 2


def test_configuration_with_a_seed_stopped_early_does_not_win_on_its_lucky_seed():
    lucky = (("lr", "0.05"),)
    steady = (("lr", "0.002"),)
    stopped = run("DTD", "coop", True, 2, 0.0, 0.0, val_hm=20, config=lucky)
    stopped.completed = False
    runs = [run("DTD", "coop", True, 1, 70.0, 50.0, val_hm=90, config=lucky), stopped,
            run("DTD", "coop", True, 1, 60.0, 40.0, val_hm=60, config=steady),
            run("DTD", "coop", True, 2, 62.0, 42.0, val_hm=62, config=steady)]
    (row,) = build_report(runs)[0].rows
    assert (row.base, row.new, row.seeds) == (61.0, 41.0, 2)


def test_average_row_is_hm_of_averaged_base_and_new_with_comparable_paper_average():
    runs = [run("DTD", "coop", True, 1, 90.0, 30.0, 1), run("EuroSAT", "coop", True, 1, 50.0, 70.0, 1)]
    (block,) = build_report(runs)
    assert [r.dataset for r in block.rows] == ["DTD", "EuroSAT"]
    assert block.average.base == 70.0 and block.average.new == 50.0
    assert block.average.hm == pytest.approx(harmonic_mean(70.0, 50.0))
    paper = load_paper_results()
    pb = (paper[("DTD", "CoOp", "dept")].base + paper[("EuroSAT", "CoOp", "dept")].base) / 2
    pn = (paper[("DTD", "CoOp", "dept")].new + paper[("EuroSAT", "CoOp", "dept")].new) / 2
    assert block.paper_average.base == pytest.approx(pb)
    assert block.paper_average.hm == pytest.approx(harmonic_mean(pb, pn))
    assert block.paper_printed == paper[("Average", "CoOp", "dept")]


def test_blocks_ordered_by_method_then_dept_and_datasets_in_paper_order():
    runs = [run(d, m, dept, 1, 70.0, 60.0, 1) for m in ("kgcoop", "coop") for dept in (True, False)
            for d in ("UCF101", "mydata", "Caltech101")]
    blocks = build_report(runs)
    assert [(b.method, b.dept) for b in blocks] == [("coop", False), ("coop", True), ("kgcoop", False), ("kgcoop", True)]
    assert [r.dataset for r in blocks[0].rows] == ["Caltech101", "UCF101", "mydata"]
    assert blocks[0].rows[2].paper is None
    assert blocks[0].paper_average is None  # one dataset is not the paper's: no comparable paper average


def test_markdown_and_csv_say_which_average_the_paper_printed():
    runs = [run(d, "coop", False, 1, 70.0, 60.0, 1) for d in PAPER_DATASETS]
    blocks = build_report(runs)
    md = format_markdown(blocks, experiment="exp")
    assert "| **Average** (11 datasets) |" in md
    one = format_markdown(build_report([run("DTD", "coop", False, 1, 70.0, 60.0, 1)]), experiment="exp")
    assert "| **Average** (1 dataset) |" in one
    assert "paper printed the 11-dataset average 81.50 / 69.77 / 75.18" in md
    assert "does not match" in md  # CoOp's printed row is not the mean of its own per-dataset rows
    rows = list(csv.DictReader(io.StringIO(format_csv(blocks))))
    printed = [r for r in rows if r["dataset"].startswith("Average (paper printed")]
    assert len(printed) == 1 and float(printed[0]["paper_hm"]) == 75.18
    ours = [r for r in rows if r["dataset"] == "Average"][0]
    assert float(ours["hm"]) == pytest.approx(harmonic_mean(70.0, 60.0), abs=1e-3)
    # the comparable paper average: recomputed from its 11 per-dataset rows (81.59 / 69.99), not the printed one
    assert float(ours["paper_base"]) == pytest.approx(81.59, abs=0.01)


def test_kgcoop_printed_average_matches_its_rows_so_no_mismatch_note():
    blocks = build_report([run(d, "kgcoop", True, 1, 70.0, 60.0, 1) for d in PAPER_DATASETS])
    md = format_markdown(blocks)
    assert "83.62 / 75.04 / 79.10" in md and "does not match" not in md


# -- through MLflow and the CLI ---------------------------------------------------------------------------------
@pytest.fixture()
def tracked(tmp_path):
    """A real SQLite MLflow store with train-style runs (what `dept-pipeline train --mlflow-uri` writes)."""
    from pipelines.tracking.client import Tracker, log_train_run
    from pipelines.trial.settings import Hyperparameters

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "rep")
    for seed, (base, new) in ((1, (80.0, 60.0)), (2, (84.0, 64.0))):
        hp = Hyperparameters(method="coop", seed=seed, epochs=2).resolved([4])
        final = {"epoch": 2, "train_loss": 1.0, "val_base_acc": 70.0, "val_new_acc": 50.0, "val_hm": 58.3,
                 "test_base_acc": base, "test_new_acc": new, "test_hm": harmonic_mean(base, new), "final": True,
                 "sweep_fusion_weights": [0.0, 0.5, 1.0], "sweep_test_hm": [50.0, 70.0, 80.0]}
        log_train_run(tracker, hp, {"dataset": "DTD"}, [{"epoch": 1, "train_loss": 2.0, "val_hm": 40.0}], final, None)
    return uri, tracker


def test_report_cli_reads_mlflow(tracked, tmp_path):
    uri, tracker = tracked
    runner = CliRunner()
    result = runner.invoke(main, ["report", "--mlflow-uri", uri, "--experiment", "rep"])
    assert result.exit_code == 0, result.output
    # λ and lr of the selected configuration; the one trained row is the dataset's winner
    assert "| DTD | **CoOp+DePT** (winner) | 0.70 | 3.5e-03 | 2 | 82.00 ± 2.83 | 62.00 ± 2.83 |" in result.output
    out = tmp_path / "table.csv"
    result = runner.invoke(main, ["report", "--mlflow-uri", uri, "--experiment", "rep", "--format", "csv",
                                  "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    dtd = [r for r in rows if r["dataset"] == "DTD"][0]
    assert float(dtd["base"]) == 82.0 and float(dtd["hm"]) == pytest.approx(harmonic_mean(82.0, 62.0), abs=1e-3)
    assert float(dtd["paper_hm"]) == load_paper_results()[("DTD", "CoOp", "dept")].hm
    # the sweep is in MLflow as one metric per fusion weight (no step axis standing for the weight)
    metrics = tracker.search("tags.seed = '1'")[0].data.metrics
    assert {k: v for k, v in metrics.items() if "_sweep/" in k} == {
        "test_hm_sweep/fw0.00": 50.0, "test_hm_sweep/fw0.50": 70.0, "test_hm_sweep/fw1.00": 80.0}


def test_report_errors_are_one_line(tracked, tmp_path):
    uri, _ = tracked
    runner = CliRunner()
    result = runner.invoke(main, ["report", "--mlflow-uri", uri, "--experiment", "nope"])
    assert result.exit_code == 2 and "no MLflow experiment 'nope'" in result.output
    assert len(result.output.strip().splitlines()) == 1
    missing = f"sqlite:///{tmp_path / 'none' / 'mlflow.db'}"
    result = runner.invoke(main, ["report", "--mlflow-uri", missing, "--experiment", "rep"])
    assert result.exit_code == 2 and "no MLflow store" in result.output
    result = runner.invoke(main, ["report", "--mlflow-uri", "http://127.0.0.1:9", "--experiment", "rep"])
    assert result.exit_code == 2 and "unreachable" in result.output
    assert len(result.output.strip().splitlines()) == 1
