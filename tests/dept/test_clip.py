"""CLIP loading: OpenAI weights, local checkpoints, text-only towers, errors, random init, the shipped tag."""
import pytest
import torch

from dept import load_clip
from dept.clip import ClipLoadError, creation_kwargs
from tests.conftest import TINY_MODEL


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


def test_shipped_tag_resolves_to_the_packaged_checkpoint():
    from dept.clip import ASSET_DIR, file_sha256

    clip = load_clip("dept-mini-vit", "shipped", text_only=True)
    assert clip.pretrained == "shipped"
    assert clip.weights_id == "sha256:" + file_sha256(ASSET_DIR / "dept-mini-vit.safetensors")
    with pytest.raises(ClipLoadError, match="no checkpoint ships"):
        load_clip(TINY_MODEL, "shipped")
