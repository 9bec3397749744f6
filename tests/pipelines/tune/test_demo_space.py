"""The quickstart's ``demo`` space: every base method without and with DePT, every trial to the end (so each
report cell has test numbers), selection among learning rates on validation; the quickstart uses it and shows
featurize's output without reopening stderr."""
from __future__ import annotations

import itertools

from pipelines.tune.spaces import load_space
from tests.conftest import REPO


def test_demo_space_has_each_method_with_and_without_dept_and_no_early_stopping():
    space = load_space("demo")
    assert space.scheduler.kind == "none" and space.metric == "val_hm"
    grid = {n: p.values for n, p in space.params.items() if p.kind == "grid"}
    assert set(grid["method"]) == {"coop", "cocoop", "kgcoop"} and set(grid["dept"]) == {True, False}
    assert len(grid["lr"]) == 2  # something to select on, per cell
    assert space.num_trials() == 12  # the quickstart stays short on 2 cores
    assert "n_ctx" not in space.params and "ctx_init" not in space.params  # each method's own context
    cells = set(itertools.product(grid["method"], grid["dept"]))
    assert len(cells) == 6


def test_quickstart_tunes_the_demo_space_and_never_reopens_stderr():
    script = (REPO / "scripts" / "quickstart.sh").read_text()
    assert "--space demo" in script
    assert "/dev/stderr" not in script.replace("`tee /dev/stderr`", "")  # only named in the comment saying why


def test_a_folder_named_like_a_shipped_space_does_not_shadow_it(tmp_path, monkeypatch):
    (tmp_path / "demo").mkdir()  # the quickstart writes ./demo, then tunes --space demo
    monkeypatch.chdir(tmp_path)
    assert load_space("demo").name == "demo"
