"""One rule names the winner (pipelines.selection): the tune summary table, the parent run's best_* and ``report``
agree on a real MLflow store holding an incomplete configuration, a cell with no complete configuration, and a
duplicate run of one (configuration, seed) left by an aborted attempt."""
from __future__ import annotations

import math
import time

import pytest

from pipelines.selection import SeedRun, one_per_seed, rank, winner

VAL = {"val_base_acc": 50.0, "val_new_acc": 50.0}


def test_rule_needs_every_seed_and_counts_one_run_per_seed():
    def run(config, seed, status, val, t=0):
        return SeedRun(config, seed, status, {"val_hm": val}, start_time=t)

    runs = [run("a", "1", "completed", 60.0, t=1), run("a", "1", "completed", 20.0, t=0),  # older duplicate
            run("a", "1", "stopped_early", 99.0, t=5),  # newer, but not completed: the completed one counts
            run("a", "2", "completed", 70.0), run("b", "1", "completed", 95.0), run("b", "2", "error", 0.0)]
    assert len(one_per_seed(runs)) == 4
    ranked = rank(runs, "val_hm", "max")
    assert [g.config for g in ranked] == ["a", "b"] and ranked[0].mean("val_hm") == 65.0
    assert winner(ranked, "val_hm").config == "a"
    assert not ranked[1].complete and ranked[1].seeds_text() == "1/2 incomplete"
    assert math.isnan(ranked[1].std("val_hm"))  # one seed: no spread, never "± 0.00"
    assert winner(rank(runs[4:], "val_hm", "max"), "val_hm") is None  # nothing complete: no winner
    assert rank(runs, "val_hm", "min")[0].config == "a"  # incomplete ones never lead, whatever the direction


@pytest.fixture()
def store(tmp_path):
    """Trials logged through the driver's MLflow logger into a SQLite store: an aborted first attempt (its own
    parent, left FAILED) holding a duplicate of (CoOp+DePT lr 0.002, seed 1), then the real attempt."""
    from pipelines.tracking.client import Tracker
    from pipelines.tracking.trial_logger import MlflowTrialLogger, TrialRecord
    from pipelines.trial.context import TrialContext

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "win")
    ctx = TrialContext(features_url=str(tmp_path / "store"), dataset="demo", model="dept-tiny-vit",
                       pretrained="none", weights_id="w", fingerprint="f" * 16, store_shots=4, seeds=(1, 2))
    tags = {"selection_metric": "val_hm", "selection_mode": "max", "features_url": ctx.features_url}

    def attempt(name, trials):
        parent = tracker.create_parent("demo", tags, name=name)
        logger = MlflowTrialLogger(tracker, parent, key=f"win/{name}", context=ctx, space_name="s",
                                   metric="val_hm", mode="max", experiment_path=str(tmp_path / name))
        records = []
        for trial_id, config, status, val, base, new in trials:
            result = {"epoch": 1, "train_loss": 1.0, **VAL, "val_hm": val}
            logger.log_result(trial_id, config, result)
            if status == "completed":
                result = {**result, "epoch": 2, "final": True, "test_base_acc": base, "test_new_acc": new,
                          "test_hm": 2 * base * new / (base + new)}
                logger.log_result(trial_id, config, result)
            logger.finish(trial_id, config, status)
            records.append(TrialRecord(trial_id, logger._runs[trial_id], ctx.hyperparameters(config), status, result))
            time.sleep(0.005)  # start times (ms) tell the attempts apart
        logger.close()
        return parent, records

    coop = {"method": "coop", "lr": 0.002}
    aborted, _ = attempt("aborted", [("a1-old", {**coop, "seed": 1}, "completed", 20.0, 10.0, 10.0)])
    tracker.client.set_terminated(aborted, "FAILED")
    parent, records = attempt("demo (s)", [
        ("a1", {**coop, "seed": 1}, "completed", 60.0, 70.0, 50.0),
        ("a2", {**coop, "seed": 2}, "completed", 70.0, 74.0, 54.0),
        # the best val HM, on one seed; its other seed was stopped early
        ("b1", {"method": "coop", "lr": 0.01, "seed": 1}, "completed", 90.0, 80.0, 60.0),
        ("b2", {"method": "coop", "lr": 0.01, "seed": 2}, "stopped_early", 30.0, 0, 0),
        # CoCoOp+DePT: one seed completed, the other failed: no complete configuration in its cell
        ("c1", {"method": "cocoop", "lr": 0.002, "seed": 1}, "completed", 95.0, 90.0, 70.0),
        ("c2", {"method": "cocoop", "lr": 0.002, "seed": 2}, "error", 0.0, 0, 0),
    ])
    return uri, tracker, parent, records


@pytest.mark.slow
def test_tune_summary_parent_run_and_report_name_the_same_winner(store, tmp_path):
    from pipelines.report.formats import format_markdown
    from pipelines.report.table import build_report, collect_runs
    from pipelines.tracking.summary import write_parent_summary
    from pipelines.tune.runner import DatasetOutcome, best_table

    uri, tracker, parent, records = store
    best, best_trial = write_parent_summary(tracker, parent, records, metric="val_hm", mode="max", space_yaml="",
                                            workdir=tmp_path / "summary", dataset="demo")
    # Tune's summary: CoOp+DePT lr 0.002 over both seeds; not lr 0.01 (90 on one seed), not CoCoOp (95 on one).
    assert best.params["lr"] == 0.002 and best.params["method"] == "coop" and best.complete
    assert best.mean("val_hm") == 65.0 and best_trial.trial_id == "a2"
    table = best_table([DatasetOutcome("demo", parent, "", records, best, best_trial)], "val_hm")
    (row,) = [line.split() for line in table.splitlines() if line.startswith("demo")]
    assert row[1:7] == ["CoOp+DePT", "0.70", "0.70", "2.00e-03", "2", "65.00"] and row[7:9] == ["72.00", "52.00"]

    run = tracker.client.get_run(parent)
    assert run.data.metrics["best_val_hm"] == 65.0 and run.data.metrics["best_seeds"] == 2
    assert run.data.metrics["best_test_base_acc"] == 72.0 and run.data.metrics["best_test_new_acc"] == 52.0
    assert run.data.tags["best.lr"] == "0.002" and run.data.tags["best_trial_id"] == "a2"

    blocks = build_report(collect_runs(uri, "win"), paper={})
    rows = {(b.method, b.dept): b.rows[0] for b in blocks}
    coop = rows[("coop", True)]
    # The same configuration and numbers; the aborted attempt's duplicate of seed 1 is not counted (with it,
    # base would be (70 + 74 + 10) / 3).
    assert (coop.base, coop.new, coop.seeds, coop.selection_value) == (72.0, 52.0, 2, 65.0)
    assert coop.complete and coop.base_std == pytest.approx(math.sqrt(8.0))
    cocoop = rows[("cocoop", True)]
    assert not cocoop.complete and cocoop.seeds_text == "1/2 incomplete" and math.isnan(cocoop.base_std)
    text = format_markdown(blocks, experiment="win")
    assert "| demo | CoCoOp+DePT | 0.70 | 2.0e-03 | 1/2 incomplete | 90.00 | 70.00 |" in text and "± 0.00" not in text
    assert "| demo | **CoOp+DePT** (winner) | 0.70 | 2.0e-03 | 2 |" in text  # the summary's winner, marked

    # Without the complete configuration, tune names no winner and shows the leading one as incomplete.
    partial = [r for r in records if r.trial_id not in ("a1", "a2")]
    none_best, _ = write_parent_summary(tracker, parent, partial, metric="val_hm", mode="max", space_yaml="",
                                        workdir=tmp_path / "partial", dataset="demo")
    assert none_best is None
    assert tracker.client.get_run(parent).data.tags["best"].startswith("none: no configuration has all 2 seed")
    table = best_table([DatasetOutcome("demo", parent, "", partial, None, None)], "val_hm")
    assert "1/2 incomplete" in table and "CoCoOp+DePT" in table
