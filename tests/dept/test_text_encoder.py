"""Exactness of the prompt text encoder against open_clip's own ``encode_text`` (random weights, fp32).

A context equal to the token embeddings of "a photo of a" must give exactly the features of the hand-written
prompt "a photo of a {name}.", whichever path computes them (full 77 tokens, truncated, shared prefix).
"""
from __future__ import annotations

import open_clip
import pytest
import torch

from dept.clip import load_clip
from dept.text_encoder import ClassTokens, PromptTextEncoder, TextEncoderError

TOL = 1e-5

# Class names from 1 to 13 BPE tokens: single words, underscore names as the datasets give them ("_" -> " "),
# EuroSAT's renamed classes, accents, CJK, and two long aircraft-style names.
NAMES = [
    "cat",
    "Beagle",
    "great_white_shark".replace("_", " "),
    "Annual Crop Land",
    "crème brûlée",
    "日本の寿司",
    "Sikorsky S-92 helicopter over a",
    "McDonnell Douglas MD-11 freighter, a widebody",
    "Sikorsky S-92 helicopter over the Kittiwake",
]


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def reference(clip, prompts: list[str]) -> torch.Tensor:
    with torch.no_grad():
        return clip.model.encode_text(clip.tokenizer(prompts))


@pytest.fixture(scope="module")
def b32():
    return load_clip("ViT-B-32", None, text_only=True)


@pytest.fixture(scope="module")
def enc32(b32):
    return PromptTextEncoder(b32.model, b32.tokenizer)


# ---------------------------------------------------------------------------------------------- stage 1: plain paths
def test_names_span_short_to_long(enc32):
    ct = enc32.class_tokens(NAMES)
    name_tokens = [n - 2 for n in ct.lengths]  # minus "." and EOT
    assert min(name_tokens) == 1 and max(name_tokens) >= 12
    assert 12 in name_tokens
    assert ct.embeddings.shape == (len(NAMES), max(ct.lengths), enc32.width)


@pytest.mark.parametrize("path", ["full", "truncated", "auto"])
def test_hand_written_prompt_equals_encode_text(b32, enc32, path):
    ctx = enc32.word_embeddings("a photo of a")
    assert ctx.shape == (4, enc32.width)
    with torch.no_grad():
        out = enc32(ctx, enc32.class_tokens(NAMES), path=path)
    ref = reference(b32, [f"a photo of a {c}." for c in NAMES])
    assert out.shape == ref.shape == (len(NAMES), enc32.embed_dim)
    assert max_diff(out, ref) <= TOL


def test_other_suffix_equals_encode_text(b32, enc32):
    ctx = enc32.word_embeddings("a photo of a")
    with torch.no_grad():
        out = enc32(ctx, enc32.class_tokens(NAMES[:4], suffix=", a type of pet."))
    ref = reference(b32, [f"a photo of a {c}, a type of pet." for c in NAMES[:4]])
    assert max_diff(out, ref) <= TOL


def test_truncated_equals_full_for_learned_context(enc32):
    torch.manual_seed(0)
    ct = enc32.class_tokens(NAMES)
    ctx_t = (torch.randn(16, enc32.width) * 0.02).requires_grad_()
    ctx_f = ctx_t.detach().clone().requires_grad_()
    out_t = enc32(ctx_t, ct, path="truncated")
    out_f = enc32(ctx_f, ct, path="full")
    assert max_diff(out_t, out_f) <= TOL
    w = torch.randn_like(out_t)
    (out_t * w).sum().backward()
    (out_f * w).sum().backward()
    assert rel_err(ctx_t.grad, ctx_f.grad) <= TOL


def test_truncate_false_forces_full_path(b32):
    full = PromptTextEncoder(b32.model, b32.tokenizer, truncate=False)
    assert full._resolve_path(None, class_specific=False) == "full"
    ctx = full.word_embeddings("a photo of a")
    with torch.no_grad():
        out = full(ctx, full.class_tokens(NAMES[:3]))
    assert max_diff(out, reference(b32, [f"a photo of a {c}." for c in NAMES[:3]])) <= TOL


def test_class_specific_context_equals_per_class_encode(b32, enc32):
    phrases = ["a photo of a", "a drawing of the", "a sculpture of my", "a blurry photo of", "itap of a"]
    names = NAMES[: len(phrases)]
    ctx = torch.stack([enc32.word_embeddings(p) for p in phrases])  # [K, 4, d]
    with torch.no_grad():
        out = enc32(ctx, enc32.class_tokens(names))
        chunked = enc32(ctx, enc32.class_tokens(names), chunk_size=2)
    ref = reference(b32, [f"{p} {c}." for p, c in zip(phrases, names)])
    assert max_diff(out, ref) <= TOL
    assert max_diff(chunked, ref) <= TOL


@pytest.mark.slow
def test_chunked_equals_unchunked(enc32):
    torch.manual_seed(1)
    ct = enc32.class_tokens(NAMES)
    ctx = torch.randn(16, enc32.width) * 0.02
    with torch.no_grad():
        whole = enc32(ctx, ct, path="truncated")
        for size in (1, 2, 4, len(NAMES) + 3):
            assert max_diff(enc32(ctx, ct, path="truncated", chunk_size=size), whole) <= TOL


def test_per_image_context_truncated(enc32):
    torch.manual_seed(2)
    ct = enc32.class_tokens(NAMES[:4])
    ctx = torch.randn(3, 4, enc32.width) * 0.02
    with torch.no_grad():
        out = enc32(ctx, ct, per_image=True, path="truncated")
        assert out.shape[:2] == (3, 4)
        for b in range(3):
            assert max_diff(out[b], enc32(ctx[b], ct, path="truncated")) <= TOL
        assert max_diff(enc32(ctx, ct, per_image=True, path="truncated", chunk_size=3), out) <= TOL


def test_encode_texts_equals_encode_text(b32, enc32):
    prompts = [f"a photo of a {c}." for c in NAMES] + ["a centered satellite photo of Annual Crop Land.", "x"]
    ref = reference(b32, prompts)
    assert max_diff(enc32.encode_texts(prompts), ref) <= TOL
    assert max_diff(enc32.encode_texts(prompts, chunk_size=3), ref) <= TOL


def test_word_embeddings_are_the_token_embeddings(b32, enc32):
    ids = b32.tokenizer(["a photo of a"])[0, 1:5]
    assert torch.equal(enc32.word_embeddings("a photo of a"), b32.model.token_embedding.weight[ids])


def test_registers_nothing_and_caches_class_tokens(enc32):
    assert list(enc32.parameters()) == [] and list(enc32.buffers()) == []
    assert enc32.state_dict() == {}
    a = enc32.class_tokens(["cat", "dog"])
    assert enc32.class_tokens(["cat", "dog"]) is a
    assert isinstance(a, ClassTokens) and not a.embeddings.requires_grad


def test_too_long_prompt_is_refused_naming_the_class(enc32):
    long_name = " ".join(["word"] * 60)
    ct = enc32.class_tokens(["cat", long_name])  # 62 tokens: fits alone, not with 16 context tokens
    ctx = torch.zeros(16, enc32.width)
    with pytest.raises(TextEncoderError, match="class 'word word") as e:
        enc32(ctx, ct)
    assert "\n" not in str(e.value) and "context length 77" in str(e.value)
    with pytest.raises(TextEncoderError, match="class 'word word"):
        enc32.class_tokens([" ".join(["word"] * 80)])
    with pytest.raises(TextEncoderError, match="more than the context length"):
        enc32.encode_texts([" ".join(["word"] * 80)])


def test_bad_context_shapes_are_refused(enc32):
    ct = enc32.class_tokens(["cat", "dog"])
    with pytest.raises(TextEncoderError, match="3 rows for 2 classes"):
        enc32(torch.zeros(3, 4, enc32.width), ct)
    with pytest.raises(TextEncoderError, match="context must be"):
        enc32(torch.zeros(4, enc32.width + 1), ct)
    with pytest.raises(TextEncoderError, match="per_image=True"):
        enc32(torch.zeros(4, enc32.width), ct, per_image=True)
    with pytest.raises(TextEncoderError, match="class-specific"):
        enc32(torch.zeros(2, 4, enc32.width), ct, path="prefix")
    with pytest.raises(TextEncoderError, match="unknown text-encoder path"):
        enc32(torch.zeros(4, enc32.width), ct, path="fast")


# ---------------------------------------------------------------------------------------------- stage 2: shared prefix
PHRASES = ["a photo of a", "a drawing of the", "itap of a"]  # 4 tokens each: one context per image (CoCoOp)


@pytest.fixture(scope="module")
def b16():
    return load_clip("ViT-B-16", None, text_only=True)


@pytest.fixture(scope="module")
def enc16(b16):
    return PromptTextEncoder(b16.model, b16.tokenizer)


def test_auto_path_choice(enc16):
    assert enc16.prefix_unsupported is None
    assert enc16._resolve_path(None, class_specific=False) == "prefix"
    assert enc16._resolve_path(None, class_specific=True) == "truncated"


def test_shared_prefix_equals_encode_text(b16, enc16):
    ct = enc16.class_tokens(NAMES)  # names of 1..13 tokens in one batch
    assert len(set(ct.lengths)) >= 5
    with torch.no_grad():
        out = enc16(enc16.word_embeddings("a photo of a"), ct, path="prefix")
    assert max_diff(out, reference(b16, [f"a photo of a {c}." for c in NAMES])) <= TOL


@pytest.mark.slow
def test_shared_prefix_per_image_equals_encode_text(b16, enc16):
    ct = enc16.class_tokens(NAMES[:5])
    ctx = torch.stack([enc16.word_embeddings(p) for p in PHRASES])  # [B, 4, d]
    with torch.no_grad():
        out = enc16(ctx, ct, per_image=True)  # auto -> shared prefix, once per image
    assert out.shape[:2] == (len(PHRASES), 5)
    for b, phrase in enumerate(PHRASES):
        assert max_diff(out[b], reference(b16, [f"{phrase} {c}." for c in NAMES[:5]])) <= TOL


@pytest.mark.slow
@pytest.mark.parametrize("per_image", [False, True])
def test_shared_prefix_gradients_equal_truncated(enc16, per_image):
    torch.manual_seed(3)
    ct = enc16.class_tokens(NAMES)
    shape = (2, 16, enc16.width) if per_image else (16, enc16.width)
    ctx_p = (torch.randn(shape) * 0.02).requires_grad_()
    ctx_t = ctx_p.detach().clone().requires_grad_()
    out_p = enc16(ctx_p, ct, per_image=per_image, path="prefix")
    out_t = enc16(ctx_t, ct, per_image=per_image, path="truncated")
    assert out_p.shape == out_t.shape
    assert max_diff(out_p, out_t) <= TOL
    w = torch.randn_like(out_p)  # a generic downstream loss: every feature channel gets some gradient
    (out_p * w).sum().backward()
    (out_t * w).sum().backward()
    assert ctx_p.grad.abs().sum() > 0
    assert rel_err(ctx_p.grad, ctx_t.grad) <= TOL


@pytest.mark.slow
def test_shared_prefix_chunked_equals_unchunked(enc16):
    torch.manual_seed(4)
    ct = enc16.class_tokens(NAMES)
    ctx = torch.randn(16, enc16.width) * 0.02
    ctx_b = torch.randn(2, 16, enc16.width) * 0.02
    with torch.no_grad():
        whole = enc16(ctx, ct, path="prefix")
        whole_b = enc16(ctx_b, ct, per_image=True, path="prefix")
        for size in (1, 4):
            assert max_diff(enc16(ctx, ct, path="prefix", chunk_size=size), whole) <= TOL
            assert max_diff(enc16(ctx_b, ct, per_image=True, path="prefix", chunk_size=size), whole_b) <= TOL


def _custom_block_clip():
    """A tiny CLIP whose text blocks scale attention heads (open_clip's CustomResidualAttentionBlock)."""
    torch.manual_seed(0)
    vision = {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 16}
    text = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2, "scale_heads": True}
    return open_clip.model.CLIP(embed_dim=32, vision_cfg=vision, text_cfg=text).eval()


def test_unsupported_blocks_fall_back_or_refuse():
    model = _custom_block_clip()
    tok = open_clip.get_tokenizer("ViT-B-32")
    enc = PromptTextEncoder(model, tok)  # auto: falls back to the truncated path
    assert enc.prefix_unsupported and "CustomResidualAttentionBlock" in enc.prefix_unsupported
    ct = enc.class_tokens(["cat", "Annual Crop Land"])
    with torch.no_grad():
        out = enc(enc.word_embeddings("a photo of a"), ct)
        ref = model.encode_text(tok(["a photo of a cat.", "a photo of a Annual Crop Land."]))
    assert max_diff(out, ref) <= TOL
    with pytest.raises(TextEncoderError, match="shared-prefix text encoding not possible: block 0"):
        PromptTextEncoder(model, tok, shared_prefix=True)
    with pytest.raises(TextEncoderError, match="shared-prefix text encoding not possible"):
        enc(torch.zeros(4, 64), ct, path="prefix")
