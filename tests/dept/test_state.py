"""The learned state: save / load round trip and its size."""
import pytest
import torch

from dept import DePTConfig, TrainConfig, build_learner, load_clip, load_state, save_state, train
from dept.clip import save_random_checkpoint
from tests.conftest import TINY_MODEL
from tests.dept.conftest import BASE, NEW, clustered_features


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
