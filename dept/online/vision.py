"""The frozen open_clip vision tower with deep prompts (MaPLe, PromptSRC), built from the model's own modules.

``layer_prompts[0]`` ``[n, w]`` is appended after the patch tokens once the class and positional embeddings are
added (before ``ln_pre``, so the prompts are normalised with the patches); ``layer_prompts[i]`` for ``i >= 1``
replaces the last ``n`` tokens at the input of block ``i`` (the previous block's outputs there are dropped).
Blocks from ``len(layer_prompts)`` on take the propagated tokens. The image feature is pooled at the class token,
so with no prompts this is ``visual(images)``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn


class VisionPromptError(ValueError):
    """A vision tower the prompted forward cannot reproduce exactly; the message is one line."""


def unsupported_reason(visual: nn.Module) -> str | None:
    """Why ``visual`` is not an open_clip ViT the prompted forward handles, or None when it is."""
    for part in ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer", "ln_post"):
        if not hasattr(visual, part):
            return f"{type(visual).__name__} has no {part} (not an open_clip VisionTransformer)"
    if getattr(visual, "attn_pool", None) is not None:
        return "vision towers with attentional pooling are not supported"
    if getattr(visual, "pool_type", "tok") != "tok":
        return f"vision pool type {visual.pool_type!r} is not supported (prompts need class-token pooling)"
    return None


def vision_width(visual: nn.Module) -> int:
    return int(visual.class_embedding.shape[-1])


def vision_layers(visual: nn.Module) -> int:
    return len(visual.transformer.resblocks)


def prompted_image_features(visual: nn.Module, images: Tensor, layer_prompts: Sequence[Tensor] = ()) -> Tensor:
    """``[B, D]`` raw image features of ``images [B, 3, H, W]`` (normalised pixels) with deep prompts."""
    reason = unsupported_reason(visual)
    if reason:
        raise VisionPromptError(reason)
    blocks = visual.transformer.resblocks
    if len(layer_prompts) > len(blocks):
        raise VisionPromptError(f"{len(layer_prompts)} prompt layers for a vision tower of {len(blocks)} layers")
    width = vision_width(visual)
    n = layer_prompts[0].shape[0] if layer_prompts else 0
    for i, p in enumerate(layer_prompts):
        if p.shape != (n, width):
            raise VisionPromptError(f"vision prompt of layer {i} must be [{n}, {width}], got {list(p.shape)}")
    dtype = visual.conv1.weight.dtype
    x = visual.conv1(images.to(dtype))
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # [B, grid**2, w]
    B = x.shape[0]
    x = torch.cat([visual.class_embedding.to(x.dtype).expand(B, 1, width), x], dim=1)
    x = x + visual.positional_embedding.to(x.dtype)
    x = visual.patch_dropout(x) if hasattr(visual, "patch_dropout") else x
    if n:
        x = torch.cat([x, layer_prompts[0].to(x.dtype).expand(B, n, width)], dim=1)
    x = visual.ln_pre(x)
    batch_first = bool(getattr(visual.transformer, "batch_first", False))
    h = x if batch_first else x.transpose(0, 1)
    for i, blk in enumerate(blocks):
        if 0 < i < len(layer_prompts):
            p = layer_prompts[i].to(h.dtype)
            if batch_first:
                h = torch.cat([h[:, : h.shape[1] - n], p.expand(B, n, width)], dim=1)
            else:
                h = torch.cat([h[: h.shape[0] - n], p.unsqueeze(1).expand(n, B, width)], dim=0)
        h = blk(h)
    cls = h[:, 0] if batch_first else h[0]
    pooled = visual.ln_post(cls)  # LayerNorm is per token: the same whether applied before or after pooling
    return pooled @ visual.proj if getattr(visual, "proj", None) is not None else pooled
