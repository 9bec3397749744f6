"""The tie rule and the plain method at loss weight 0 (pipelines.selection): an exact tie on the selection metric
is broken by the written rule whatever order the runs come in, and shown as a tie; DePT at loss weight 0 is named,
grouped and drawn as the plain method; the report marks the dataset's winner (the summary's) and shows lr and
loss weight in every format."""
from __future__ import annotations

import csv
import io
import itertools

import pytest

from pipelines.report.formats import format_csv, format_latex, format_markdown
from pipelines.report.table import RunInfo, build_report, dataset_winners
from pipelines.selection import (
    TIE_RULE,
    SeedRun,
    canonical_params,
    config_key,
    dept_in_effect,
    describe_params,
    method_label,
    rank,
    tie_note,
    winner,
)


def params(method="cocoop", lw=0.7, lr=0.002, dept=True):
    effective = dept and lw > 0
    return {"method": method, "dept": str(dept).lower(), "loss_weight": str(lw), "fusion_weight": "0.7",
            "lr": str(lr), "dept_effective": str(effective).lower()}


def seed_run(p, val, seed="1", t=0):
    return SeedRun(tuple(sorted(canonical_params(p).items())), seed, "completed", {"val_hm": val}, start_time=t,
                   params=p)


def test_an_exact_tie_goes_to_the_lower_lr_whatever_order_the_runs_come_in():
    runs = [seed_run(params(lr=0.01), 65.2116, t=1), seed_run(params(lr=0.002), 65.2116, t=2),
            seed_run(params(lr=0.005), 64.0, t=3)]
    winners = set()
    for order in itertools.permutations(runs):
        ranked = rank(order, "val_hm", "max")
        winners.add(dict(winner(ranked, "val_hm").config)["lr"])
        assert tie_note(ranked, "val_hm") == ("tie on val_hm 65.21 with 1 other configuration (CoCoOp+DePT λ0.70 "
                                              "lr1.0e-02), broken by lower lr (2.0e-03 < 1.0e-02)")
    assert winners == {"0.002"}  # not whichever was logged first or last


def test_a_tie_prefers_the_lower_loss_weight_the_plain_method_first_then_the_method_name():
    plain, dept = params("kgcoop", lw=0.0, lr=0.01), params("kgcoop", lw=0.5, lr=0.002)
    ranked = rank([seed_run(dept, 60.0), seed_run(plain, 60.0)], "val_hm", "max")
    assert dict(ranked[0].config)["dept"] == "false"  # lw 0 beats lw 0.5 before lr is looked at
    assert tie_note(ranked, "val_hm").endswith("broken by lower loss weight (0.00 < 0.50)")
    same = [seed_run(params("coop", lr=0.002), 60.0), seed_run(params("cocoop", lr=0.002), 60.0)]
    ranked = rank(same, "val_hm", "max")
    assert dict(ranked[0].config)["method"] == "cocoop"
    assert tie_note(ranked, "val_hm").endswith("broken by method name (cocoop < coop)")
    # No tie: no note; a tie among the runners-up only is not the winner's tie either.
    ranked = rank([seed_run(params(lr=0.002), 61.0), seed_run(params(lr=0.01), 60.0),
                   seed_run(params(lr=0.005), 60.0)], "val_hm", "max")
    assert tie_note(ranked, "val_hm") == ""
    assert "lower loss weight" in TIE_RULE and "lower lr" in TIE_RULE


def test_a_tie_is_only_among_complete_configurations():
    full = [seed_run(params(lr=0.01), 60.0, "1"), seed_run(params(lr=0.01), 60.0, "2")]
    partial = [seed_run(params(lr=0.002), 60.0, "1")]  # the lower lr, but its seed 2 is missing
    ranked = rank(full + partial, "val_hm", "max", seeds=["1", "2"])
    assert dict(winner(ranked, "val_hm").config)["lr"] == "0.01" and tie_note(ranked, "val_hm") == ""


def test_dept_at_loss_weight_zero_is_labelled_and_grouped_as_the_plain_method():
    from pipelines.figures import points_from_records
    from pipelines.tracking.client import run_name
    from pipelines.tracking.trial_logger import TrialRecord
    from pipelines.trial.settings import Hyperparameters

    zero = Hyperparameters(method="coop", dept=True, loss_weight=0.0, seed=1).resolved()
    off = Hyperparameters(method="coop", dept=False, seed=1).resolved()
    on = Hyperparameters(method="coop", dept=True, loss_weight=0.3, seed=1).resolved()
    assert config_key(zero) == config_key(off) != config_key(on)  # one configuration, however it was asked for
    assert not dept_in_effect(dict(config_key(zero))) and dept_in_effect(dict(config_key(on)))
    assert method_label("coop", dept_in_effect(zero.as_params())) == "CoOp"
    assert describe_params(zero.as_params()) == "CoOp lr3.5e-03"
    assert describe_params(on.as_params()) == "CoOp+DePT λ0.30 lr3.5e-03"
    assert run_name(zero) == "coop lr3.5e-03 s1" and run_name(on).startswith("coop+DePT lw0.30")
    (point,) = points_from_records([TrialRecord("t", "r", zero, "completed", {"val_hm": 1.0})], "val_hm")
    assert (point.dept, point.loss_weight) == (False, 0.0)
    # Runs logged before dept_effective existed keep what they asked for.
    assert dept_in_effect({"dept": "true", "loss_weight": "0.0"}) and not dept_in_effect({"dept": "false"})


def info(method, lw, lr, val, base, new, *, dataset="DTD", seed="1", t=0):
    p = params(method, lw, lr)
    config = tuple(sorted(canonical_params(p).items()))
    return RunInfo(run_id=f"{method}{lw}{lr}{seed}", dataset=dataset, method=method, dept=dept_in_effect(p),
                   seed=seed, config=config, selection_metric="val_hm", selection_mode="max",
                   metrics={"val_hm": val, "test_base_acc": base, "test_new_acc": new}, seeds=("1",), start_time=t)


@pytest.fixture()
def runs():
    # CoCoOp+DePT ties on validation at both lrs (the lower one wins the cell and the dataset); its lr 0.01 is the
    # better on test, which must not matter. CoCoOp at loss weight 0 is the plain method's row.
    return [info("cocoop", 0.7, 0.01, 65.2116, 60.0, 66.0, t=1), info("cocoop", 0.7, 0.002, 65.2116, 58.0, 67.0, t=2),
            info("cocoop", 0.0, 0.002, 63.5, 55.5, 67.7), info("kgcoop", 0.7, 0.002, 64.0, 57.6, 67.0),
            info("kgcoop", 0.0, 0.002, 60.6, 55.2, 67.2)]


def test_the_report_marks_the_winner_and_shows_lr_and_loss_weight_in_every_format(runs):
    (won,) = dataset_winners(runs).values()
    assert won.name == "CoCoOp+DePT λ0.70 lr2.0e-03" and won.value == 65.2116
    assert won.tie == ("tie on val_hm 65.21 with 1 other configuration (CoCoOp+DePT λ0.70 lr1.0e-02), broken by "
                       "lower lr (2.0e-03 < 1.0e-02)")
    for order in (runs, runs[::-1]):
        blocks = build_report(order, paper={})
        rows = {r.label: r for b in blocks for r in b.rows}
        assert set(rows) == {"CoCoOp", "CoCoOp+DePT", "KgCoOp", "KgCoOp+DePT"}  # λ 0 rows are the plain methods
        assert [label for label, r in rows.items() if r.winner] == ["CoCoOp+DePT"]
        assert (rows["CoCoOp+DePT"].lr, rows["CoCoOp+DePT"].base) == (0.002, 58.0)

    md = format_markdown(blocks, experiment="e")
    assert "| DTD | **CoCoOp+DePT** (winner) | 0.70 | 2.0e-03 | 1 | 58.00 | 67.00 |" in md
    assert "| DTD | CoCoOp | 0.00 | 2.0e-03 | 1 | 55.50 |" in md
    assert f"- winner {won.line()}" in md and TIE_RULE in md
    table = list(csv.DictReader(io.StringIO(format_csv(blocks))))
    marked = [r for r in table if r["winner"] == "true"]
    assert [(r["method"], r["dept"], r["lr"], r["loss_weight"]) for r in marked] == [("cocoop", "true", "2.0e-03",
                                                                                       "0.70")]
    assert "tie on val_hm 65.21" in marked[0]["note"]
    assert {r["winner"] for r in table if r["row"] == "dataset"} == {"true", "false"}
    tex = format_latex(blocks, experiment="e")
    assert r"DTD & CoCoOp+DePT$^\star$ & 0.70 & 2.0e-03 & 1 &" in tex and "% winner DTD: CoCoOp+DePT" in tex


SPACE = """
description: two loss weights (0, the plain method, and 0.5) x two learning rates, two seeds, one epoch
params:
  method: coop
  dept: true
  loss_weight: {grid: [0.0, 0.5]}
  lr: {grid: [2.0e-3, 1.0e-2]}
  epochs: 1
  warmup_epochs: 0
  batch_size: 4
  n_ctx: 2
  ctx_init: ""
seeds: [1, 2]
num_samples: 1
metric: val_hm
mode: max
scheduler: none
searcher: {type: random, seed: 0}
"""


@pytest.mark.slow
def test_tune_summary_and_report_name_the_same_winner_with_its_lr(demo_store, tmp_path):
    import re

    from click.testing import CliRunner

    from pipelines.cli import main

    (tmp_path / "space.yaml").write_text(SPACE)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tuned = CliRunner().invoke(main, [
        "tune", "--features", demo_store, "--dataset", "all", "--space", str(tmp_path / "space.yaml"),
        "--storage", str(tmp_path / "tune"), "--mlflow-uri", uri, "--experiment", "one"], catch_exceptions=False)
    assert tuned.exit_code == 0, tuned.output
    (summary,) = [line.split() for line in tuned.output.splitlines() if re.match(r"demo\s+CoOp", line)]
    label, lw, lr = summary[1], float(summary[2]), float(summary[4])
    summary_tie = [line for line in tuned.output.splitlines() if line.startswith("demo: tie on")]

    reported = CliRunner().invoke(main, ["report", "--mlflow-uri", uri, "--experiment", "one"])
    assert reported.exit_code == 0, reported.output
    rows = [line for line in reported.output.splitlines() if line.startswith("| demo | ")]
    labels = {line.split(" | ")[1].replace("**", "").replace(" (winner)", "") for line in rows}
    assert {"CoOp", "CoOp+DePT"} <= labels  # loss weight 0 is the plain method's row, not a "+DePT" one
    (marked,) = [line.split(" | ") for line in rows if "(winner)" in line]
    assert marked[1] == f"**{label}** (winner)"  # the summary's winner is the row marked
    assert float(marked[2]) == lw and float(marked[3]) == lr  # with its loss weight and lr shown
    (line,) = [line for line in reported.output.splitlines() if line.startswith("- winner demo: ")]
    assert line.startswith(f"- winner demo: {label}") and f"lr{lr:.1e}" in line
    # A tie, where there is one, is shown by both and broken the same way.
    assert bool(summary_tie) == ("tie on" in line)
    if summary_tie:
        assert summary_tie[0].removeprefix("demo: ") in line

    csv_out = CliRunner().invoke(main, ["report", "--mlflow-uri", uri, "--experiment", "one", "--format", "csv"])
    won = list(csv.DictReader(io.StringIO(csv_out.output)))
    assert [float(r["lr"]) for r in won if r["winner"] == "true"] == [lr]
