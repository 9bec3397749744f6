"""Fixtures and data shared by the method library's tests."""
import pytest
import torch

from dept import load_clip
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
