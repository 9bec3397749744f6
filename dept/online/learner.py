"""An online prompt method (MaPLe, PromptSRC) composed with DePT's CAT head, loss and fusion (``dept.head``: the
same head, loss and fusion as the text-side methods in ``dept.learner``), trained from pixels.

With ``dept=None`` (or DePT at loss weight 0) it is the plain method: no CAT head, ITM logits only.
"""
from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from dept.clip import LoadedClip
from dept.config import DePTConfig, TrainConfig, applied_dept
from dept.head import CATHead, dept_loss, fuse
from dept.online.base import ONLINE_METHODS, OnlinePromptMethod
from dept.online.promptsrc import GaussianPromptAverage
from dept.online.vision import VisionPromptError, unsupported_reason
from dept.text_encoder import ClassTokens, PromptTextEncoder

log = logging.getLogger(__name__)


class _Frozen:
    """A reference to a frozen module that nn.Module does not register (no CLIP weights in a state_dict)."""

    def __init__(self, module: nn.Module):
        self.module = module


class OnlineLearner(nn.Module):
    def __init__(
        self, encoder: PromptTextEncoder, visual: nn.Module, method: OnlinePromptMethod, base_classnames: list[str],
        dept: DePTConfig | None, logit_scale: float, *, embed_dim: int,
    ):
        super().__init__()
        self.encoder = encoder
        self._visual = _Frozen(visual.requires_grad_(False))
        self.method = method
        self.dept_requested = dept
        self.dept = dept.effective() if dept is not None else None
        self.cat_head = CATHead(embed_dim, len(base_classnames)) if self.dept is not None else None
        self.base_classnames = list(base_classnames)
        self.logit_scale = float(logit_scale)
        self._class_tokens: dict[tuple[str, ...], ClassTokens] = {}

    @property
    def visual(self) -> nn.Module:
        return self._visual.module

    # -- what is learned ------------------------------------------------------------------------------------
    def param_groups(self, lr: float, head_lr_mult: float) -> list[dict]:
        groups = [{"params": list(self.method.parameters()), "lr": lr, "name": "prompts"}]
        if self.cat_head is not None:
            groups.append({"params": list(self.cat_head.parameters()), "lr": lr * head_lr_mult, "name": "cat_head"})
        return groups

    def applied_params(self) -> dict[str, object]:
        return applied_dept(self.dept)

    # -- features and heads ---------------------------------------------------------------------------------
    def class_tokens(self, classnames: list[str]) -> ClassTokens:
        key = tuple(classnames)
        if key not in self._class_tokens:
            self._class_tokens[key] = self.encoder.class_tokens(list(classnames), lead=self.method.lead)
        return self._class_tokens[key]

    def text_features(self, classnames: list[str], *, chunk_size: int | None = None) -> torch.Tensor:
        return self.method.text_features(self.encoder, self.class_tokens(classnames), chunk_size=chunk_size)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.method.image_features(self.visual, images)

    def itm_logits_from(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """s = tau * norm(V) @ norm(T).T, the CLIP-space logits."""
        return self.logit_scale * F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).t()

    # -- training -------------------------------------------------------------------------------------------
    def training_loss(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The loss of one batch of normalised pixels ``[B, 3, H, W]`` with labels in 0..K-1 over the base classes."""
        classes = self.class_tokens(self.base_classnames)
        text = self.method.text_features(self.encoder, classes)
        image = self.method.image_features(self.visual, images)
        itm = self.itm_logits_from(image, text)
        cat = self.cat_head.training_logits(image, text[labels]) if self.cat_head is not None else None
        loss = dept_loss(itm, cat, labels, self.dept.loss_weight if self.dept is not None else 0.0)
        parts = {"itm_acc": (itm.argmax(-1) == labels).float().mean().item()}
        reg = self.method.regularizer(
            encoder=self.encoder, visual=self.visual, classes=classes, images=images, text_features=text,
            image_features=image, itm_logits=itm, logit_scale=self.logit_scale,
        )
        if reg is not None:
            parts["regularizer"] = reg.item()
            loss = loss + reg
        return loss, parts

    # -- inference ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def new_scores(self, images: torch.Tensor, classnames: list[str]) -> torch.Tensor:
        """ITM logits over any classes (new classes: the CAT head is not used)."""
        return self.itm_logits_from(self.image_features(images), self.text_features(classnames))

    @torch.no_grad()
    def base_scores(self, images: torch.Tensor, fusion_weight: float | None = None) -> torch.Tensor:
        """Base-class scores: DePT's fusion of the ITM and CAT logits, the ITM logits alone without DePT."""
        image = self.image_features(images)
        itm = self.itm_logits_from(image, self.text_features(self.base_classnames))
        if self.cat_head is None:
            return itm
        w = self.dept.fusion_weight if fusion_weight is None else fusion_weight
        return fuse(itm, self.cat_head.image_logits(image), w, self.dept.fusion)


def online_optimizer(learner: OnlineLearner, lr: float | None = None, *, head_lr_mult: float = 6.5,
                     momentum: float = 0.9, weight_decay: float = 5e-4) -> torch.optim.SGD:
    """SGD over the prompts (lr: the method's reference lr by default) and the CAT head (lr * head_lr_mult)."""
    lr = type(learner.method).default_lr if lr is None else lr
    return torch.optim.SGD(learner.param_groups(lr, head_lr_mult), lr=lr, momentum=momentum, weight_decay=weight_decay)


def online_training_step(learner: OnlineLearner, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                         labels: torch.Tensor) -> torch.Tensor:
    """One SGD step from pixels; returns the (detached) loss of the batch before the step."""
    learner.train()
    loss, _ = learner.training_loss(images, labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def build_online_learner(
    method: str, clip: LoadedClip, base_classnames: list[str], *, method_options: dict | None = None,
    dept: DePTConfig | None = DePTConfig(), seed: int | None = 1, logit_scale: float | None = None,
) -> OnlineLearner:
    """``maple`` | ``promptsrc`` with DePT's CAT head on top (``dept=None``: the plain method), from a CLIP
    loaded with its image tower (``load_clip(..., text_only=False)``)."""
    if method not in ONLINE_METHODS:
        raise ValueError(f"unknown online prompt method {method!r}; known: {', '.join(sorted(ONLINE_METHODS))}")
    if not base_classnames:
        raise ValueError("no base classes to train on")
    visual = getattr(clip.model, "visual", None)
    if visual is None:
        raise ValueError(f"{method} needs the image tower: load CLIP with text_only=False")
    reason = unsupported_reason(visual)
    if reason:
        raise VisionPromptError(reason)
    cls = ONLINE_METHODS[method]
    options = cls.Options.from_dict(method_options)
    encoder = PromptTextEncoder(clip.model, clip.tokenizer)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        m = cls(encoder, visual, options, classnames=list(base_classnames))
        learner = OnlineLearner(
            encoder, visual, m, list(base_classnames), dept,
            float(clip.model.logit_scale.exp().item()) if logit_scale is None else float(logit_scale),
            embed_dim=clip.embed_dim,
        )
    learner.method_options = asdict(options)
    return learner.to(next(clip.model.parameters()).device)


def train_online(
    learner: OnlineLearner,
    batches: Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]],
    config: TrainConfig | None = None,
    *,
    average: bool | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train from pixels: ``batches(epoch)`` yields ``(images, labels)`` for 0-based ``epoch``. The schedule is the
    reference recipe's (``TrainConfig.lr_at``: constant warmup, then cosine; every group at its own base lr).
    ``config`` None: ``TrainConfig`` with the method's reference epochs, lr and batch size. ``average``: PromptSRC's
    Gaussian prompt aggregation over the epochs (None: on for methods with ``gpa_mean`` in their options); the
    averaged state is loaded at the end. Returns each epoch's mean loss; ``on_epoch(epoch, loss)`` after each."""
    cls = type(learner.method)
    config = config or TrainConfig(epochs=cls.default_epochs, lr=cls.default_lr, batch_size=cls.default_batch_size)
    opt = online_optimizer(learner, config.lr, head_lr_mult=config.head_lr_mult, momentum=config.momentum,
                           weight_decay=config.weight_decay)
    base_lrs = [g["lr"] for g in opt.param_groups]
    o = learner.method.options
    if average is None:
        average = hasattr(o, "gpa_mean")
    gpa = GaussianPromptAverage(config.epochs, o.gpa_mean, o.gpa_std) if average and config.epochs else None
    history = []
    for epoch in range(config.epochs):
        for g, base in zip(opt.param_groups, base_lrs):
            g["lr"] = config.lr_at(epoch, base)
        losses = [online_training_step(learner, opt, x, y).item() for x, y in batches(epoch)]
        history.append(sum(losses) / len(losses) if losses else float("nan"))
        if gpa is not None:
            gpa.update(learner, epoch)
        if on_epoch is not None:
            on_epoch(epoch, history[-1])
    if gpa is not None:
        gpa.apply(learner)
    return history
