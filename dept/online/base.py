"""The interface of the prompt methods that need the image tower in the loop (MaPLe, PromptSRC), and their registry.

Unlike ``dept.methods`` (text-side prompts, cacheable image features), these learn prompts inside both towers,
so every step encodes pixels. A method owns only what it learns; the frozen towers are passed in at call time,
so its ``state_dict`` holds no CLIP weights.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from dept.methods.base import MethodOptions, registrar

if TYPE_CHECKING:
    from dept.text_encoder import ClassTokens, PromptTextEncoder

ONLINE_METHODS: dict[str, type["OnlinePromptMethod"]] = {}


register_online_method = registrar(ONLINE_METHODS, "online prompt method")


class OnlinePromptMethod(nn.Module):
    """Deep prompts in the text tower (and the vision tower) of a frozen CLIP.

    ``lead``: fixed words between the learned context and each class name (see ``PromptTextEncoder.class_tokens``).
    """

    name: ClassVar[str]
    Options: ClassVar[type[MethodOptions]]
    default_lr: ClassVar[float] = 0.0035
    default_batch_size: ClassVar[int] = 4
    default_epochs: ClassVar[int] = 10
    lead: str = ""

    def __init__(self, encoder: "PromptTextEncoder", visual: nn.Module, options: MethodOptions, *, classnames: list[str]):
        super().__init__()
        self.options = options

    def text_features(self, encoder: "PromptTextEncoder", classes: "ClassTokens", *, chunk_size: int | None = None) -> torch.Tensor:
        """``[K, D]`` raw text features of the prompted text tower."""
        raise NotImplementedError

    def image_features(self, visual: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """``[B, D]`` raw image features of the prompted vision tower."""
        raise NotImplementedError

    def regularizer(
        self, *, encoder: "PromptTextEncoder", visual: nn.Module, classes: "ClassTokens", images: torch.Tensor,
        text_features: torch.Tensor, image_features: torch.Tensor, itm_logits: torch.Tensor, logit_scale: float,
    ) -> torch.Tensor | None:
        """An extra training loss term (PromptSRC's self-regularisation); None for most."""
        return None
