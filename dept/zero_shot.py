"""Zero-shot CLIP, written once: class texts from a hand-crafted template through the frozen text tower, scored
against image features as the ITM head scores them (tau * norm(V) @ norm(T).T). Base-to-new
(``dept.evaluate.evaluate_zero_shot``), the transfer protocols' zero-shot rows and the miniature's check all use it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from dept.clip import LoadedClip
from dept.scores import accuracy
from dept.text_encoder import PromptTextEncoder


@dataclass(frozen=True)
class ZeroShotClassifier:
    """The class-text side of zero-shot CLIP: one normalised text feature per class, and the temperature."""

    classnames: tuple[str, ...]
    text_features: torch.Tensor  # [K, D], normalised
    logit_scale: float

    @torch.no_grad()
    def logits(self, image_features: torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
        """``[N, K]`` logits of ``[N, D]`` image features (raw encoder output; normalised here), on the CPU."""
        text = self.text_features
        rows = [self.logit_scale * F.normalize(image_features[i : i + batch_size].to(text.device), dim=-1) @ text.t()
                for i in range(0, len(image_features), batch_size)]
        return torch.cat(rows).cpu() if rows else torch.empty(0, len(self.classnames))

    def accuracy(self, image_features: torch.Tensor, labels: torch.Tensor, *, batch_size: int = 256) -> float:
        """Top-1 accuracy in percent among all of this classifier's classes (NaN without images)."""
        return accuracy(self.logits(image_features, batch_size=batch_size), labels)


@torch.no_grad()
def zero_shot_classifier(
    clip: LoadedClip,
    classnames: Sequence[str],
    template: str,
    *,
    logit_scale: float | None = None,
    class_chunk: int | None = 256,
) -> ZeroShotClassifier:
    """Zero-shot classifier weights for ``classnames``: ``template.format(name)`` through the frozen text tower
    (equal to ``encode_text``), ``class_chunk`` classes at a time; tau is the model's learned one unless
    ``logit_scale``. A template without ``{}`` is refused in one line."""
    if "{}" not in template:
        raise ValueError(f"zero-shot template must contain '{{}}' for the class name: {template!r}")
    names = tuple(classnames)
    tau = float(clip.model.logit_scale.exp().item()) if logit_scale is None else float(logit_scale)
    if not names:
        return ZeroShotClassifier(names, torch.empty(0, clip.embed_dim), tau)
    encoder = PromptTextEncoder(clip.model, clip.tokenizer)
    text = F.normalize(encoder.encode_texts([template.format(c) for c in names], chunk_size=class_chunk), dim=-1)
    return ZeroShotClassifier(names, text, tau)
