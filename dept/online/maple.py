"""MaPLe (Khattak et al., CVPR 2023): multi-modal prompts. Learned text prompts at the first J layers of the text
tower; each layer's vision prompt is a learned linear map (the coupling function) of that layer's text prompt,
inserted into the vision tower. Deep prompts replace the previous layer's prompt tokens.

Reference recipe (DePT's MaPLe config): 2 context tokens initialised from the first two tokens of "a photo of a"
(the rest of the phrase, "of a", stays as fixed words before the class name), prompt depth 9, deeper text
prompts N(0, 0.02), one coupling Linear(d_text -> d_vision) per layer, the deeper ones starting as copies of one
freshly initialised layer; SGD lr 0.0035, 10 epochs, batch 4.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from dept.methods.base import MethodOptions
from dept.online.base import OnlinePromptMethod, register_online_method
from dept.online.vision import prompted_image_features, vision_layers, vision_width


@dataclass(frozen=True)
class MaPLeOptions(MethodOptions):
    n_ctx: int = 2
    ctx_init: str | None = "a photo of a"  # None = random N(0, init_std) context
    init_std: float = 0.02
    prompt_depth: int = 9  # J: layers of both towers that get prompts (1 = shallow: input layer only)

    def __post_init__(self):
        if self.n_ctx < 1 or self.prompt_depth < 1:
            raise ValueError(f"MaPLe needs n_ctx >= 1 and prompt_depth >= 1, got {self.n_ctx}, {self.prompt_depth}")


def split_init(encoder, n_ctx: int, ctx_init: str | None, init_std: float) -> tuple[torch.Tensor, str]:
    """The initial context ``[n_ctx, d]`` and the fixed words left before the class name: the first ``n_ctx``
    tokens of ``ctx_init`` are learned, the rest of the phrase stays (random N(0, std) and no words without it)."""
    if not ctx_init:
        return torch.randn(n_ctx, encoder.width) * init_std, ""
    words = encoder.word_embeddings(ctx_init)
    if words.shape[0] < n_ctx:
        raise ValueError(f"ctx_init {ctx_init!r} has {words.shape[0]} tokens, fewer than n_ctx={n_ctx}")
    phrase = ctx_init.replace("_", " ").split()
    if len(phrase) != words.shape[0]:
        raise ValueError(f"ctx_init {ctx_init!r} must be one token per word to keep its rest as words "
                         f"({len(phrase)} words, {words.shape[0]} tokens)")
    lead = " ".join(phrase[n_ctx:])
    return words[:n_ctx].clone(), lead


@register_online_method("maple")
class MaPLe(OnlinePromptMethod):
    Options = MaPLeOptions
    default_lr = 0.0035
    default_batch_size = 4
    default_epochs = 10

    def __init__(self, encoder, visual, options: MaPLeOptions, *, classnames):
        super().__init__(encoder, visual, options, classnames=classnames)
        depth = options.prompt_depth
        if depth > min(vision_layers(visual), len(encoder._tower.transformer.resblocks)):
            raise ValueError(f"MaPLe prompt_depth {depth} exceeds the towers' layers")
        ctx, self.lead = split_init(encoder, options.n_ctx, options.ctx_init, options.init_std)
        self.ctx = nn.Parameter(ctx)
        d_text, d_vis = encoder.width, vision_width(visual)
        self.proj = nn.Linear(d_text, d_vis)  # coupling of the input layer
        self.deep_text = nn.ParameterList(
            [nn.Parameter(torch.randn(options.n_ctx, d_text) * options.init_std) for _ in range(depth - 1)]
        )
        one = nn.Linear(d_text, d_vis)
        self.deep_proj = nn.ModuleList([copy.deepcopy(one) for _ in range(depth - 1)])

    def text_prompts(self) -> list[torch.Tensor]:
        return [self.ctx, *self.deep_text]

    def vision_prompts(self) -> list[torch.Tensor]:
        return [self.proj(self.ctx), *(f(p) for f, p in zip(self.deep_proj, self.deep_text))]

    def text_features(self, encoder, classes, *, chunk_size=None):
        return encoder.deep_forward(self.text_prompts(), classes, chunk_size=chunk_size)

    def image_features(self, visual, images):
        return prompted_image_features(visual, images, self.vision_prompts())
