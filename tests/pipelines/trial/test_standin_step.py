"""The bench-only stand-in step (``DEPT_BENCH_STANDIN_STEP``, pipelines.trial.standin): off, a trial is what it
always was; on, it trains and scores nothing but reports the same metric keys, the same resume-state contents and
the same learned-state files (tensor names and shapes)."""
from __future__ import annotations

import math

import pytest
import torch

from pipelines.trial import standin


def _tiny(dept: bool = True):
    from dept import DePTConfig, TrainConfig, build_learner, load_clip

    clip = load_clip("dept-tiny-vit", "none", text_only=True)
    learner = build_learner("coop", clip, ["cat", "dog", "bird"], dept=DePTConfig() if dept else None, seed=1,
                            method_options={"n_ctx": 2, "ctx_init": ""})
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 2, clip.embed_dim, generator=g)
    y = torch.arange(6) % 3
    return learner, x, y, TrainConfig(epochs=2, batch_size=2, lr=0.002, seed=1)


def test_standin_step_has_the_real_steps_outputs():
    from dept import evaluate_base_new, train

    real_learner, x, y, config = _tiny()
    stand_learner, *_ = _tiny()
    validate = lambda m: evaluate_base_new(m, x[:, 0], y, x[:2, 0], y[:2] % 2, ["fish", "cow"]).metrics()  # noqa: E731
    real = train(real_learner, x, y, config, validate=validate, resumable=True)
    stand = standin.train(stand_learner, x, y, config, validate=validate, resumable=True)
    assert [s.epoch for s in stand] == [s.epoch for s in real] == [1, 2]
    for a, b in zip(real, stand):
        assert set(a.metrics) == set(b.metrics) and a.lr == b.lr and math.isfinite(b.train_loss)
        assert b.state.epoch == a.state.epoch
        assert {k: v.shape for k, v in b.state.learned.items()} == {k: v.shape for k, v in a.state.learned.items()}
        assert b.state.optimizer["param_groups"] == a.state.optimizer["param_groups"]
        assert ({k: {n: t.shape for n, t in v.items()} for k, v in b.state.optimizer["state"].items()}
                == {k: {n: t.shape for n, t in v.items()} for k, v in a.state.optimizer["state"].items()})
    # resuming a stand-in state runs the remaining epoch only, as the real step does
    again, *_ = _tiny()
    assert [s.epoch for s in standin.train(again, x, y, config, resume=stand[0].state)] == [2]
    r = evaluate_base_new(real_learner, x[:, 0], y, x[:2, 0], y[:2], ["fish", "cow"])
    s = standin.evaluate_base_new(stand_learner, x[:, 0], y, x[:2, 0], y[:2], ["fish", "cow"])
    assert set(s.metrics()) == set(r.metrics())
    assert s.base_itm_logits.shape == r.base_itm_logits.shape and s.base_cat_logits.shape == r.base_cat_logits.shape
    assert len(s.fusion_sweep([0.0, 0.5, 1.0])) == 3


def _trial(ctx, tmp):
    from pipelines.trial.plan import run_trial
    from pipelines.trial.settings import Hyperparameters

    hp = Hyperparameters(method="coop", epochs=2, n_ctx=2, ctx_init="").resolved([ctx.store_shots])
    epochs, states = [], []
    final = run_trial(hp, ctx, on_epoch=epochs.append, on_checkpoint=lambda m, s: states.append(s), state_dir=tmp)
    return epochs, states, final


@pytest.mark.slow
def test_switch_off_is_the_normal_trial_and_on_keeps_its_keys_and_files(demo_store, monkeypatch, tmp_path):
    from safetensors.torch import load_file

    from pipelines.trial.context import make_context
    from pipelines.trial.plan import STATE_FILE

    ctx = make_context(demo_store, "demo", shots=[None], seeds=[1])
    runs = {}
    for label, value in (("unset", None), ("off", "0"), ("on", "1")):
        if value is None:
            monkeypatch.delenv(standin.STANDIN_ENV, raising=False)
        else:
            monkeypatch.setenv(standin.STANDIN_ENV, value)
        (tmp_path / label).mkdir()
        runs[label] = _trial(ctx, tmp_path / label)
    strip = lambda d: {k: v for k, v in d.items() if k not in ("train_seconds", "epoch_seconds")}  # noqa: E731
    (e0, s0, f0), (e1, s1, f1), (e2, s2, f2) = runs["unset"], runs["off"], runs["on"]
    assert [strip(m) for m in e1] == [strip(m) for m in e0] and strip(f1) == strip(f0)  # off: the normal trial
    assert f0["test_hm"] == f1["test_hm"] and all(torch.equal(s0[-1].learned[k], v) for k, v in s1[-1].learned.items())
    assert [set(m) for m in e2] == [set(m) for m in e0] and set(f2) == set(f0)  # on: the same keys
    assert len(f2["sweep_test_hm"]) == len(f0["sweep_test_hm"])
    assert [s.epoch for s in s2] == [s.epoch for s in s0]
    assert {k: v.shape for k, v in s2[-1].learned.items()} == {k: v.shape for k, v in s0[-1].learned.items()}
    assert sorted(p.name for p in (tmp_path / "on").iterdir()) == sorted(p.name for p in (tmp_path / "unset").iterdir())
    real, stand = load_file(tmp_path / "unset" / STATE_FILE), load_file(tmp_path / "on" / STATE_FILE)
    assert {k: v.shape for k, v in stand.items()} == {k: v.shape for k, v in real.items()}
