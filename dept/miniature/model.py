"""Model-side pieces of miniature pretraining: the contrastive loss, a cheaper exact text forward, zero-shot."""
from __future__ import annotations

import math
from typing import Callable, Sequence

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

#: The architecture the miniature pretrains (``dept/model_configs/dept-mini-vit.json``).
MODEL_NAME = "dept-mini-vit"
#: open_clip's training clamps the learned temperature here (CLIP's tau <= 100); so does ours.
MAX_LOGIT_SCALE = math.log(100.0)


def image_mean_std(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The normalisation ``dept.load_clip`` uses for this model (its own, or open_clip's OpenAI default)."""
    visual = model.visual
    mean = tuple(getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN)
    std = tuple(getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD)
    return mean, std


def encode_text(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``model.encode_text`` for token rows cut to any length ``L <= context_length`` (each row holding its
    end-of-text token). The text transformer is causal, so positions after a caption's end never influence the
    pooled end token: cutting them gives the same features at a fraction of the cost (captions use ~12 of 32)."""
    n = tokens.shape[1]
    if n > model.context_length:
        raise ValueError(f"{n} tokens exceed the model's context length {model.context_length}")
    x = model.token_embedding(tokens) + model.positional_embedding[:n]
    x = model.transformer(x, attn_mask=model.attn_mask[:n, :n])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)]  # the end-of-text token has the highest id
    proj = model.text_projection
    return proj(x) if isinstance(proj, nn.Linear) else x @ proj


def contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric InfoNCE: pair i is the positive of row i and column i of the similarity matrix."""
    image_features = F.normalize(image_features, dim=-1)
    text_features = F.normalize(text_features, dim=-1)
    logits = logit_scale.exp() * image_features @ text_features.t()
    target = torch.arange(len(logits), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


@torch.no_grad()
def class_text_features(model: nn.Module, tokenizer: Callable, classnames: Sequence[str], template: str = "a photo of a {}.") -> torch.Tensor:
    """Normalised text features ``[K, D]`` of ``template`` filled with each class name."""
    tokens = tokenizer([template.format(c) for c in classnames])
    return F.normalize(model.encode_text(tokens), dim=-1)


@torch.no_grad()
def zero_shot_predictions(model: nn.Module, images: torch.Tensor, text_features: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Predicted class per image: the class whose text feature is most similar (cosine) to the image feature."""
    out = []
    for i in range(0, len(images), batch_size):
        f = F.normalize(model.encode_image(images[i : i + batch_size]), dim=-1)
        out.append((f @ text_features.t()).argmax(dim=-1))
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)
