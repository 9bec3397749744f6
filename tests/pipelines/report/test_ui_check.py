"""The real-browser check (scripts/ui_check.sh): a real ``mlflow server`` on 127.0.0.1 and headless Chromium over
a small store written by the project's own logging code (the driver's trial logger, the zero-shot run and the
parent summary with its figures; no Ray, no training), so it runs in well under a minute of browser time."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from pipelines.metrics import harmonic_mean
from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "ui_check.sh"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WEIGHTS = [round(0.05 * i, 2) for i in range(21)]


def write_store(folder: Path, experiment: str = "ui-check") -> str:
    """A parent run of dataset ``demo`` with CLIP zero-shot and 8 trials (CoOp / KgCoOp, with and without DePT,
    two learning rates, seed 1; one stopped early), its summary and figures; returns the SQLite path."""
    from pipelines.tracking.client import Tracker
    from pipelines.tracking.summary import write_parent_summary
    from pipelines.tracking.trial_logger import MlflowTrialLogger, TrialRecord
    from pipelines.trial.context import TrialContext
    from pipelines.trial.zero_shot import ZeroShotResult, log_zero_shot_run

    db = folder / "mlflow.db"
    tracker = Tracker(f"sqlite:///{db}", experiment)
    ctx = TrialContext(features_url=str(folder / "features"), dataset="demo", model="dept-tiny-vit",
                       pretrained="none", weights_id="w", fingerprint="f" * 16, store_shots=4, seeds=(1,))
    parent = tracker.create_parent("demo", ctx.tags(), name="demo")
    zs = {"test_base_acc": 55.25, "test_new_acc": 67.0, "val_base_acc": 50.0, "val_new_acc": 60.0}
    zs.update(test_hm=harmonic_mean(55.25, 67.0), val_hm=harmonic_mean(50.0, 60.0))
    log_zero_shot_run(tracker, ZeroShotResult("demo", "a photo of a {}.", zs, {"test_base": 40, "test_new": 40,
                                                                              "val_base": 8, "val_new": 8},
                                              ctx.tags()), parent_run_id=parent)
    logger = MlflowTrialLogger(tracker, parent, key="ui-check/demo", context=ctx, space_name="ui", metric="val_hm",
                               mode="max", experiment_path=str(folder / "tune"))
    records = []
    i = 0
    for method in ("coop", "kgcoop"):
        for dept in (False, True):
            for lr in (0.002, 0.01):
                i += 1
                config = {"method": method, "dept": dept, "lr": lr, "epochs": 3, "loss_weight": round(0.1 * i, 2),
                          "fusion_weight": 0.7, "seed": 1}
                trial_id = f"t{i:02d}"
                stopped = i == 8
                base, new = 50.0 + 3 * i + 10 * dept, 70.0 - i
                for epoch in (1, 2) if stopped else (1, 2, 3):
                    result = {"epoch": epoch, "train_loss": 2.0 / epoch, "val_base_acc": base - 5,
                              "val_new_acc": new - 5, "val_hm": harmonic_mean(base - 5, new - 5) + epoch}
                    if epoch == 3:
                        result.update(final=True, test_base_acc=base, test_new_acc=new,
                                      test_hm=harmonic_mean(base, new), sweep_fusion_weights=WEIGHTS,
                                      sweep_test_base_acc=[base - 10 * (0.7 - w) * dept for w in WEIGHTS],
                                      sweep_test_hm=[harmonic_mean(base - 10 * (0.7 - w) * dept, new)
                                                     for w in WEIGHTS],
                                      sweep_val_hm=[result["val_hm"] + w for w in WEIGHTS])
                    logger.log_result(trial_id, config, result)
                status = "stopped_early" if stopped else "completed"
                logger.finish(trial_id, config, status)
                records.append(TrialRecord(trial_id, logger.run_for(trial_id, config), ctx.hyperparameters(config),
                                           status, result))
    logger.close()
    write_parent_summary(tracker, parent, records, metric="val_hm", mode="max", space_yaml="ui: check\n",
                         workdir=folder / "summary", dataset="demo")
    tracker.client.set_terminated(parent, "FINISHED")
    return str(db)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium)")
def test_ui_check_clicks_from_every_entry_to_the_runs_and_the_view_fits_1600_px(tmp_path):
    db = write_store(tmp_path)
    out = tmp_path / "ui"
    proc = subprocess.run(["bash", str(SCRIPT), db, str(out), "ui-check"], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    checks = json.loads((out / "checks.json").read_text())
    assert all(c["ok"] for c in checks), [c for c in checks if not c["ok"]]
    pages = {c["page"] for c in checks}
    assert pages == {"printed", "assistant-closed", "home", "list", "trial", "compare", "charts", "figures"}

    def passed(page, *words):
        return [c for c in checks if c["page"] == page and not c.get("note") and all(w in c["check"] for w in words)]

    # Every way in ends on the runs table, clicked: the printed link at once, Home and the list after the switch.
    assert passed("printed", "shows the runs table")
    for page in ("home", "list"):
        assert passed(page, "Model training switch", "opens the runs table"), page
        assert passed(page, "from then on", "opens the runs table"), page
    assert passed("home", "views menu opens the saved view")
    # The coefficients and the test base / new / HM with the selection metric beside the Assistant, no scrolling;
    # with it closed the selection split's base and new too.
    beside = {c["check"].split()[1] for c in passed("printed", "in sight, header whole")}
    assert beside == {"params.`loss_weight`", "params.`fusion_weight`", "params.`lr`", "metrics.`val_hm`",
                      "metrics.`test_base_acc`", "metrics.`test_new_acc`", "metrics.`test_hm`"}
    closed = {c["check"].split()[1] for c in passed("assistant-closed", "in sight, header whole")}
    assert closed == beside | {"metrics.`val_base_acc`", "metrics.`val_new_acc`"}
    assert passed("printed", "no horizontal scrolling") and passed("assistant-closed", "no horizontal scrolling")
    assert passed("charts", "['loss_weight', 'fusion_weight', 'lr', 'val_hm', 'test_hm']")
    for page in ("runs", "runs_assistant_closed", "home_first_click", "trial", "compare", "charts", "figures"):
        assert (out / f"{page}.png").stat().st_size > 20_000, page  # a rendered page, not a blank one
