"""MaPLe and PromptSRC (dept.online), alone and with DePT, on a real ViT-B-16 with random weights: one training
step from pixels equals an independent implementation written here on open_clip's modules directly (full
77-token text sequences, the towers' own blocks), in loss, gradients and the parameters after the SGD step."""
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from dept import DePTConfig, load_clip
from dept.online import (
    ONLINE_METHODS,
    GaussianPromptAverage,
    build_online_learner,
    gaussian_weights,
    online_optimizer,
    online_training_step,
)
from dept.online.promptsrc import PROMPTSRC_TEMPLATES

CLASSES = ["cat", "dog", "red car"]
TEMPLATES = PROMPTSRC_TEMPLATES[:3]  # the equality needs no 60 templates; the default's 60 are checked below
LABELS = torch.tensor([0, 2])
LR = 0.0035
WD = 5e-4
HEAD_MULT = 6.5


@pytest.fixture(scope="module")
def vit():
    clip = load_clip("ViT-B-16", None)  # random weights, seeded
    assert clip.model.transformer.batch_first and clip.model.visual.transformer.batch_first
    return clip


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(7))


# --------------------------------------------------------------------------- the independent implementation
def ref_text(model, tokenizer, layer_ctx):
    """Text features of "a photo of a {c}." with the first n tokens after SOS replaced by layer_ctx[0] and, at the
    input of block i, the same positions replaced by layer_ctx[i]: all 77 positions, the model's own mask."""
    ids = tokenizer([f"a photo of a {c}." for c in CLASSES])
    n = layer_ctx[0].shape[0]
    x = model.token_embedding(ids)
    K = x.shape[0]
    x = torch.cat([x[:, :1], layer_ctx[0].expand(K, -1, -1), x[:, 1 + n:]], dim=1) + model.positional_embedding
    for i, blk in enumerate(model.transformer.resblocks):
        if 0 < i < len(layer_ctx):
            x = torch.cat([x[:, :1], layer_ctx[i].expand(K, -1, -1), x[:, 1 + n:]], dim=1)
        x = blk(x, attn_mask=model.attn_mask)
    x = model.ln_final(x)
    return x[torch.arange(K), ids.argmax(dim=-1)] @ model.text_projection


def ref_image(visual, images, layer_prompts):
    x = visual.conv1(images).flatten(2).transpose(1, 2)
    B, _, w = x.shape
    x = torch.cat([visual.class_embedding + torch.zeros(B, 1, w), x], dim=1) + visual.positional_embedding
    n = layer_prompts[0].shape[0]
    x = visual.ln_pre(torch.cat([x, layer_prompts[0].expand(B, -1, -1)], dim=1))
    for i, blk in enumerate(visual.transformer.resblocks):
        if 0 < i < len(layer_prompts):
            x = torch.cat([x[:, :-n], layer_prompts[i].expand(B, -1, -1)], dim=1)
        x = blk(x)
    return visual.ln_post(x)[:, 0] @ visual.proj


def ref_prompts(method, P):
    """(text layer contexts, vision layer prompts) from the parameter copies P."""
    if method == "maple":
        depth = 1 + sum(k.startswith("method.deep_text.") for k in P)
        text = [P["method.ctx"]] + [P[f"method.deep_text.{i}"] for i in range(depth - 1)]
        vision = [F.linear(P["method.ctx"], P["method.proj.weight"], P["method.proj.bias"])] + [
            F.linear(P[f"method.deep_text.{i}"], P[f"method.deep_proj.{i}.weight"], P[f"method.deep_proj.{i}.bias"])
            for i in range(depth - 1)
        ]
        return text, vision
    text = [P["method.ctx"]] + [P[f"method.deep_text.{i}"] for i in range(8)]
    return text, [P[f"method.vision.{i}"] for i in range(9)]


def ref_cat(P, feats):
    (prefix, u) = feats
    u = u * P[f"cat_head.cwt_{prefix}.scale"] + P[f"cat_head.cwt_{prefix}.shift"]
    return u @ P["cat_head.classifier.weight"].t() + P["cat_head.classifier.bias"]


def options(method):
    return {"templates": TEMPLATES} if method == "promptsrc" else {}


def ref_loss(method, dept, clip, images, P, regularise=True):
    model, tau = clip.model, clip.model.logit_scale.exp().item()
    text_ctx, vision = ref_prompts(method, P)
    T = ref_text(model, clip.tokenizer, text_ctx)
    V = ref_image(model.visual, images, vision)
    s = tau * F.normalize(V, dim=-1) @ F.normalize(T, dim=-1).t()
    loss = F.cross_entropy(s, LABELS)
    if dept:
        Z = torch.cat([ref_cat(P, ("text", T[LABELS])), ref_cat(P, ("image", V))])
        loss = 0.3 * loss + 0.7 * F.cross_entropy(Z, torch.cat([LABELS, LABELS]))
    if method == "promptsrc" and regularise:
        with torch.no_grad():
            zs_t = torch.stack([model.encode_text(clip.tokenizer([t.format(c) for c in CLASSES]))
                                for t in TEMPLATES]).mean(0)
            zs_t = zs_t / zs_t.norm(dim=-1, keepdim=True)
            zs_v = model.encode_image(images, normalize=True)
            zs_s = tau * zs_v @ zs_t.t()
        loss = loss + 25 * (F.normalize(T, dim=-1) - zs_t).abs().mean() + 10 * (F.normalize(V, dim=-1) - zs_v).abs().mean()
        p_zs, logp, logp_zs = zs_s.softmax(-1), s.log_softmax(-1), zs_s.log_softmax(-1)
        loss = loss + (p_zs * (logp_zs - logp)).sum() / s.numel()
    return loss, s, V


# --------------------------------------------------------------------------- tests
# About 3-5 s each on 2 idle CPU cores (PromptSRC's with its frozen-tower passes and 3 templates): not slow.
CASES = [
    pytest.param(m, d, id=f"{m}{'+dept' if d else ''}")
    for m, d in [("maple", False), ("maple", True), ("promptsrc", False), ("promptsrc", True)]
]


@pytest.mark.parametrize("method,dept", CASES)
def test_one_step_equals_independent_implementation(vit, images, method, dept):
    learner = build_online_learner(method, vit, CLASSES, dept=DePTConfig() if dept else None,
                                   method_options=options(method))
    lr = learner.method.default_lr
    P = {k: v.detach().clone().requires_grad_(True) for k, v in learner.named_parameters()}
    assert all(k.startswith(("method.", "cat_head.")) for k in P) and (any(k.startswith("cat_head.") for k in P) == dept)
    assert all(not k.startswith(("encoder", "_visual")) for k in learner.state_dict())  # no CLIP weights saved

    opt = online_optimizer(learner)
    loss = online_training_step(learner, opt, images, LABELS)
    want, _, _ = ref_loss(method, dept, vit, images, P)
    want.backward()

    assert torch.allclose(loss, want.detach(), rtol=1e-5, atol=1e-6), (loss.item(), want.item())
    got = dict(learner.named_parameters())
    for k, p in P.items():
        g = got[k].grad
        assert g is not None and p.grad is not None, k
        scale = p.grad.abs().max().item()
        assert torch.allclose(g, p.grad, rtol=1e-4, atol=1e-5 * scale), (k, (g - p.grad).abs().max().item(), scale)
        assert p.grad.abs().max() > 0, k  # every learned tensor gets a gradient
        step = (lr * HEAD_MULT if k.startswith("cat_head.") else lr) * (p.grad + WD * p.detach())
        assert torch.allclose(got[k].detach(), p.detach() - step, rtol=1e-6, atol=1e-8), k
    # the frozen CLIP weights got no gradient, and stay frozen
    assert all(q.grad is None and not q.requires_grad for q in vit.model.parameters())


def test_maple_prompt_depth_respected(vit, images):
    depth = 3
    learner = build_online_learner("maple", vit, CLASSES, dept=None, method_options={"prompt_depth": depth})
    m = learner.method
    assert len(m.deep_text) == depth - 1 and len(m.deep_proj) == depth - 1
    assert m.ctx.shape == (2, 512) and m.lead == "of a"  # 2 tokens from "a photo", "of a" stays before the name
    n = 2
    seen_text, seen_vis = {}, {}
    hooks = [blk.register_forward_pre_hook(lambda mod, args, i=i: seen_text.__setitem__(i, args[0].detach()))
             for i, blk in enumerate(vit.model.transformer.resblocks)]
    hooks += [blk.register_forward_pre_hook(lambda mod, args, i=i: seen_vis.__setitem__(i, args[0].detach()))
              for i, blk in enumerate(vit.model.visual.transformer.resblocks)]
    try:
        with torch.no_grad():
            learner.text_features(CLASSES)
            learner.image_features(images[:1])
    finally:
        for h in hooks:
            h.remove()
    vis_prompts = [p.detach() for p in m.vision_prompts()]
    for i in range(1, 12):
        text_in, vis_in = seen_text[i][:, 1:1 + n], seen_vis[i][:, -n:]
        if i < depth:  # the layer's own prompts replace the previous layer's outputs there
            assert torch.equal(text_in, m.deep_text[i - 1].detach().expand_as(text_in)), i
            assert torch.equal(vis_in, vis_prompts[i].expand_as(vis_in)), i
        else:  # past the depth: the propagated tokens, none of the learned prompts
            assert not any(torch.allclose(text_in, p.detach().expand_as(text_in)) for p in m.deep_text), i
            assert not any(torch.allclose(vis_in, p.expand_as(vis_in)) for p in vis_prompts), i
    # the coupling: each layer's vision prompt is its linear map of that layer's text prompt
    assert torch.allclose(vis_prompts[1], m.deep_proj[0](m.deep_text[0]).detach())
    with pytest.raises(ValueError):
        build_online_learner("maple", vit, CLASSES, method_options={"prompt_depth": 13})


def test_promptsrc_defaults_and_depth(vit):
    learner = build_online_learner("promptsrc", vit, CLASSES, dept=None, method_options={"text_depth": 4, "vision_depth": 2})
    m = learner.method
    assert len(m.deep_text) == 3 and len(m.vision) == 2 and m.vision[0].shape == (4, 768) and m.ctx.shape == (4, 512)
    o = ONLINE_METHODS["promptsrc"].Options()
    assert (o.n_ctx_text, o.n_ctx_vision, o.text_depth, o.vision_depth, o.text_loss_weight, o.image_loss_weight,
            o.gpa_mean, o.gpa_std, len(o.templates)) == (4, 4, 9, 9, 25.0, 10.0, 15.0, 1.0, 60)
    cls = ONLINE_METHODS["promptsrc"]
    assert (cls.default_lr, cls.default_epochs, cls.default_batch_size) == (0.0025, 20, 4)
    mo = ONLINE_METHODS["maple"].Options()
    assert (mo.n_ctx, mo.ctx_init, mo.prompt_depth) == (2, "a photo of a", 9)
    assert (ONLINE_METHODS["maple"].default_lr, ONLINE_METHODS["maple"].default_epochs) == (0.0035, 10)


def test_gaussian_aggregation_weights():
    w = gaussian_weights(20, 15.0, 1.0)
    dens = [math.exp(-0.5 * (e - 15) ** 2) / math.sqrt(2 * math.pi) for e in range(1, 21)]
    assert len(w) == 20 and math.isclose(sum(w), 1.0)
    assert all(math.isclose(a, d / sum(dens), rel_tol=1e-12) for a, d in zip(w, dens))
    assert max(range(20), key=w.__getitem__) == 14 and math.isclose(w[13], w[15])  # peak at epoch 15, symmetric
    w3 = gaussian_weights(3, 2.0, 0.5)
    lin = torch.nn.Linear(2, 1)
    gpa = GaussianPromptAverage(3, 2.0, 0.5)
    for e, value in enumerate([1.0, 2.0, 4.0]):
        with torch.no_grad():
            lin.weight.fill_(value)
        gpa.update(lin, e)
    gpa.apply(lin)
    assert torch.allclose(lin.weight, torch.full((1, 2), w3[0] * 1 + w3[1] * 2 + w3[2] * 4))


@pytest.mark.parametrize("method", ["maple", "promptsrc"])
def test_dept_base_logits_are_the_fusion(vit, images, method):
    learner = build_online_learner(method, vit, CLASSES, dept=DePTConfig(fusion_weight=0.6))
    with torch.no_grad():  # a non-identity CAT head, so the fusion is not trivially the ITM logits
        learner.cat_head.cwt_image.scale.mul_(1.5).add_(0.1)
        learner.cat_head.cwt_image.shift.add_(0.2)
    P = {k: v.detach() for k, v in learner.named_parameters()}
    with torch.no_grad():
        _, s, V = ref_loss(method, False, vit, images, P, regularise=False)
        cat = ref_cat(P, ("image", V))
        assert torch.allclose(learner.base_scores(images), 0.4 * s + 0.6 * cat, rtol=1e-4, atol=1e-5)
        learner.dept = dataclasses.replace(learner.dept, fusion="probs")  # the paper's text: fused probabilities
        assert torch.allclose(learner.base_scores(images, fusion_weight=0.3),
                              0.7 * s.softmax(-1) + 0.3 * cat.softmax(-1), rtol=1e-4, atol=1e-6)
        assert torch.allclose(learner.new_scores(images, CLASSES), s, rtol=1e-4, atol=1e-5)  # new: ITM only
    plain = build_online_learner(method, vit, CLASSES, dept=None)
    assert plain.cat_head is None and not any(k.startswith("cat_head") for k in plain.state_dict())
    zero = build_online_learner(method, vit, CLASSES, dept=DePTConfig(loss_weight=0.0))  # lam 0: the plain method
    assert zero.cat_head is None and zero.applied_params()["dept_effective"] is False


def test_train_online_applies_gaussian_prompt_average():
    from dept.config import TrainConfig
    from dept.online import train_online
    from tests.conftest import TINY_MODEL

    tiny = load_clip(TINY_MODEL, None)
    opts = {"text_depth": 2, "vision_depth": 2, "n_ctx_vision": 2, "templates": TEMPLATES, "gpa_mean": 2.0}
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    for method, options in [("promptsrc", opts), ("maple", {"prompt_depth": 2})]:
        learner = build_online_learner(method, tiny, CLASSES, method_options=options)
        states = []
        config = TrainConfig(epochs=3, lr=0.05, batch_size=2)
        history = train_online(learner, lambda e: [(x, LABELS)], config,
                               on_epoch=lambda e, loss: states.append({k: v.clone() for k, v in learner.state_dict().items()}))
        assert len(history) == 3 and all(math.isfinite(h) for h in history)
        final = learner.state_dict()
        if method == "promptsrc":  # the sum of the epochs' states, weighted as GPA says
            w = gaussian_weights(3, 2.0, 1.0)
            for k in final:
                assert torch.allclose(final[k], sum(wi * s[k] for wi, s in zip(w, states)), atol=1e-6), k
            assert not torch.allclose(final["method.ctx"], states[-1]["method.ctx"])
        else:  # MaPLe: no averaging, the last epoch's state
            assert all(torch.equal(final[k], states[-1][k]) for k in final)
