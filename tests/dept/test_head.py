"""DePT's equations (METHOD.md) checked against direct computations written here, on random tensors."""
import math

import pytest
import torch
import torch.nn.functional as F

from dept import DePTConfig, build_learner, load_clip
from dept.head import CATHead, ChannelwiseTransform, dept_loss, fuse
from tests.conftest import TINY_MODEL

BASE = ["red circle", "blue square", "green triangle", "yellow star"]


@pytest.fixture(scope="module")
def clip():
    return load_clip(TINY_MODEL, None, text_only=True)


def test_cwt_is_identity_at_init_and_per_channel_affine():
    torch.manual_seed(0)
    cwt = ChannelwiseTransform(8)
    u = torch.randn(5, 8)
    assert torch.equal(cwt(u), u)
    with torch.no_grad():
        cwt.scale.copy_(torch.randn(8))
        cwt.shift.copy_(torch.randn(8))
    assert torch.allclose(cwt(u), u * cwt.scale[None] + cwt.shift[None])


def test_cat_training_logits_stack_text_rows_then_image_rows():
    torch.manual_seed(0)
    head = CATHead(8, 3)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    v, t = torch.randn(4, 8), torch.randn(4, 8)
    z = head.training_logits(v, t)
    w, b = head.classifier.weight, head.classifier.bias
    text_rows = (t * head.cwt_text.scale + head.cwt_text.shift) @ w.T + b
    image_rows = (v * head.cwt_image.scale + head.cwt_image.shift) @ w.T + b
    assert torch.allclose(z, torch.cat([text_rows, image_rows]), atol=1e-6)


def test_loss_is_weighted_sum_of_itm_and_cat_cross_entropies():
    torch.manual_seed(0)
    s, z, y = torch.randn(4, 3), torch.randn(8, 3), torch.tensor([0, 2, 1, 2])
    lam = 0.7
    expected = (1 - lam) * F.cross_entropy(s, y) + lam * F.cross_entropy(z, torch.cat([y, y]))
    assert torch.allclose(dept_loss(s, z, y, lam), expected)
    assert torch.allclose(dept_loss(s, None, y, lam), F.cross_entropy(s, y))


@pytest.mark.parametrize("mode", ["logits", "probs"])
def test_fusion(mode):
    torch.manual_seed(0)
    s, c, a = torch.randn(5, 3), torch.randn(5, 3), 0.3
    got = fuse(s, c, a, mode)
    want = (1 - a) * s + a * c if mode == "logits" else (1 - a) * s.softmax(-1) + a * c.softmax(-1)
    assert torch.allclose(got, want)


def test_config_rejects_out_of_range():
    with pytest.raises(ValueError, match="loss_weight"):
        DePTConfig(loss_weight=1.5)
    with pytest.raises(ValueError, match="fusion"):
        DePTConfig(fusion="mean")


@pytest.mark.parametrize("method", ["coop", "kgcoop", "cocoop"])
def test_learner_loss_matches_direct_computation(clip, method):
    opts = {"template": "a photo of a {}."} if method == "kgcoop" else {}
    lam = 0.6
    learner = build_learner(method, clip, BASE, method_options=opts, dept=DePTConfig(loss_weight=lam), seed=3)
    with torch.no_grad():
        for p in learner.cat_head.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    torch.manual_seed(1)
    v, y = torch.randn(6, clip.embed_dim), torch.tensor([0, 1, 2, 3, 1, 0])
    loss, _ = learner.training_loss(v, y)

    enc, classes = learner.encoder, learner.class_tokens(BASE)
    tau = clip.model.logit_scale.exp().item()
    assert 1.0 < tau <= 100.0
    if method == "cocoop":
        shift = learner.method.meta_net(F.normalize(v, dim=-1))
        t = torch.stack([enc(learner.method.ctx + shift[i], classes) for i in range(len(v))])  # [B, K, D]
        s = tau * torch.stack([F.normalize(v[i], dim=-1) @ F.normalize(t[i], dim=-1).T for i in range(len(v))])
        ty = t[torch.arange(len(v)), y]
    else:
        t = enc(learner.method.ctx, classes)
        s = tau * F.normalize(v, dim=-1) @ F.normalize(t, dim=-1).T
        ty = t[y]
    h = learner.cat_head
    lin = h.classifier
    z = torch.cat([lin(ty * h.cwt_text.scale + h.cwt_text.shift), lin(v * h.cwt_image.scale + h.cwt_image.shift)])
    expected = (1 - lam) * F.cross_entropy(s, y) + lam * F.cross_entropy(z, torch.cat([y, y]))
    if method == "kgcoop":
        hand = enc.encode_texts([f"a photo of a {c}." for c in BASE])
        expected = expected + 2.0 * (1 - F.cosine_similarity(t, hand, dim=-1).mean())
    assert torch.allclose(loss, expected, atol=1e-5), (loss.item(), expected.item())


def test_cat_loss_gradient_reaches_prompts_through_class_text(clip):
    learner = build_learner("coop", clip, BASE, dept=DePTConfig(loss_weight=1.0), seed=0)
    v, y = torch.randn(4, clip.embed_dim), torch.tensor([0, 1, 2, 3])
    loss, _ = learner.training_loss(v, y)  # loss weight 1: only L_cat, so the prompts learn only via T[y]
    loss.backward()
    assert learner.method.ctx.grad is not None and learner.method.ctx.grad.abs().sum() > 0


def test_loss_weight_zero_is_the_plain_method(clip):
    # lam = 0 gives the CAT head no gradient, so (as in the reference) it is the base method: no head, ITM scores.
    learner = build_learner("coop", clip, BASE, dept=DePTConfig(loss_weight=0.0), seed=0)
    assert learner.cat_head is None
    loss, _ = learner.training_loss(torch.randn(4, clip.embed_dim), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert learner.method.ctx.grad is not None


def test_base_scores_fuse_and_new_classes_use_itm_only(clip):
    learner = build_learner("coop", clip, BASE, dept=DePTConfig(fusion_weight=0.25), seed=0)
    v = torch.randn(3, clip.embed_dim)
    with torch.no_grad():
        itm = learner.itm_logits(v, BASE)
        cat = learner.cat_logits(v)
        assert torch.allclose(learner.base_scores(v), 0.75 * itm + 0.25 * cat, atol=1e-6)
        assert learner.itm_logits(v, ["cat", "dog"]).shape == (3, 2)
    plain = build_learner("coop", clip, BASE, dept=None, seed=0)
    assert plain.cat_head is None
    with torch.no_grad():
        assert torch.allclose(plain.base_scores(v), plain.itm_logits(v, BASE))
    assert not math.isnan(float(itm.sum()))


def test_fixed_logit_scale_scales_itm_logits_only(clip):
    """A temperature override (e.g. real CLIP's 100 on a model that learned a small one) multiplies the ITM logits;
    the CAT head's logits do not use it."""
    learned = float(clip.model.logit_scale.exp())
    default = build_learner("coop", clip, BASE, dept=DePTConfig(), seed=0)
    fixed = build_learner("coop", clip, BASE, dept=DePTConfig(), seed=0, logit_scale=100.0)
    v = torch.randn(3, clip.embed_dim)
    with torch.no_grad():
        assert torch.allclose(fixed.itm_logits(v, BASE), default.itm_logits(v, BASE) * (100.0 / learned), rtol=1e-5)
        assert torch.equal(fixed.cat_logits(v), default.cat_logits(v))
    with pytest.raises(ValueError, match="logit_scale"):
        build_learner("coop", clip, BASE, seed=0, logit_scale=-1.0)


def test_saved_state_keeps_its_logit_scale(clip, tmp_path):
    from dept import load_state, save_state

    fixed = build_learner("coop", clip, BASE, dept=DePTConfig(), seed=0, logit_scale=100.0)
    save_state(fixed, tmp_path / "s.safetensors")
    again = load_state(tmp_path / "s.safetensors", clip)
    v = torch.randn(3, clip.embed_dim)
    with torch.no_grad():
        assert again.logit_scale == 100.0
        assert torch.allclose(again.base_scores(v), fixed.base_scores(v), atol=1e-6)
