"""The quickstart's ``demo`` space: every base method with DePT's loss weight searched from 0 (the plain method)
up, every trial to the end (so each report cell has test numbers), selection among learning rates on validation;
the quickstart uses it and shows featurize's output without reopening stderr."""
from __future__ import annotations

import itertools

from pipelines.selection import canonical_params, method_label
from pipelines.trial.settings import Hyperparameters
from pipelines.tune.spaces import load_space
from tests.conftest import REPO


def test_demo_space_searches_the_loss_weight_from_the_plain_method_up_and_runs_every_trial_to_the_end():
    space = load_space("demo")
    assert space.scheduler.kind == "none" and space.metric == "val_hm"
    grid = {n: p.values for n, p in space.params.items() if p.kind == "grid"}
    assert set(grid["method"]) == {"coop", "cocoop", "kgcoop"}
    lws = sorted(grid["loss_weight"])
    assert len(lws) >= 4 and lws[0] == 0.0  # a curve per method, starting at the plain method
    assert len(grid["lr"]) == 2  # something to select on, per loss weight
    # the quickstart stays short on 2 cores: no plain method run twice (dept: false beside loss weight 0)
    assert space.num_trials() == 3 * len(lws) * 2 == 30
    assert "n_ctx" not in space.params and "ctx_init" not in space.params  # each method's own context
    # Loss weight 0 is the plain method: its runs are the plain method's cell, named so.
    cells = set()
    for method, lw in itertools.product(grid["method"], lws):
        params = canonical_params(Hyperparameters(method=method, dept=True, loss_weight=lw).resolved().as_params())
        cells.add(method_label(method, params["dept"] == "true"))
    assert cells == {"CoOp", "CoOp+DePT", "CoCoOp", "CoCoOp+DePT", "KgCoOp", "KgCoOp+DePT"}


def test_quickstart_tunes_the_demo_space_and_never_reopens_stderr():
    script = (REPO / "scripts" / "quickstart.sh").read_text()
    assert "--space demo" in script
    assert "/dev/stderr" not in script.replace("`tee /dev/stderr`", "")  # only named in the comment saying why


def test_a_folder_named_like_a_shipped_space_does_not_shadow_it(tmp_path, monkeypatch):
    (tmp_path / "demo").mkdir()  # the quickstart writes ./demo, then tunes --space demo
    monkeypatch.chdir(tmp_path)
    assert load_space("demo").name == "demo"
