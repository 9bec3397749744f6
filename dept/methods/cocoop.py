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
