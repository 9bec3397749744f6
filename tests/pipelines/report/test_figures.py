"""The figures (pipelines.figures): what each draws, nothing clipped at 800 px, the sweep read back from MLflow
metric names, and ``report --plots`` on a real SQLite store."""
from __future__ import annotations

import statistics

import pytest
from click.testing import CliRunner

from pipelines.figures import TrialPoint, make_figures, points_from_runs, save_figures
from pipelines.metrics import harmonic_mean

WEIGHTS = [0.0, 0.5, 0.7, 1.0]


def point(method, dept, lw, lr, seed, base, new, val, completed=True):
    sweep = {"test_base_acc": {w: base - 10 * (0.7 - w) for w in WEIGHTS},
             "test_hm": {w: harmonic_mean(base - 10 * (0.7 - w), new) for w in WEIGHTS}}
    config = (("dept", dept), ("loss_weight", lw), ("lr", lr), ("method", method))
    return TrialPoint(method, dept, config, str(seed), lw, 0.7 if dept else 0.0, completed, val,
                      test={"test_base_acc": base, "test_new_acc": new, "test_hm": harmonic_mean(base, new)}
                      if completed else {}, sweep=sweep if completed else {})


@pytest.fixture()
def points():
    pts = []
    for seed, d in ((1, 0.0), (2, 2.0)):
        # coop+DePT at two loss weights; at 0.3 the lr best on validation (0.002) is the worse on test
        pts += [point("coop", True, 0.3, "0.002", seed, 70 + d, 60 + d, val=80),
                point("coop", True, 0.3, "0.01", seed, 90 + d, 80 + d, val=50),
                point("coop", True, 0.7, "0.002", seed, 75 + d, 58 + d, val=70),
                point("coop", False, 0.0, "0.002", seed, 60 + d, 62 + d, val=60),
                point("kgcoop", True, 0.7, "0.002", seed, 72 + d, 66 + d, val=75)]
    pts.append(point("kgcoop", True, 0.3, "0.002", 1, 99, 99, val=99))
    pts.append(point("kgcoop", True, 0.3, "0.002", 2, 0, 0, val=0, completed=False))  # incomplete: never drawn
    return pts


def _line(ax, label):
    (line,) = [c for c in ax.containers if c.get_label() == label] or [None]
    return line


def test_loss_weight_figure_draws_per_series_the_validation_winner_mean_and_spread(points):
    figs = make_figures(points, dataset="DTD")
    assert set(figs) == {"base_new_hm_vs_loss_weight.png", "fusion_weight_sweep.png", "base_vs_new.png"}
    base_ax, new_ax, hm_ax = figs["base_new_hm_vs_loss_weight.png"].axes
    coop = _line(base_ax, "CoOp+DePT")
    xs, ys = coop.lines[0].get_data()
    # The curve starts at loss weight 0 from the plain method (CoOp, base 61), then per λ its validation winner.
    assert list(xs) == [0.0, 0.3, 0.7]
    assert list(ys) == [61.0, 71.0, 76.0]  # lr 0.002 at 0.3 (validation 80 > 50), not lr 0.01's 91 on test
    kg = _line(base_ax, "KgCoOp+DePT")
    assert list(kg.lines[0].get_data()[0]) == [0.7]  # no plain KgCoOp run; its 0.3 configuration is incomplete
    bars = coop.lines[2][0].get_segments()  # error bars: mean ± std over the two seeds
    assert bars[1][:, 1] == pytest.approx([71 - statistics.stdev([70, 72]), 71 + statistics.stdev([70, 72])])
    hm = hm_ax.containers[0].lines[0].get_data()[1]  # the legend labels the first panel; same series order
    assert hm[1] == pytest.approx(harmonic_mean(71, 61))  # HM of the seed means
    assert new_ax.containers[0].lines[0].get_data()[1][1] == 61.0
    # the method without DePT: a level line at its mean
    (level,) = [c for c in base_ax.collections if c.get_label() == "CoOp"]
    assert level.get_segments()[0][:, 1] == pytest.approx([61.0, 61.0])


def test_sweep_figure_is_a_curve_over_the_fusion_weight_of_the_best_configuration(points):
    figs = make_figures(points, dataset="DTD")
    (ax,) = figs["fusion_weight_sweep.png"].axes
    (hm,) = [line for line in ax.lines if line.get_label() == "test HM"]
    xs, ys = hm.get_data()
    assert list(xs) == WEIGHTS and ax.get_xlim() == (0.0, 1.0)
    # winner on validation: coop+DePT lw 0.3 lr 0.002 (val 80); mean over seeds of its swept HM
    assert ys[0] == pytest.approx(statistics.fmean([harmonic_mean(63, 60), harmonic_mean(65, 62)]))
    assert "CoOp+DePT λ=0.30" in ax.get_title()
    # the caller's winner, when given, is the one drawn
    best = points[2].config
    (ax,) = make_figures(points, dataset="DTD", best=best)["fusion_weight_sweep.png"].axes
    assert "λ=0.70" in ax.get_title()


def test_scatter_has_every_completed_trial_and_the_zero_shot_point(points):
    figs = make_figures(points, dataset="DTD", zero_shot={"test_base_acc": 55.0, "test_new_acc": 65.0})
    (ax,) = figs["base_vs_new.png"].axes
    drawn = sum(len(c.get_offsets()) for c in ax.collections if not c.get_label().startswith("CLIP"))
    assert drawn == sum(p.completed for p in points)
    (star,) = [c for c in ax.collections if c.get_label() == "CLIP zero-shot"]
    assert star.get_offsets().tolist() == [[55.0, 65.0]]
    assert "every completed trial (11)" in ax.get_title()


def test_nothing_is_clipped_and_the_pngs_are_800_px_wide(points, tmp_path):
    import matplotlib.image
    from matplotlib.text import Text

    figs = make_figures(points, dataset="a-long-dataset-name", zero_shot={"test_base_acc": 55.0, "test_new_acc": 65.0})
    for name, fig in figs.items():
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        assert len([t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]) > 10, name
        # Everything drawn (titles, labels, tick labels, legends) lies inside the canvas, in inches.
        drawn, (width, height) = fig.get_tightbbox(renderer), fig.get_size_inches()
        assert drawn.x0 >= -0.01 and drawn.y0 >= -0.01, (name, drawn)
        assert drawn.x1 <= width + 0.01 and drawn.y1 <= height + 0.01, (name, drawn)
    for path in save_figures(figs, tmp_path):
        assert matplotlib.image.imread(path).shape[1] == 800, path


def test_sweep_is_read_back_from_the_metric_names_trials_log():
    from pipelines.report.table import RunInfo
    from pipelines.tracking.client import final_metrics

    result = {"epoch": 3, "test_base_acc": 70.0, "test_new_acc": 60.0, "test_hm": 64.6,
              "sweep_fusion_weights": WEIGHTS, "sweep_test_hm": [50.0, 60.0, 64.6, 66.0],
              "sweep_val_hm": [1.0, 2.0, 3.0, 4.0]}
    logged = final_metrics(result)
    assert {m.key for m in logged if "sweep" in m.key} == {f"{c}_sweep/fw{w:.2f}" for c in ("test_hm", "val_hm")
                                                          for w in WEIGHTS}
    assert all(m.step == 3 for m in logged)  # the epoch: no step axis that stands for a weight
    run = RunInfo("r", "DTD", "coop", True, "1", (("fusion_weight", "0.7"), ("loss_weight", "0.3")), "val_hm",
                  "max", {m.key: m.value for m in logged} | {"val_hm": 3.0})
    (p,) = points_from_runs([run])
    assert p.sweep["test_hm"] == dict(zip(WEIGHTS, result["sweep_test_hm"]))
    assert (p.loss_weight, p.fusion_weight, p.selection) == (0.3, 0.7, 3.0)


@pytest.mark.slow  # a fresh MLflow SQLite store: its migrations take ~20 s here
def test_report_plots_writes_each_datasets_figures(tmp_path):
    from pipelines.cli import main
    from pipelines.tracking.client import Tracker, log_train_run
    from pipelines.trial.settings import Hyperparameters

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "figs")
    for seed, (base, new) in ((1, (80.0, 60.0)), (2, (84.0, 64.0))):
        hp = Hyperparameters(method="coop", seed=seed, epochs=2).resolved([4])
        final = {"epoch": 2, "val_hm": 58.0, "test_base_acc": base, "test_new_acc": new,
                 "test_hm": harmonic_mean(base, new), "final": True, "sweep_fusion_weights": WEIGHTS,
                 "sweep_test_base_acc": [50.0, 70.0, 80.0, 82.0], "sweep_test_hm": [55.0, 64.0, 68.0, 69.0]}
        log_train_run(tracker, hp, {"dataset": "DTD"}, [], final, None)
    out = tmp_path / "plots"
    result = CliRunner().invoke(main, ["report", "--mlflow-uri", uri, "--experiment", "figs", "--plots", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "DTD").iterdir()) == ["base_new_hm_vs_loss_weight.png", "base_vs_new.png",
                                                               "fusion_weight_sweep.png"]
    result = CliRunner().invoke(main, ["report", "--mlflow-uri", uri, "--experiment", "figs",
                                       "--plots", str(tmp_path / "no" / "plots")])
    assert result.exit_code == 2 and "--plots" in result.output and "does not exist" in result.output


def test_transfer_trials_get_the_source_against_targets_scatter():
    """The transfer protocols' trials have no base / new numbers: one figure, source accuracy against the targets'
    mean, every completed trial and the zero-shot star at their values."""
    config = (("dept", True), ("method", "coop"))
    pts = [TrialPoint("coop", dept, config + (("d", dept),), str(seed), 0.7 if dept else 0.0, 0.7, True, 50.0,
                      test={"test_acc": 40.0 + seed + 10 * dept, "test_target_avg": 30.0 + seed})
           for dept in (False, True) for seed in (1, 2)]
    pts.append(TrialPoint("coop", True, config, "3", 0.7, 0.7, False, 10.0))  # stopped: not drawn
    figures = make_figures(pts, dataset="mini-source", zero_shot={"test_acc": 46.0, "test_target_avg": 60.0})
    assert list(figures) == ["source_vs_targets.png"]
    ax = figures["source_vs_targets.png"].axes[0]
    drawn = sorted(tuple(xy) for c in ax.collections for xy in c.get_offsets().tolist())
    assert drawn == sorted([(41.0, 31.0), (42.0, 32.0), (51.0, 31.0), (52.0, 32.0), (46.0, 60.0)])
    assert ax.get_xlabel() == "test accuracy on the source (%)" and "targets" in ax.get_ylabel()
    assert not ax.lines  # no iso-HM lines: HM means nothing here


def test_a_plain_winner_has_no_sweep_so_the_best_configuration_with_dept_is_drawn_and_said(points):
    plain = [point("coop", False, 0.0, "0.002", seed, 60, 62, val=99) for seed in (1, 2)]
    for p in plain:  # the plain method has no CAT head: nothing to fuse, nothing swept
        object.__setattr__(p, "sweep", {})
    figs = make_figures([p for p in points if p.dept] + plain, dataset="DTD")
    (ax,) = figs["fusion_weight_sweep.png"].axes
    assert "the winner, CoOp, has no CAT head" in ax.get_title() and "CoOp+DePT λ=0.30" in ax.get_title()
