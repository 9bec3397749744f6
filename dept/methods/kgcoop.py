"""KgCoOp: CoOp plus a knowledge-guidance term pulling learned class text features towards those of the
dataset's hand-crafted template: w_kg * (1 - mean_k cos(T_k, T_k^hand)).

The knowledge-guidance weight w_kg defaults to the DePT reference's 2.0, for KgCoOp and KgCoOp+DePT alike, so
"+DePT" changes one thing; the original KgCoOp recipe's 8.0 is :data:`ORIGINAL_KGCOOP_WEIGHT`, opt-in.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dept.methods.base import MethodOptions, PromptMethod, init_context, register_method, stacked_context_features


#: w_kg of the DePT reference (its KgCoOp config, W: 2.0), used with and without DePT: the one default.
DEPT_KGCOOP_WEIGHT = 2.0
#: w_kg of the original KgCoOp recipe; pass ``kg_weight=ORIGINAL_KGCOOP_WEIGHT`` to run that recipe.
ORIGINAL_KGCOOP_WEIGHT = 8.0


@dataclass(frozen=True)
class KgCoOpOptions(MethodOptions):
    n_ctx: int = 4
    ctx_init: str | None = "a photo of a"
    init_std: float = 0.02
    kg_weight: float = DEPT_KGCOOP_WEIGHT  # same with and without DePT; ORIGINAL_KGCOOP_WEIGHT is opt-in
    template: str | None = None  # None = the dataset's hand-crafted template (dept.datasets.kgcoop_template)

    def __post_init__(self):
        if not self.kg_weight >= 0.0:
            raise ValueError(f"KgCoOp kg_weight must be >= 0, got {self.kg_weight}")


@register_method("kgcoop")
class KgCoOp(PromptMethod):
    Options = KgCoOpOptions

    def __init__(self, encoder, options: KgCoOpOptions, *, classnames, dataset, embed_dim):
        super().__init__(encoder, options, classnames=classnames, dataset=dataset, embed_dim=embed_dim)
        self.ctx = nn.Parameter(init_context(encoder, options.n_ctx, options.ctx_init, options.init_std))
        if options.template is not None:
            self.template = options.template
        else:
            from dept.datasets import kgcoop_template

            self.template = kgcoop_template(dataset)
        if "{}" not in self.template:
            raise ValueError(f"KgCoOp template must contain '{{}}' for the class name: {self.template!r}")
        self._targets: dict[tuple[str, ...], torch.Tensor] = {}

    def text_features(self, encoder, classes, image_features=None, *, chunk_size=None) -> torch.Tensor:
        return encoder(self.ctx, classes, chunk_size=chunk_size)

    def hand_crafted_features(self, encoder, classnames: tuple[str, ...]) -> torch.Tensor:
        if classnames not in self._targets:  # frozen targets: encode once per class list
            with torch.no_grad():
                self._targets[classnames] = encoder.encode_texts([self.template.format(c) for c in classnames])
        return self._targets[classnames]

    def regularizer(self, encoder, classes, text_features) -> torch.Tensor:
        target = self.hand_crafted_features(encoder, tuple(classes.classnames)).to(text_features.device)
        cos = F.cosine_similarity(text_features, target, dim=-1)
        return self.options.kg_weight * (1.0 - cos.mean())

    @classmethod
    def population_text_features(cls, members, encoder, classes, image_features):
        return stacked_context_features(members, encoder, classes)

    @classmethod
    def population_regularizer(cls, members, encoder, classes, text_features):
        target = members[0].hand_crafted_features(encoder, tuple(classes.classnames)).to(text_features.device)
        cos = F.cosine_similarity(text_features, target, dim=-1)  # [P, K]
        kg = torch.tensor([m.options.kg_weight for m in members], dtype=cos.dtype, device=cos.device)
        return kg * (1.0 - cos.mean(-1))
