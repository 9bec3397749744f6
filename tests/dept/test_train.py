"""The trainer and base / new evaluation: schedule, param groups, views, determinism, learning, the
fusion sweep, zero-shot identity, chunked evaluation."""
import math

import pytest
import torch
import torch.nn.functional as F

from dept import DePTConfig, TrainConfig, build_learner, evaluate_base_new, train
from dept.schedule import epoch_views
from tests.dept.conftest import BASE, NEW, clustered_features


def test_param_groups_prompts_and_cat_head(clip):
    learner = build_learner("coop", clip, BASE, seed=0)
    groups = learner.param_groups(0.0035, 6.5)
    assert [g["name"] for g in groups] == ["prompts", "cat_head"]
    assert math.isclose(groups[1]["lr"], 0.02275)
    assert sum(p.numel() for p in groups[0]["params"]) == 16 * learner.encoder.width


def test_epoch_views_deterministic_and_augmented_only():
    a, b = epoch_views(50, 5, 3, seed=1), epoch_views(50, 5, 3, seed=1)
    assert torch.equal(a, b) and a.min() >= 1 and a.max() <= 4
    assert not torch.equal(a, epoch_views(50, 5, 4, seed=1))
    assert torch.equal(epoch_views(7, 1, 0, seed=1), torch.zeros(7, dtype=torch.long))


def test_same_seed_same_numbers(clip):
    x, y = clustered_features(clip.embed_dim, len(BASE), 4, seed=0, views=3)

    def run(seed):
        learner = build_learner("coop", clip, BASE, seed=seed)
        hist = train(learner, x, y, TrainConfig(epochs=2, batch_size=4, seed=seed))
        return [h.train_loss for h in hist], learner.method.ctx.detach().clone()

    (l1, c1), (l2, c2), (l3, c3) = run(1), run(1), run(2)
    assert l1 == l2 and torch.equal(c1, c2)
    assert l1 != l3


def test_it_learns_and_sweep_matches_direct_evaluation(clip):
    x, y = clustered_features(clip.embed_dim, len(BASE), 16, seed=0, views=2)
    xt, yt = clustered_features(clip.embed_dim, len(BASE), 20, seed=1)
    xn, yn = torch.randn(30, clip.embed_dim), torch.arange(30) % len(NEW)
    learner = build_learner("coop", clip, BASE, dept=DePTConfig(), seed=1)
    start = evaluate_base_new(learner, xt, yt, xn, yn, NEW)
    seen = []
    hist = train(learner, x, y, TrainConfig(epochs=10), on_epoch=seen.append,
                 validate=lambda l: evaluate_base_new(l, xt, yt, xn, yn, NEW).metrics("val_"))
    end = evaluate_base_new(learner, xt, yt, xn, yn, NEW)
    assert [s.epoch for s in seen] == list(range(1, 11)) and "val_base_acc" in seen[-1].metrics
    assert start.base_acc < 45.0, "zero-shot must not already solve these features"
    assert end.base_acc > start.base_acc + 30.0, (start.base_acc, end.base_acc)
    assert hist[-1].train_loss < hist[0].train_loss
    # Sweep: re-scoring at the trained fusion weight equals the direct evaluation; 0 = ITM only.
    sweep = dict((w, b) for w, b, _ in end.fusion_sweep([0.0, 0.5, 0.7, 1.0]))
    assert sweep[0.7] == end.base_acc
    with torch.no_grad():
        itm_only = (learner.itm_logits(xt, BASE).argmax(-1) == yt).float().mean().item() * 100
    assert math.isclose(sweep[0.0], itm_only, abs_tol=1e-9)


def test_probs_fusion_sweep_matches_direct(clip):
    learner = build_learner("coop", clip, BASE, dept=DePTConfig(fusion="probs", fusion_weight=0.4), seed=1)
    x, y = clustered_features(clip.embed_dim, len(BASE), 4, seed=0)
    train(learner, x, y, TrainConfig(epochs=2))
    r = evaluate_base_new(learner, x, y, x[:3], torch.zeros(3, dtype=torch.long), NEW)
    with torch.no_grad():
        direct = (learner.base_scores(x).argmax(-1) == y).float().mean().item() * 100
    assert math.isclose(r.base_acc, direct, abs_tol=1e-9)
    assert r.fusion_sweep([0.4])[0][1] == r.base_acc


def test_zero_epochs_coop_from_a_photo_of_a_is_zero_shot_clip(clip):
    x, y = clustered_features(clip.embed_dim, len(BASE), 10, seed=3)
    learner = build_learner("coop", clip, BASE, method_options={"ctx_init": "a photo of a"}, dept=None, seed=0)
    assert train(learner, x, y, TrainConfig(epochs=0)) == []
    r = evaluate_base_new(learner, x, y, x, y % len(NEW), NEW)
    with torch.no_grad():
        tok = clip.tokenizer([f"a photo of a {c}." for c in BASE])
        text = clip.model.encode_text(tok)
        zs = clip.model.logit_scale.exp() * F.normalize(x, dim=-1) @ F.normalize(text, dim=-1).T
    assert torch.allclose(r.base_itm_logits, zs, atol=1e-4)
    assert r.base_acc == (zs.argmax(-1) == y).float().mean().item() * 100


@pytest.mark.parametrize("method", ["coop", "cocoop"])
def test_evaluation_over_1000_classes_in_chunks_equals_unchunked(clip, method):
    from dept.evaluate import itm_logits

    names = [f"class number {i}" for i in range(1000)]
    learner = build_learner(method, clip, names[:10], dept=None, seed=0)
    x = torch.randn(3 if method == "cocoop" else 20, clip.embed_dim)
    chunked = itm_logits(learner, x, names, class_chunk=128)
    whole = itm_logits(learner, x, names, class_chunk=None)
    assert chunked.shape == (len(x), 1000)
    assert torch.allclose(chunked, whole, atol=1e-5)
