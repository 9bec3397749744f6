"""Resuming training from an epoch's state (what a retried Tune trial does): the same losses and parameters, bit
for bit, as the run that was never interrupted; the saved state holds only what was learned and the momentum."""
import pytest
import torch

from dept import DePTConfig, TrainConfig, build_learner, train
from dept.schedule import TrainResume
from dept.state import learned_state_dict
from tests.dept.conftest import BASE, clustered_features


@pytest.mark.parametrize("method", ["coop", "cocoop"])
def test_resume_after_an_epoch_equals_the_uninterrupted_run(clip, method, tmp_path):
    x, y = clustered_features(clip.embed_dim, len(BASE), 4, seed=0, views=3)
    cfg = TrainConfig(epochs=4, batch_size=4, seed=3)

    def learner():
        return build_learner(method, clip, BASE, dept=DePTConfig(), seed=3)

    whole = learner()
    full = train(whole, x, y, cfg)

    first = learner()
    # An attempt that dies after epoch 2: its last saved state goes through a file, as a Tune checkpoint does.
    done = train(first, x, y, cfg, resumable=True,
                 on_epoch=lambda s: s.state.save(tmp_path / f"epoch{s.epoch}.pt"))
    assert [s.train_loss for s in done] == [s.train_loss for s in full]  # resumable changes no number
    resume = TrainResume.load(tmp_path / "epoch2.pt")
    assert resume.epoch == 2

    retried = learner()
    rest = train(retried, x, y, cfg, resume=resume)
    assert [s.epoch for s in rest] == [3, 4]
    assert [s.train_loss for s in rest] == [s.train_loss for s in full[2:]]
    assert [s.lr for s in rest] == [s.lr for s in full[2:]]
    got, want = learned_state_dict(retried), learned_state_dict(whole)
    assert got.keys() == want.keys() and any(k.startswith("cat_head.") for k in got)
    for k in want:
        assert torch.equal(got[k], want[k]), k

    # Without the momentum the numbers differ: the state really carries it (else this test could not fail).
    no_momentum = learner()
    drifted = train(no_momentum, x, y, cfg, resume=TrainResume(2, resume.learned, torch.optim.SGD(
        no_momentum.param_groups(cfg.lr, cfg.head_lr_mult), lr=cfg.lr).state_dict()))
    assert [s.train_loss for s in drifted] != [s.train_loss for s in full[2:]]


def test_an_epoch_state_is_the_learned_tensors_and_momentum_only(clip, tmp_path):
    x, y = clustered_features(clip.embed_dim, len(BASE), 4, seed=0, views=2)
    learner = build_learner("coop", clip, BASE, dept=DePTConfig(), seed=1)
    hist = train(learner, x, y, TrainConfig(epochs=2, batch_size=4), resumable=True)
    assert all(isinstance(s.state, TrainResume) for s in hist)
    assert hist[0].state.learned["method.ctx"].data_ptr() != learner.method.ctx.data_ptr()  # a copy
    assert not torch.equal(hist[0].state.learned["method.ctx"], hist[1].state.learned["method.ctx"])
    learned_bytes = sum(p.numel() * p.element_size() for p in learner.parameters() if p.requires_grad)
    path = hist[-1].state.save(tmp_path / "state.pt")
    # Parameters + one momentum buffer each, plus pickling overhead: about twice the learned bytes, no text tower.
    assert path.stat().st_size < 2 * learned_bytes + 64 * 1024
    text_tower_bytes = sum(p.numel() * p.element_size() for p in clip.model.parameters())
    assert path.stat().st_size < text_tower_bytes / 4


def test_resume_past_the_end_is_one_line(clip):
    x, y = clustered_features(clip.embed_dim, len(BASE), 4, seed=0)
    learner = build_learner("coop", clip, BASE, seed=1)
    state = train(learner, x, y, TrainConfig(epochs=1), resumable=True)[-1].state
    with pytest.raises(ValueError, match="cannot resume after epoch 5 of a 2-epoch training"):
        train(build_learner("coop", clip, BASE, seed=1), x, y, TrainConfig(epochs=2),
              resume=TrainResume(5, state.learned, state.optimizer))
