"""A prompt method composed with DePT's CAT head: the thing that is trained and evaluated.

``DePTLearner`` works on image *features* (cached or freshly encoded), so trials never run the image encoder.
With ``dept=None`` it is the plain base method (ITM head only); so it is with DePT at loss weight 0, where the CAT
head would get no gradient: no head is built, and the learner is the base method bit for bit.
"""
from __future__ import annotations

import logging
from dataclasses import asdict

import torch
import torch.nn.functional as F
from torch import nn

from dept.clip import LoadedClip
from dept.config import DePTConfig, applied_dept
from dept.head import CATHead, dept_loss, fuse
from dept.methods import METHODS, PromptMethod
from dept.text_encoder import ClassTokens, PromptTextEncoder

log = logging.getLogger(__name__)


class DePTLearner(nn.Module):
    def __init__(
        self,
        encoder: PromptTextEncoder,
        method: PromptMethod,
        base_classnames: list[str],
        dept: DePTConfig | None,
        logit_scale: float,
        *,
        embed_dim: int,
        dataset: str = "",
        method_options: dict | None = None,
        clip_identity: dict | None = None,
    ):
        super().__init__()
        self.encoder = encoder
        self.embed_dim = embed_dim
        self.method = method
        self.dept_requested = dept  # what was asked (recorded, and rebuilt from, in saved states)
        self.dept = dept.effective() if dept is not None else None  # what is applied: None = the plain method
        if dept is not None and self.dept is None:
            log.info("DePT loss weight 0: no CAT head; this is the plain %s (fusion weight 0, not %.2f)",
                     method.name, dept.fusion_weight)
        self.cat_head = CATHead(embed_dim, len(base_classnames)) if self.dept is not None else None
        self.base_classnames = list(base_classnames)
        self.logit_scale = float(logit_scale)  # the temperature tau itself (CLIP's exp(logit_scale)), frozen
        self.dataset = dataset
        self.method_options = dict(method_options or {})
        self.clip_identity = dict(clip_identity or {})
        self._class_tokens: dict[tuple[str, ...], ClassTokens] = {}

    # -- what is learned ------------------------------------------------------------------------------------
    def learned_modules(self) -> dict[str, nn.Module]:
        modules = {"method": self.method}
        if self.cat_head is not None:
            modules["cat_head"] = self.cat_head
        return modules

    def param_groups(self, lr: float, head_lr_mult: float) -> list[dict]:
        groups = [{"params": list(self.method.parameters()), "lr": lr, "name": "prompts"}]
        if self.cat_head is not None:
            groups.append({"params": list(self.cat_head.parameters()), "lr": lr * head_lr_mult, "name": "cat_head"})
        return groups

    def config(self) -> dict:
        return {
            "method": self.method.name,
            "method_options": self.method_options,
            "dept": asdict(self.dept_requested) if self.dept_requested is not None else None,
            **self.applied_params(),
            "base_classnames": self.base_classnames,
            "dataset": self.dataset,
            "logit_scale": self.logit_scale,
            "clip": self.clip_identity,
        }

    def applied_params(self) -> dict[str, object]:
        """``dept_effective``, ``loss_weight_effective``, ``fusion_weight_effective``: what this learner really
        trains and fuses with (DePT at loss weight 0 reads as the plain method: false, 0, 0)."""
        return applied_dept(self.dept)

    # -- heads ----------------------------------------------------------------------------------------------
    def class_tokens(self, classnames: list[str]) -> ClassTokens:
        key = tuple(classnames)
        if key not in self._class_tokens:
            self._class_tokens[key] = self.encoder.class_tokens(list(classnames))
        return self._class_tokens[key]

    def text_features(
        self, classnames: list[str], image_features: torch.Tensor | None = None, *, chunk_size: int | None = None
    ) -> torch.Tensor:
        return self.method.text_features(self.encoder, self.class_tokens(classnames), image_features, chunk_size=chunk_size)

    def itm_logits_from(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """s = tau * norm(V) @ norm(T).T; per-image text features [B, K, D] give one row per image."""
        v = F.normalize(image_features, dim=-1)
        t = F.normalize(text_features, dim=-1)
        if t.dim() == 3:
            return self.logit_scale * torch.einsum("bd,bkd->bk", v, t)
        return self.logit_scale * v @ t.t()

    def itm_logits(
        self, image_features: torch.Tensor, classnames: list[str], *, chunk_size: int | None = None
    ) -> torch.Tensor:
        return self.itm_logits_from(image_features, self.text_features(classnames, image_features, chunk_size=chunk_size))

    def cat_logits(self, image_features: torch.Tensor) -> torch.Tensor:
        if self.cat_head is None:
            raise ValueError("this learner has no CAT head (DePT is off)")
        return self.cat_head.image_logits(image_features)

    # -- training -------------------------------------------------------------------------------------------
    def training_loss(self, image_features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        classes = self.class_tokens(self.base_classnames)
        text = self.method.text_features(self.encoder, classes, image_features)
        itm = self.itm_logits_from(image_features, text)
        cat = None
        if self.dept is not None:
            # The CAT head sees raw features; its text rows are each sample's own class text feature, so its
            # gradient reaches the prompts through T[y].
            rows = torch.arange(len(labels), device=labels.device)
            class_text = text[rows, labels] if text.dim() == 3 else text[labels]
            cat = self.cat_head.training_logits(image_features, class_text)
        loss = dept_loss(itm, cat, labels, self.dept.loss_weight if self.dept is not None else 0.0)
        parts = {"itm_acc": (itm.argmax(-1) == labels).float().mean().item()}
        reg = self.method.regularizer(self.encoder, classes, text if text.dim() == 2 else text.mean(0))
        if reg is not None:
            parts["regularizer"] = reg.item()
            loss = loss + reg
        return loss, parts

    # -- inference ------------------------------------------------------------------------------------------
    def base_scores(self, image_features: torch.Tensor, fusion_weight: float | None = None) -> torch.Tensor:
        """Base-class scores: fused ITM + CAT with DePT, ITM alone without."""
        itm = self.itm_logits(image_features, self.base_classnames)
        if self.dept is None:
            return itm
        w = self.dept.fusion_weight if fusion_weight is None else fusion_weight
        return fuse(itm, self.cat_logits(image_features), w, self.dept.fusion)


def build_learner(
    method: str,
    clip: LoadedClip,
    base_classnames: list[str],
    *,
    dataset: str = "",
    method_options: dict | None = None,
    dept: DePTConfig | None = DePTConfig(),
    seed: int | None = 1,
    encoder: PromptTextEncoder | None = None,
    logit_scale: float | None = None,
) -> DePTLearner:
    """A prompt method (``coop`` | ``cocoop`` | ``kgcoop`` | any registered) with DePT's CAT head on top
    (``dept=None``: the plain method). ``seed`` fixes the initialisation of everything learned. ``logit_scale``:
    the ITM temperature tau (a fixed override, e.g. 100, real CLIP's value); None: the CLIP model's learned one."""
    if method not in METHODS:
        raise ValueError(f"unknown prompt method {method!r}; known: {', '.join(sorted(METHODS))}")
    if not base_classnames:
        raise ValueError("no base classes to train on")
    if logit_scale is not None and not logit_scale > 0:
        raise ValueError(f"logit_scale is the temperature tau (> 0, not log tau), got {logit_scale}")
    cls = METHODS[method]
    options = cls.Options.from_dict(method_options)
    encoder = encoder or PromptTextEncoder(clip.model, clip.tokenizer)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        prompt_method = cls(encoder, options, classnames=list(base_classnames), dataset=dataset, embed_dim=clip.embed_dim)
        learner = DePTLearner(
            encoder,
            prompt_method,
            list(base_classnames),
            dept,
            logit_scale=float(clip.model.logit_scale.exp().item()) if logit_scale is None else float(logit_scale),
            embed_dim=clip.embed_dim,
            dataset=dataset,
            method_options=asdict(options),
            clip_identity=clip.identity,
        )
    return learner.to(next(clip.model.parameters()).device)
