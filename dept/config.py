"""The method library's configurations and every default of its recipe, torch-free: the command line reads them
(help texts, search-space checks) without loading torch.

``CROP_SCALE`` / ``CROP_RATIO`` / ``FLIP_P``: the augmented training views. ``DePTConfig``: DePT's two coefficients and the fusion mode (METHOD.md). ``TrainConfig``: the reference training
recipe, its schedule included (``lr_at``; see ``dept.training``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

#: Random-resized-crop area range (fraction of the image) and aspect-ratio range of the training views
#: (``dept.transforms``), and their horizontal-flip probability.
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
FLIP_P = 0.5

FusionMode = Literal["logits", "probs"]

#: Training precision: "fp32", or "bf16" (bf16 autocast for the training forward; parameters, gradients and SGD
#: stay fp32: master weights). "auto" resolves by device: bf16 on a GPU, fp32 on CPU (where bf16 matmuls are
#: rarely faster). Scoring (validation, test, the fusion sweep) always runs in fp32.
Precision = Literal["fp32", "bf16"]
PRECISIONS = ("auto", "fp32", "bf16")
#: ``torch.compile`` modes a training step may use ("reduce-overhead" adds CUDA graphs).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def resolve_precision(asked: str, device: str) -> Precision:
    """The precision a training on ``device`` ("cpu", "cuda", "cuda:1", ...) runs at when ``asked`` for one of
    :data:`PRECISIONS`."""
    if asked not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {asked!r}")
    if asked == "auto":
        return "bf16" if device.startswith("cuda") else "fp32"
    return asked  # type: ignore[return-value]


@dataclass(frozen=True)
class DePTConfig:
    """DePT's two coefficients, kept apart (the reference code uses one knob for both).

    Loss weight 0 is the plain base method (the paper's lam = 0): the CAT head would get no gradient, so fusing
    its untrained logits would only add noise. :meth:`effective` says what is really applied.
    """

    loss_weight: float = 0.7  # lam: weight of the CAT head's loss during training
    fusion_weight: float = 0.7  # a: weight of the CAT head in base-class inference
    fusion: FusionMode = "logits"  # the reference code fuses logits; the paper's text fuses probabilities

    def __post_init__(self):
        for name in ("loss_weight", "fusion_weight"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"DePT {name} must be in [0, 1], got {v}")
        if self.fusion not in ("logits", "probs"):
            raise ValueError(f"DePT fusion must be 'logits' or 'probs', got {self.fusion!r}")

    @property
    def uses_cat_head(self) -> bool:
        """Whether a CAT head is built and trained: only a positive loss weight gives it a gradient."""
        return self.loss_weight > 0.0

    def effective(self) -> "DePTConfig | None":
        """The config really applied: itself, or None (the plain method, fusion weight 0) at loss weight 0."""
        return self if self.uses_cat_head else None


def applied_dept(dept: DePTConfig | None) -> dict[str, object]:
    """What a run really applies, flat, for a run's params: ``dept_effective`` (is a CAT head built, trained and
    fused) and the loss / fusion weights in effect (0 and 0 for the plain method, whatever was asked)."""
    eff = dept.effective() if dept is not None else None
    return {
        "dept_effective": eff is not None,
        "loss_weight_effective": eff.loss_weight if eff is not None else 0.0,
        "fusion_weight_effective": eff.fusion_weight if eff is not None else 0.0,
    }



@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 4
    lr: float = 0.0035  # prompts (CoCoOp: 0.002)
    head_lr_mult: float = 6.5  # CAT head lr = lr * head_lr_mult
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 1

    def __post_init__(self):
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"bad training config: epochs={self.epochs} batch_size={self.batch_size} lr={self.lr}")
        if self.warmup_epochs < 0 or self.warmup_lr < 0:
            raise ValueError(f"bad training config: warmup_epochs={self.warmup_epochs} warmup_lr={self.warmup_lr}")

    def lr_at(self, epoch: int, base_lr: float) -> float:
        """The lr of 0-based ``epoch`` for a parameter group whose base lr is ``base_lr``.

        Dassl's warmup wrapper keeps its own epoch count: while that count is below ``warmup_epochs`` every group
        runs at ``warmup_lr``; once past, it steps the cosine successor, which was created at its epoch 0 and so
        runs one warmup behind the wrapper (the successor's ``last_epoch`` is not advanced during warmup).
        """
        if epoch < self.warmup_epochs:
            return self.warmup_lr
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - self.warmup_epochs) / self.epochs))

    def lr_schedule(self, base_lr: float | None = None) -> list[float]:
        """The lr of every epoch, in order, for base lr ``base_lr`` (default: the prompts' ``lr``)."""
        return [self.lr_at(e, self.lr if base_lr is None else base_lr) for e in range(self.epochs)]
