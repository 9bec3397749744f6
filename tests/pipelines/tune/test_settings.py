"""Trial settings defined once (pipelines.trial.settings): defaults read from dept, the search-space check, the
``train`` options, the MLflow params and the README table all come from the same fields."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap

import click
import pytest

from pipelines.trial.settings import (
    SETTINGS,
    Hyperparameters,
    default_of,
    dept_value,
    fmt,
    method_names,
    readme_block,
)
from pipelines.tune.spaces import SpaceError, parse_space
from tests.conftest import REPO


def train_params(*args) -> dict:
    """What ``train``'s options parse to (nothing runs)."""
    from pipelines.cli.train import train_cmd

    ctx = train_cmd.make_context("train", ["--features", "f", "--dataset", "d", *map(str, args)])
    return {k: v for k, v in ctx.params.items() if k in SETTINGS and v is not None}


def space_settings(tmp_path, params: str) -> Hyperparameters:
    """The hyperparameters of a one-configuration space."""
    import yaml

    space = parse_space({"params": yaml.safe_load("{" + params + "}")}, name="t", source=str(tmp_path / "t.yaml"))
    return Hyperparameters(**{n: p.values[0] for n, p in space.params.items()})


def test_every_setting_has_help_and_the_readme_table_is_generated_from_the_fields():
    assert all(s.help for s in SETTINGS.values())
    readme = (REPO / "tune_spaces" / "README.md").read_text()
    assert readme_block() in readme, (
        "tune_spaces/README.md's settings table is stale: run "
        "python -c 'from pipelines.trial.settings import write_readme_table; write_readme_table()'"
    )
    for name, s in SETTINGS.items():
        assert (f"| `{name}` |" in readme) == s.in_space, name


def test_defaults_are_dept_s_and_help_shows_them_without_importing_dept():
    hp = Hyperparameters()
    from_dept = [s for s in SETTINGS.values() if s.from_dept]
    assert {s.name for s in from_dept} >= {"loss_weight", "fusion_weight", "fusion", "epochs", "head_lr_mult"}
    for s in from_dept:
        real = dept_value(s.from_dept)
        assert getattr(hp, s.name) == real == default_of(s.name), s.name
        assert s.default_text() == fmt(real), f"help text of {s.name} would show another default"
    # dept's config dataclasses are covered: a new field there needs a setting here (or it cannot be tuned).
    from dept import DePTConfig, TrainConfig

    assert {f.name for f in dataclasses.fields(TrainConfig)} <= set(SETTINGS)
    assert {f.name for f in dataclasses.fields(DePTConfig)} <= set(SETTINGS)
    assert SETTINGS["fusion"].choices() == ("logits", "probs")
    assert SETTINGS["fusion"].choice_text() == "logits, probs"  # help texts, read from dept.config


def test_cli_and_settings_load_no_torch():
    # dept's configs and protocol names are torch-free (dept is a lazy namespace): reading them costs nothing
    code = "import sys, pipelines.cli, pipelines.trial.settings; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


def test_method_names_are_dept_s_registry(tmp_path, monkeypatch):
    from dept.methods import METHODS

    assert method_names() == tuple(METHODS)
    monkeypatch.setitem(METHODS, "mycoop", METHODS["coop"])  # a newly registered method is valid everywhere
    assert space_settings(tmp_path, "method: mycoop").method == "mycoop"
    assert train_params("--method", "mycoop")["method"] == "mycoop"
    assert Hyperparameters(method="mycoop").resolved([4]).n_ctx == METHODS["coop"].Options().n_ctx


def test_train_has_one_option_per_setting_with_the_settings_range():
    from pipelines.cli.train import train_cmd

    flags = {o for p in train_cmd.params for o in p.opts}
    assert {"--" + n.replace("_", "-") for n in SETTINGS} <= flags
    assert train_params() == {}  # nothing given: every default is Hyperparameters'
    assert train_params("--epochs", 0, "--no-dept", "--ctx-init", "a photo of a")["epochs"] == 0  # zero-shot
    assert train_params("--lr", "1e-3", "--class-specific") == {"lr": 1e-3, "class_specific": True}
    for bad in (["--loss-weight", "1.5"], ["--method", "maple"], ["--fusion", "sum"], ["--n-ctx", "0"]):
        with pytest.raises(click.BadParameter) as info:
            train_params(*bad)
        assert f"'{bad[0]}'" in info.value.format_message() and bad[1] in info.value.format_message()
    # A search space is stricter where a trial must report: no 0-epoch trials under Tune.
    with pytest.raises(SpaceError, match=r": params.epochs: 0 is below the allowed range \(>= 1\)"):
        parse_space({"params": {"epochs": 0}}, name="t", source="t.yaml")


def test_kgcoop_weight_is_dept_s_with_and_without_dept_and_8_is_explicit(tmp_path):
    from dept.methods.kgcoop import DEPT_KGCOOP_WEIGHT, ORIGINAL_KGCOOP_WEIGHT

    base = Hyperparameters(method="kgcoop", dept=False).resolved([16])
    with_dept = Hyperparameters(method="kgcoop", dept=True).resolved([16])
    assert base.kg_weight == with_dept.kg_weight == DEPT_KGCOOP_WEIGHT  # "+DePT" changes one thing
    assert base.method_options()["kg_weight"] == DEPT_KGCOOP_WEIGHT
    from_yaml = space_settings(tmp_path, "method: kgcoop, dept: false, kg_weight: 8.0").resolved([16])
    from_cli = Hyperparameters(**train_params("--method", "kgcoop", "--no-dept", "--kg-weight", 8)).resolved([16])
    for hp in (from_yaml, from_cli):
        assert hp.kg_weight == ORIGINAL_KGCOOP_WEIGHT and hp.method_options()["kg_weight"] == 8.0
        assert hp.as_params()["kg_weight"] == 8.0
    assert "kg_weight" not in Hyperparameters(method="coop", kg_weight=8.0).resolved([16]).as_params()


def test_params_say_what_is_applied_at_loss_weight_zero():
    zero = Hyperparameters(method="coop", loss_weight=0.0, fusion_weight=0.7).resolved([4]).as_params()
    assert (zero["dept"], zero["loss_weight"], zero["fusion_weight"]) == (True, 0.0, 0.7)  # what was asked
    assert (zero["dept_effective"], zero["loss_weight_effective"], zero["fusion_weight_effective"]) == (False, 0.0, 0.0)
    dept = Hyperparameters(method="coop", loss_weight=0.5, fusion_weight=0.3).resolved([4]).as_params()
    assert (dept["dept_effective"], dept["loss_weight_effective"], dept["fusion_weight_effective"]) == (True, 0.5, 0.3)
    hp = Hyperparameters(method="cocoop", epochs=3, warmup_lr=2e-5).resolved([4])
    cfg = hp.train_config()
    assert (cfg.epochs, cfg.lr, cfg.batch_size, cfg.warmup_lr) == (3, 0.002, 1, 2e-5)


@pytest.mark.slow
def test_dept_at_loss_weight_zero_gives_the_base_method_s_numbers(demo_store):
    """A searched space that samples loss weight 0 must give the base method's numbers (real trials, demo store)."""
    from pipelines.trial.context import make_context
    from pipelines.trial.plan import run_trial

    ctx = make_context(demo_store, "demo", shots=[None], seeds=[1])
    common = dict(method="kgcoop", epochs=2, n_ctx=2, ctx_init="")
    finals = {}
    for label, extra in (("base", dict(dept=False)), ("lw0", dict(dept=True, loss_weight=0.0, fusion_weight=0.7)),
                         ("dept", dict(dept=True, loss_weight=0.7, fusion_weight=0.7))):
        hp = ctx.hyperparameters({**common, **extra, "seed": 1})
        finals[label] = run_trial(hp, ctx)
    keys = [k for k in finals["base"] if k.startswith(("test_", "val_"))]
    assert {"test_base_acc", "test_new_acc", "test_hm", "val_hm"} <= set(keys)
    assert {k: finals["lw0"][k] for k in keys} == {k: finals["base"][k] for k in keys}
    assert finals["lw0"]["sweep_test_base_acc"] == finals["base"]["sweep_test_base_acc"]  # no CAT head to fuse
    assert finals["lw0"]["train_loss"] == finals["base"]["train_loss"]
    # The check can fail: a CAT head that trains changes the training loss.
    assert finals["dept"]["train_loss"] != finals["base"]["train_loss"]


def test_docs_describe_the_settings_once():
    """The spaces docstring points to the generated table instead of keeping its own list of defaults."""
    import pipelines.tune.spaces as spaces

    doc = textwrap.dedent(spaces.__doc__)
    assert "tune_spaces/README.md" in doc and "8.0 without" not in doc
