"""``report`` opens with a 'CLIP (zero-shot)' row per dataset and in the average, beside the paper's CLIP numbers,
read back from a real MLflow (SQLite) store holding zero-shot runs (top-level and under a parent, as ``tune`` logs
them) and trained runs; every trained row says how far its HM is from zero-shot's."""
from __future__ import annotations

import csv
import io
import time

import pytest
from click.testing import CliRunner

from pipelines.cli import main
from pipelines.metrics import harmonic_mean
from pipelines.report.table import load_paper_results

FEATURE_TAGS = {"backbone": "ViT-B-16", "pretrained": "openai", "weights_id": "openai", "feature_fingerprint": "f" * 64,
                "features_url": "/store/ViT-B-16/openai", "objective": "val"}


def zero_shot_result(dataset: str, base: float, new: float):
    from pipelines.trial.zero_shot import ZeroShotResult

    metrics = {"test_base_acc": base, "test_new_acc": new, "test_hm": harmonic_mean(base, new),
               "val_base_acc": base, "val_new_acc": new, "val_hm": harmonic_mean(base, new)}
    return ZeroShotResult(dataset, "{} texture." if dataset == "DTD" else "a centered satellite photo of {}.",
                          metrics, {"test_base": 100, "test_new": 100, "val_base": 20, "val_new": 20},
                          {**FEATURE_TAGS, "dataset": dataset})


@pytest.fixture()
def store(tmp_path):
    from pipelines.tracking.client import Tracker, log_train_run
    from pipelines.trial.settings import Hyperparameters
    from pipelines.trial.zero_shot import log_zero_shot_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "zs")
    log_zero_shot_run(tracker, zero_shot_result("DTD", 10.0, 10.0))  # older: superseded by the next one
    time.sleep(0.01)
    log_zero_shot_run(tracker, zero_shot_result("DTD", 50.0, 60.0))
    parent = tracker.create_parent("EuroSAT", {**FEATURE_TAGS}, name="EuroSAT (smoke)")
    log_zero_shot_run(tracker, zero_shot_result("EuroSAT", 55.0, 65.0), parent_run_id=parent)
    for dataset, (base, new) in (("DTD", (80.0, 50.0)), ("EuroSAT", (90.0, 40.0))):
        hp = Hyperparameters(method="coop", seed=1, epochs=2).resolved([16])
        final = {"epoch": 2, "val_hm": 60.0, "test_base_acc": base, "test_new_acc": new,
                 "test_hm": harmonic_mean(base, new), "final": True}
        log_train_run(tracker, hp, {**FEATURE_TAGS, "dataset": dataset}, [], final, None)
    return uri


def test_report_has_the_zero_shot_row_from_a_real_mlflow_store(store):
    result = CliRunner().invoke(main, ["report", "--mlflow-uri", store, "--experiment", "zs"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    paper = load_paper_results()
    dtd, euro = paper[("DTD", "CLIP", "zero-shot")], paper[("EuroSAT", "CLIP", "zero-shot")]
    hm_dtd, hm_euro = harmonic_mean(50.0, 60.0), harmonic_mean(55.0, 65.0)
    assert "HM vs zero-shot" in lines[2]
    rows = [ln for ln in lines if ln.startswith("| ")][2:]  # after the header and its rule
    # Zero-shot first, as in the paper's tables; the newest DTD run; the EuroSAT one logged under a parent.
    assert rows[0] == (f"| DTD | CLIP (zero-shot) | — | — | — | 50.00 | 60.00 | {hm_dtd:.2f} | | {dtd.base:.2f} | "
                       f"{dtd.new:.2f} | {dtd.hm:.2f} |")
    assert rows[1].startswith(f"| EuroSAT | CLIP (zero-shot) | — | — | — | 55.00 | 65.00 | {hm_euro:.2f} | | "
                              f"{euro.base:.2f} |")
    avg_hm = harmonic_mean(52.5, 62.5)
    pb, pn = (dtd.base + euro.base) / 2, (dtd.new + euro.new) / 2
    assert rows[2] == (f"| **Average** (2 datasets) | CLIP (zero-shot) | | | | 52.50 | 62.50 | **{avg_hm:.2f}** | | "
                       f"{pb:.2f} | {pn:.2f} | {harmonic_mean(pb, pn):.2f} |")
    # The trained rows: their HM minus zero-shot's, per dataset and for the average over the same datasets.
    coop_dtd = [r for r in rows if r.startswith("| DTD | **CoOp+DePT** (winner) | 0.70 | 3.5e-03 |")][0]
    assert f"| {harmonic_mean(80.0, 50.0):.2f} | {harmonic_mean(80.0, 50.0) - hm_dtd:+.2f} |" in coop_dtd
    coop_avg = [r for r in rows if r.startswith("| **Average** (2 datasets) | CoOp+DePT |")][0]
    assert f"| {harmonic_mean(85.0, 45.0) - avg_hm:+.2f} |" in coop_avg
    assert "CLIP (zero-shot): the paper printed the 11-dataset average 69.34 / 74.22 / 71.70." in result.output

    result = CliRunner().invoke(main, ["report", "--mlflow-uri", store, "--experiment", "zs", "--format", "csv"])
    assert result.exit_code == 0, result.output
    table = list(csv.DictReader(io.StringIO(result.output)))
    zs = [r for r in table if r["method"] == "clip"]
    assert [r["dataset"] for r in zs] == ["DTD", "EuroSAT", "Average", "Average (paper printed, 11 datasets)"]
    assert float(zs[0]["hm"]) == pytest.approx(hm_dtd, abs=1e-3) and float(zs[0]["paper_base"]) == dtd.base
    assert zs[0]["seeds"] == "" and zs[0]["hm_vs_zero_shot"] == ""
    coop = [r for r in table if r["method"] == "coop" and r["dataset"] == "EuroSAT"][0]
    assert float(coop["hm_vs_zero_shot"]) == pytest.approx(harmonic_mean(90.0, 40.0) - hm_euro, abs=1e-3)


def test_report_without_zero_shot_runs_keeps_its_columns(tmp_path):
    from pipelines.tracking.client import Tracker, log_train_run
    from pipelines.trial.settings import Hyperparameters

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    hp = Hyperparameters(method="coop", seed=1, epochs=2).resolved([16])
    log_train_run(Tracker(uri, "plain"), hp, {"dataset": "DTD"}, [],
                  {"epoch": 2, "val_hm": 1.0, "test_base_acc": 70.0, "test_new_acc": 60.0, "final": True}, None)
    result = CliRunner().invoke(main, ["report", "--mlflow-uri", uri, "--experiment", "plain"])
    assert result.exit_code == 0, result.output
    assert "zero-shot" not in result.output
    header = "| Dataset | Method | λ | lr | Seeds | Base | New | HM | Paper base | Paper new | Paper HM |"
    assert header in result.output
