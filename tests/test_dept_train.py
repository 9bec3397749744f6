"""Trainer, evaluation, zero-shot identity, learned state, method registry, CLIP loading."""
import math

import pytest
import torch
import torch.nn.functional as F

from dept import (
    DePTConfig, TrainConfig, build_learner, evaluate_base_new, load_clip, load_state, save_state, train,
)
from dept.clip import ClipLoadError, creation_kwargs, save_random_checkpoint
from dept.methods import METHODS, PromptMethod, register_method
from dept.methods.coop import CoOpOptions
from dept.train import epoch_views
from tests.conftest import TINY_MODEL

BASE = ["red circle", "blue square", "green triangle", "yellow star", "purple heart", "orange moon"]
NEW = ["black cross", "white ring", "grey arrow"]


@pytest.fixture(scope="module")
def clip():
    return load_clip(TINY_MODEL, None, text_only=True)


def clustered_features(dim, num_classes, per_class, seed, views=1):
    """Features with learnable class structure unrelated to the text tower: class prototypes + noise."""
    g = torch.Generator().manual_seed(1234)  # prototypes are fixed across calls; samples depend on seed
    protos = torch.randn(num_classes, dim, generator=g) * 2.0
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    x = protos[labels].unsqueeze(1) + torch.randn(len(labels), views, dim, generator=g)
    return x.squeeze(1) if views == 1 else x, labels


def test_schedule_is_warmup_then_cosine_per_epoch():
    cfg = TrainConfig(epochs=10, lr=0.0035)
    assert cfg.lr_at(0, 0.0035) == 1e-5
    assert math.isclose(cfg.lr_at(1, 0.0035), 0.0035 * 0.5 * (1 + math.cos(math.pi / 10)))
    assert math.isclose(cfg.lr_at(9, 0.02275), 0.02275 * 0.5 * (1 + math.cos(math.pi * 9 / 10)))


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


def test_state_roundtrip_and_size(clip, tmp_path):
    learner = build_learner("cocoop", clip, BASE, dept=DePTConfig(loss_weight=0.5, fusion_weight=0.3), seed=0)
    x, y = clustered_features(clip.embed_dim, len(BASE), 2, seed=0)
    train(learner, x, y, TrainConfig(epochs=1, batch_size=2))
    path = save_state(learner, tmp_path / "s.safetensors")
    again = load_state(path, clip)
    assert again.dept == learner.dept and again.method.name == "cocoop"
    with torch.no_grad():
        assert torch.equal(again.base_scores(x), learner.base_scores(x))
        assert torch.equal(again.itm_logits(x, NEW), learner.itm_logits(x, NEW))
    other = load_clip(TINY_MODEL, str(save_random_checkpoint(TINY_MODEL, tmp_path / "o.safetensors", seed=5)), text_only=True)
    with pytest.raises(ValueError, match="trained on"):
        load_state(path, other)


@pytest.mark.slow
def test_coop_dept_state_for_50_classes_on_vit_b32_under_1mb(vit_b32_checkpoint, tmp_path):
    clip = load_clip("ViT-B-32", str(vit_b32_checkpoint), text_only=True)
    names = [f"class {i}" for i in range(50)]
    learner = build_learner("coop", clip, names, seed=0)
    path = save_state(learner, tmp_path / "coop50.safetensors")
    assert path.stat().st_size < 1_000_000
    again = load_state(path, clip)
    x = torch.randn(5, clip.embed_dim)
    with torch.no_grad():
        assert torch.equal(again.base_scores(x), learner.base_scores(x))


def test_a_new_method_is_one_registered_class(clip):
    from dataclasses import dataclass

    from dept.methods.base import MethodOptions

    @dataclass(frozen=True)
    class FixedOptions(MethodOptions):
        phrase: str = "a photo of a"

    @register_method("fixed-prompt-test")
    class FixedPrompt(PromptMethod):
        Options = FixedOptions

        def __init__(self, encoder, options, *, classnames, dataset, embed_dim):
            super().__init__(encoder, options, classnames=classnames, dataset=dataset, embed_dim=embed_dim)
            self.ctx = torch.nn.Parameter(encoder.word_embeddings(options.phrase))

        def text_features(self, encoder, classes, image_features=None, *, chunk_size=None):
            return encoder(self.ctx, classes, chunk_size=chunk_size)

    try:
        learner = build_learner("fixed-prompt-test", clip, BASE, seed=0)
        assert learner.itm_logits(torch.randn(2, clip.embed_dim), BASE).shape == (2, len(BASE))
    finally:
        METHODS.pop("fixed-prompt-test")
    assert {"coop", "cocoop", "kgcoop"} <= set(METHODS)


def test_method_options_are_checked(clip):
    with pytest.raises(ValueError, match="unknown option"):
        build_learner("coop", clip, BASE, method_options={"n_context": 4})
    with pytest.raises(ValueError, match="unknown prompt method"):
        build_learner("maple", clip, BASE)
    assert CoOpOptions().n_ctx == 16


def test_class_specific_coop_has_one_context_per_class(clip):
    learner = build_learner("coop", clip, BASE, method_options={"class_specific": True, "n_ctx": 4}, seed=0)
    assert learner.method.ctx.shape == (len(BASE), 4, learner.encoder.width)
    with pytest.raises(ValueError, match="class-specific"):
        learner.itm_logits(torch.randn(2, clip.embed_dim), NEW)


def test_kgcoop_uses_dataset_template():
    from dept.datasets import kgcoop_template

    assert kgcoop_template("DTD") == "{} texture."
    assert kgcoop_template("EuroSAT") == "a centered satellite photo of {}."
    assert kgcoop_template("Caltech101") == "a photo of a {}."


# -- CLIP loading --------------------------------------------------------------------------------------------
def test_openai_weights_get_quick_gelu():
    import open_clip
    from open_clip.transformer import QuickGELU

    assert creation_kwargs("ViT-B-16", "openai") == {"force_quick_gelu": True}
    assert creation_kwargs("ViT-B-16", "laion2b_s34b_b88k") == {}
    assert creation_kwargs("ViT-B-16-quickgelu", "openai") == {}
    m = open_clip.create_model("ViT-B-16", pretrained=None, **creation_kwargs("ViT-B-16", "openai"))
    assert isinstance(m.transformer.resblocks[0].mlp.gelu, QuickGELU)
    assert isinstance(m.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)


def test_local_checkpoints_and_text_only(tmp_path, tiny_clip_checkpoint):
    full = load_clip(TINY_MODEL, str(tiny_clip_checkpoint))
    assert full.weights_id.startswith("sha256:") and full.preprocess_test is not None
    text = load_clip(TINY_MODEL, str(tiny_clip_checkpoint), text_only=True)
    assert text.model.visual is None and text.preprocess_test is None
    tok = text.tokenizer(["a photo of a dog."])
    assert torch.equal(text.model.encode_text(tok), full.model.encode_text(tok))
    # .pt through weights_only=True gives the same model.
    from safetensors.torch import load_file

    pt = tmp_path / "tiny.pt"
    torch.save(load_file(str(tiny_clip_checkpoint)), pt)
    assert torch.equal(load_clip(TINY_MODEL, str(pt), text_only=True).model.encode_text(tok), text.model.encode_text(tok))


def test_clip_load_errors_are_one_line(tmp_path, tiny_clip_checkpoint):
    class Evil:
        def __reduce__(self):
            return (print, ("unpickled!",))

    bad = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, bad)
    with pytest.raises(ClipLoadError, match="weights_only"):
        load_clip(TINY_MODEL, str(bad))
    cases = [
        (("not-a-model", None), "unknown open_clip model"),
        ((TINY_MODEL, str(tmp_path / "missing.safetensors")), "checkpoint not found"),
        ((TINY_MODEL, "no_such_tag"), "unknown pretrained tag"),
        (("ViT-B-32", str(tiny_clip_checkpoint)), "does not fit model"),
    ]
    for args, msg in cases:
        with pytest.raises(ClipLoadError, match=msg) as e:
            load_clip(*args)
        assert "\n" not in str(e.value)


def test_random_init_is_the_same_in_every_process():
    a = load_clip(TINY_MODEL, "none", text_only=True)
    b = load_clip(TINY_MODEL, None, text_only=True)
    assert a.weights_id == b.weights_id == "random-init:0"
    assert torch.equal(a.model.token_embedding.weight, b.model.token_embedding.weight)


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


def test_shipped_tag_resolves_to_the_packaged_checkpoint():
    from dept.clip import ASSET_DIR, file_sha256

    clip = load_clip("dept-mini-vit", "shipped", text_only=True)
    assert clip.pretrained == "shipped"
    assert clip.weights_id == "sha256:" + file_sha256(ASSET_DIR / "dept-mini-vit.safetensors")
    with pytest.raises(ClipLoadError, match="no checkpoint ships"):
        load_clip(TINY_MODEL, "shipped")
