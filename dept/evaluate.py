"""Base-to-new evaluation: base accuracy with the fused head, new accuracy with the ITM head, HM.

``BaseNewResult`` keeps the two base-class logit matrices, so any fusion weight can be re-scored after training
with one matrix mix (``fusion_sweep``) — no encoder pass. ``evaluate_zero_shot`` scores untrained CLIP the same
way (the paper tables' first row), from cached features and a hand-written template (``dept.zero_shot``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dept.clip import LoadedClip
from dept.config import FusionMode
from dept.head import fuse
from dept.learner import DePTLearner
from dept.scores import accuracy, harmonic_mean  # noqa: F401  (re-exported)
from dept.zero_shot import zero_shot_classifier


@torch.no_grad()
def itm_logits(
    learner: DePTLearner,
    features: torch.Tensor,
    classnames: list[str],
    *,
    batch_size: int = 256,
    class_chunk: int | None = 256,
) -> torch.Tensor:
    """ITM logits over ``classnames`` for ``[N, D]`` features. Shared-context methods encode the class texts
    once; per-image methods (CoCoOp) encode them per image, in batches. ``class_chunk`` classes go through the
    text encoder at a time, so 1000 classes run in bounded memory (None: all at once; same numbers)."""
    learner.eval()
    device = next(learner.method.parameters()).device
    if not learner.method.per_image:
        text = learner.text_features(classnames, chunk_size=class_chunk)
        return torch.cat(
            [learner.itm_logits_from(features[i : i + batch_size].to(device), text).cpu() for i in range(0, len(features), batch_size)]
            or [torch.empty(0, len(classnames))]
        )
    step = max(1, batch_size // 16)
    return torch.cat(
        [learner.itm_logits(features[i : i + step].to(device), classnames, chunk_size=class_chunk).cpu() for i in range(0, len(features), step)]
        or [torch.empty(0, len(classnames))]
    )


@torch.no_grad()
def cat_logits(learner: DePTLearner, features: torch.Tensor) -> torch.Tensor:
    device = next(learner.method.parameters()).device
    return learner.cat_logits(features.to(device)).cpu()


@dataclass
class BaseNewResult:
    base_acc: float
    new_acc: float
    hm: float
    base_labels: torch.Tensor
    base_itm_logits: torch.Tensor
    base_cat_logits: torch.Tensor | None  # None without DePT
    fusion_weight: float
    fusion: FusionMode

    def base_acc_at(self, fusion_weight: float) -> float:
        if self.base_cat_logits is None:
            return accuracy(self.base_itm_logits, self.base_labels)
        return accuracy(fuse(self.base_itm_logits, self.base_cat_logits, fusion_weight, self.fusion), self.base_labels)

    def fusion_sweep(self, weights) -> list[tuple[float, float, float]]:
        """(fusion weight, base accuracy, HM) for each weight; new accuracy does not depend on it."""
        return [(float(w), b, harmonic_mean(b, self.new_acc)) for w in weights for b in [self.base_acc_at(float(w))]]

    def metrics(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}base_acc": self.base_acc, f"{prefix}new_acc": self.new_acc, f"{prefix}hm": self.hm}


def evaluate_base_new(
    learner: DePTLearner,
    base_features: torch.Tensor,
    base_labels: torch.Tensor,
    new_features: torch.Tensor,
    new_labels: torch.Tensor,
    new_classnames: list[str],
    *,
    batch_size: int = 256,
    class_chunk: int | None = 256,
) -> BaseNewResult:
    """Base accuracy over the base classes (fused head; ITM without DePT) and new accuracy over the new classes
    (ITM head only: the CAT head knows only base classes), with the same learned prompts."""
    base_itm = itm_logits(learner, base_features, learner.base_classnames, batch_size=batch_size, class_chunk=class_chunk)
    base_cat = cat_logits(learner, base_features) if learner.dept is not None else None
    new_acc = accuracy(itm_logits(learner, new_features, new_classnames, batch_size=batch_size, class_chunk=class_chunk), new_labels) if len(new_classnames) else float("nan")
    w = learner.dept.fusion_weight if learner.dept is not None else 0.0
    mode = learner.dept.fusion if learner.dept is not None else "logits"
    result = BaseNewResult(
        base_acc=0.0, new_acc=new_acc, hm=0.0, base_labels=base_labels.cpu(), base_itm_logits=base_itm,
        base_cat_logits=base_cat, fusion_weight=w, fusion=mode,
    )
    result.base_acc = result.base_acc_at(w)
    result.hm = harmonic_mean(result.base_acc, new_acc)
    return result


@torch.no_grad()
def evaluate_zero_shot(
    clip: LoadedClip,
    template: str,
    base_features: torch.Tensor,
    base_labels: torch.Tensor,
    base_classnames: list[str],
    new_features: torch.Tensor,
    new_labels: torch.Tensor,
    new_classnames: list[str],
    *,
    logit_scale: float | None = None,
    batch_size: int = 256,
    class_chunk: int | None = 256,
) -> BaseNewResult:
    """Zero-shot CLIP under the base-to-new protocol on ``[N, D]`` image features: class texts
    ``template.format(name)`` through the frozen text tower (equal to ``encode_text``), logits
    tau * norm(V) @ norm(T).T as the ITM head's (tau: the model's learned one unless ``logit_scale``); base accuracy
    among the base classes, new among the new ones. No CAT head, nothing trained."""
    base = zero_shot_classifier(clip, base_classnames, template, logit_scale=logit_scale, class_chunk=class_chunk)
    base_itm = base.logits(base_features, batch_size=batch_size)
    new_acc = (zero_shot_classifier(clip, new_classnames, template, logit_scale=logit_scale, class_chunk=class_chunk)
               .accuracy(new_features, new_labels, batch_size=batch_size)) if new_classnames else float("nan")
    base_acc = accuracy(base_itm, base_labels)
    return BaseNewResult(base_acc=base_acc, new_acc=new_acc, hm=harmonic_mean(base_acc, new_acc),
                         base_labels=base_labels.cpu(), base_itm_logits=base_itm, base_cat_logits=None,
                         fusion_weight=0.0, fusion="logits")
