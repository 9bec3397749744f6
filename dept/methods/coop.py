"""CoOp: learned context vectors in front of every class name ("X X ... X {class}.")."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dept.methods.base import MethodOptions, PromptMethod, init_context, register_method, stacked_context_features


@dataclass(frozen=True)
class CoOpOptions(MethodOptions):
    n_ctx: int = 16
    ctx_init: str | None = None  # e.g. "a photo of a"; None = random N(0, init_std)
    init_std: float = 0.02
    class_specific: bool = False  # one context per class (CSC) instead of one shared by all classes


@register_method("coop")
class CoOp(PromptMethod):
    Options = CoOpOptions

    def __init__(self, encoder, options: CoOpOptions, *, classnames, dataset, embed_dim):
        super().__init__(encoder, options, classnames=classnames, dataset=dataset, embed_dim=embed_dim)
        shape = (len(classnames),) if options.class_specific else ()
        self.ctx = nn.Parameter(init_context(encoder, options.n_ctx, options.ctx_init, options.init_std, shape))

    def text_features(self, encoder, classes, image_features=None, *, chunk_size=None) -> torch.Tensor:
        if self.options.class_specific and len(classes) != self.ctx.shape[0]:
            # Class-specific contexts exist only for the classes trained on: new classes have none.
            raise ValueError(
                f"class-specific CoOp has contexts for {self.ctx.shape[0]} classes, asked for {len(classes)}"
            )
        return encoder(self.ctx, classes, chunk_size=chunk_size)

    @classmethod
    def population_text_features(cls, members, encoder, classes, image_features):
        if members[0].options.class_specific:  # a context per class takes the truncated path: one member at a time
            return super().population_text_features(members, encoder, classes, image_features)
        return stacked_context_features(members, encoder, classes)
