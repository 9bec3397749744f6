"""CoCoOp: CoOp's context plus an image-conditioned shift from a small meta-net (text encoded per image)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dept.methods.base import MethodOptions, PromptMethod, init_context, register_method


@dataclass(frozen=True)
class CoCoOpOptions(MethodOptions):
    n_ctx: int = 4
    ctx_init: str | None = "a photo of a"
    init_std: float = 0.02
    meta_net_reduction: int = 16  # hidden width = embed_dim // reduction


@register_method("cocoop")
class CoCoOp(PromptMethod):
    Options = CoCoOpOptions
    per_image = True
    default_lr = 0.002
    default_batch_size = 1  # text is encoded per image

    def __init__(self, encoder, options: CoCoOpOptions, *, classnames, dataset, embed_dim):
        super().__init__(encoder, options, classnames=classnames, dataset=dataset, embed_dim=embed_dim)
        self.ctx = nn.Parameter(init_context(encoder, options.n_ctx, options.ctx_init, options.init_std))
        hidden = max(1, embed_dim // options.meta_net_reduction)
        self.meta_net = nn.Sequential(
            nn.Linear(embed_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, encoder.width)
        )

    def text_features(self, encoder, classes, image_features=None, *, chunk_size=None) -> torch.Tensor:
        if image_features is None:
            raise ValueError("CoCoOp's text features depend on the image: pass image_features")
        shift = self.meta_net(F.normalize(image_features, dim=-1))  # [B, width]
        ctx = self.ctx.unsqueeze(0) + shift.unsqueeze(1)  # [B, n_ctx, width]: every token shifted alike
        return encoder(ctx, classes, per_image=True, chunk_size=chunk_size)  # [B, K, D]

    @classmethod
    def population_text_features(cls, members, encoder, classes, image_features):
        """The P meta-nets as batched matmuls, then all P x B per-image contexts through the encoder at once."""
        P, B, _ = image_features.shape
        w1, b1, w2, b2 = (torch.stack([getattr(m.meta_net[i], name) for m in members])
                          for i, name in ((0, "weight"), (0, "bias"), (2, "weight"), (2, "bias")))
        hidden = torch.baddbmm(b1.unsqueeze(1), F.normalize(image_features, dim=-1), w1.transpose(1, 2)).relu()
        shift = torch.baddbmm(b2.unsqueeze(1), hidden, w2.transpose(1, 2))  # [P, B, width]
        ctx = torch.stack([m.ctx for m in members]).unsqueeze(1) + shift.unsqueeze(2)  # [P, B, n_ctx, width]
        text = encoder(ctx.flatten(0, 1), classes, per_image=True)  # [P * B, K, D]
        return text.view(P, B, *text.shape[1:])
