"""DePT's CAT head ("Channel Adjusted Transfer"), its loss and the base-class fusion — written once, composed
with any prompt method (see ``dept.learner``).

Equations (METHOD.md):
    cwT(u) = g * u + b                               per-channel scale and shift; g = 1, b = 0 at init
    Z = Linear_{D->K}( [cwT_txt(T[y]) ; cwT_img(V)] )   the text feature of each sample's class is an extra sample
    L = (1 - loss_weight) * CE(s, y) + loss_weight * CE(Z, [y ; y])
    base logits = (1 - fusion_weight) * s + fusion_weight * Linear(cwT_img(V))    ("logits" mode)
                or (1 - fusion_weight) * softmax(s) + fusion_weight * softmax(...)  ("probs" mode, the paper's text)
The CAT head sees raw (unnormalised) features; the ITM head ``s`` normalises.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dept.config import DePTConfig, FusionMode, applied_dept  # noqa: F401  (the head's config, re-exported)


class ChannelwiseTransform(nn.Module):
    """cwT: a learned per-channel scale and shift, identity at init."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))
        self.shift = nn.Parameter(torch.zeros(dim))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return u * self.scale + self.shift


class CATHead(nn.Module):
    """Image cwT + text cwT + one linear classifier over the base classes."""

    def __init__(self, dim: int, num_base_classes: int):
        super().__init__()
        self.cwt_image = ChannelwiseTransform(dim)
        self.cwt_text = ChannelwiseTransform(dim)
        self.classifier = nn.Linear(dim, num_base_classes)  # bias, PyTorch default init

    def image_logits(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.cwt_image(image_features))

    def text_logits(self, text_features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.cwt_text(text_features))

    def training_logits(self, image_features: torch.Tensor, class_text_features: torch.Tensor) -> torch.Tensor:
        """Z for the 2B rows [text of each sample's class ; image]; targets are ``[y ; y]``."""
        return torch.cat([self.text_logits(class_text_features), self.image_logits(image_features)], dim=0)


def stacked_training_logits(
    heads: list[CATHead], image_features: torch.Tensor, class_text_features: torch.Tensor
) -> torch.Tensor:
    """Z ``[P, 2B, K]`` of P heads at once (a population's, see ``dept.population``) for ``[P, B, D]`` inputs:
    member ``p``'s rows equal ``heads[p].training_logits``, as batched matmuls over stacked parameters."""

    def stack(get) -> torch.Tensor:
        return torch.stack([get(h) for h in heads]).unsqueeze(1)  # [P, 1, ...]: broadcast over the batch

    w = torch.stack([h.classifier.weight for h in heads]).transpose(1, 2)  # [P, D, K]
    bias = stack(lambda h: h.classifier.bias)
    text = class_text_features * stack(lambda h: h.cwt_text.scale) + stack(lambda h: h.cwt_text.shift)
    image = image_features * stack(lambda h: h.cwt_image.scale) + stack(lambda h: h.cwt_image.shift)
    return torch.cat([torch.baddbmm(bias, text, w), torch.baddbmm(bias, image, w)], dim=1)


def dept_loss(
    itm_logits: torch.Tensor,
    cat_logits: torch.Tensor | None,
    labels: torch.Tensor,
    loss_weight: float,
) -> torch.Tensor:
    """(1 - lw) * CE(s, y) + lw * CE(Z, [y; y]). ``cat_logits`` is Z (2B rows); None means plain CE(s, y)."""
    itm = F.cross_entropy(itm_logits, labels)
    if cat_logits is None or loss_weight == 0.0:
        return itm
    cat = F.cross_entropy(cat_logits, torch.cat([labels, labels]))
    return (1.0 - loss_weight) * itm + loss_weight * cat


def fuse(
    itm_logits: torch.Tensor, cat_logits: torch.Tensor, fusion_weight: float, mode: FusionMode = "logits"
) -> torch.Tensor:
    """Base-class scores from the ITM and CAT heads. Only argmax matters for accuracy, so a sweep over
    ``fusion_weight`` after training re-mixes two stored matrices and runs no encoder."""
    if mode == "logits":
        return (1.0 - fusion_weight) * itm_logits + fusion_weight * cat_logits
    if mode == "probs":
        return (1.0 - fusion_weight) * itm_logits.softmax(-1) + fusion_weight * cat_logits.softmax(-1)
    raise ValueError(f"fusion mode must be 'logits' or 'probs', got {mode!r}")
