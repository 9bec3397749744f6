"""The interface every text-side prompt method implements, and the registry that finds them by name.

A method owns only what it learns (context vectors, a meta-net, ...). The frozen text encoder is passed in at
call time, so a method's ``state_dict`` never holds CLIP weights. Adding a method = one new file in this package
with a class decorated ``@register_method("name")``: ``dept.methods`` imports every module here.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

if TYPE_CHECKING:
    from dept.text_encoder import ClassTokens, PromptTextEncoder

log = logging.getLogger(__name__)

METHODS: dict[str, type["PromptMethod"]] = {}


def registrar(registry: dict[str, type], kind: str):
    """A class decorator factory for ``registry``: ``@register("name")`` sets ``cls.name`` and files the class under
    it, refusing a name taken twice (``kind`` names the registry in that error)."""

    def register(name: str):
        def decorate(cls: type) -> type:
            if name in registry:
                raise ValueError(f"{kind} {name!r} registered twice")
            cls.name = name
            registry[name] = cls
            return cls

        return decorate

    return register


register_method = registrar(METHODS, "prompt method")


@dataclass(frozen=True)
class MethodOptions:
    """Base for each method's options dataclass."""

    @classmethod
    def from_dict(cls, options: dict | None) -> "MethodOptions":
        options = dict(options or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} for {cls.__name__}; known: {sorted(known)}")
        return cls(**options)


class PromptMethod(nn.Module):
    """Learned prompts that turn class names into text features.

    ``per_image``: True when the text features depend on the image (CoCoOp); then ``text_features`` returns
    ``[B, K, D]`` instead of ``[K, D]``.
    """

    name: ClassVar[str]
    Options: ClassVar[type[MethodOptions]]
    per_image: ClassVar[bool] = False
    #: The reference recipe's prompt learning rate and batch size for this method (METHOD.md).
    default_lr: ClassVar[float] = 0.0035
    default_batch_size: ClassVar[int] = 4

    def __init__(
        self, encoder: "PromptTextEncoder", options: MethodOptions, *, classnames: list[str], dataset: str, embed_dim: int
    ):
        super().__init__()
        self.options = options

    def text_features(
        self,
        encoder: "PromptTextEncoder",
        classes: "ClassTokens",
        image_features: torch.Tensor | None = None,
        *,
        chunk_size: int | None = None,
    ) -> torch.Tensor:
        """``[K, D]`` (``[B, K, D]`` when ``per_image``). ``chunk_size``: classes per text-encoder call, to bound
        memory over many classes (same result); pass it on to the encoder."""
        raise NotImplementedError

    def regularizer(
        self, encoder: "PromptTextEncoder", classes: "ClassTokens", text_features: torch.Tensor
    ) -> torch.Tensor | None:
        """An extra training loss term on the text features (KgCoOp's knowledge guidance); None for most."""
        return None

    # -- populations (dept.population): P members of this method, one batched step ------------------------------
    @classmethod
    def population_text_features(
        cls, members: list["PromptMethod"], encoder: "PromptTextEncoder", classes: "ClassTokens", image_features: torch.Tensor
    ) -> torch.Tensor:
        """``[P, K, D]`` (``[P, B, K, D]`` when ``per_image``) for ``image_features [P, B, D]``, member ``p``'s
        rows equal to ``members[p].text_features``. This default runs one member at a time (exact, not batched);
        a method batches by overriding it."""
        return torch.stack([m.text_features(encoder, classes, x) for m, x in zip(members, image_features)])

    @classmethod
    def population_regularizer(
        cls, members: list["PromptMethod"], encoder: "PromptTextEncoder", classes: "ClassTokens", text_features: torch.Tensor
    ) -> torch.Tensor | None:
        """``[P]``: each member's :meth:`regularizer` on its ``text_features [P, K, D]``; None where the method has none."""
        regs = [m.regularizer(encoder, classes, t) for m, t in zip(members, text_features)]
        return None if regs[0] is None else torch.stack(regs)


def stacked_context_features(
    members: list[PromptMethod], encoder: "PromptTextEncoder", classes: "ClassTokens"
) -> torch.Tensor:
    """``[P, K, D]`` for P members with one context ``ctx [n, d]`` each shared by all classes: the P contexts go
    through the text encoder as P prefix groups (the per-image layout with one "image" per member)."""
    return encoder(torch.stack([m.ctx for m in members]), classes, per_image=True)


def init_context(
    encoder: "PromptTextEncoder", n_ctx: int, ctx_init: str | None, init_std: float, shape_prefix: tuple[int, ...] = ()
) -> torch.Tensor:
    """Context vectors: the token embeddings of ``ctx_init`` (its token count sets n_ctx), or N(0, init_std)."""
    width = encoder.width
    if ctx_init:
        words = encoder.word_embeddings(ctx_init).detach().clone()
        if n_ctx and n_ctx != words.shape[0]:
            log.info("ctx_init %r has %d tokens: using n_ctx=%d instead of %d", ctx_init, words.shape[0], words.shape[0], n_ctx)
        return words.expand(*shape_prefix, *words.shape).clone()
    if n_ctx <= 0:
        raise ValueError(f"n_ctx must be positive without ctx_init, got {n_ctx}")
    return torch.randn(*shape_prefix, n_ctx, width) * init_std
