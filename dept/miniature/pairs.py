"""Image-caption pairs for pretraining, generated on the fly.

Batch ``b`` of a stream is a pure function of ``(seed, b)``: it is drawn from its own
``numpy.random.default_rng([seed, PAIRS_STREAM, b])``, so a run resumed or replayed from any step sees the same
pairs, and the pairs do not depend on how fast the machine is.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from dept.miniature.render import render, sample_pretrain_scenes
from dept.miniature.world import SIZE_WORDS, TEMPLATES, Composition, caption, seen_compositions

#: Distinguishes the pretraining pair stream from other uses of the same seed (probe images, downstream data).
PAIRS_STREAM = 1


@dataclass
class PairBatch:
    images: np.ndarray  # [B, 32, 32, 3] uint8
    tokens: torch.Tensor  # [B, L] int64, cut after the longest caption's end-of-text token
    captions: list[str]
    compositions: np.ndarray  # [B] int, index into the stream's composition list


class Tokens:
    """Caption -> token ids, cached: captions come from a finite set, and the BPE tokenizer is slow."""

    def __init__(self, tokenizer: Callable, context_length: int):
        self.tokenizer = tokenizer
        self.context_length = context_length
        self._cache: dict[str, torch.Tensor] = {}

    def ids(self, text: str) -> torch.Tensor:
        row = self._cache.get(text)
        if row is None:
            full = self.tokenizer([text])[0]
            end = int(full.argmax())  # the end-of-text token has the highest id in the vocabulary
            if end >= self.context_length - 1 and int(full[-1]) != 0:
                raise ValueError(f"caption {text!r} does not fit the text context of {self.context_length} tokens")
            row = full[: end + 1].clone()
            self._cache[text] = row
        return row

    def batch(self, texts: Sequence[str]) -> torch.Tensor:
        rows = [self.ids(t) for t in texts]
        out = torch.zeros(len(rows), max(len(r) for r in rows), dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, : len(r)] = r
        return out


class PairStream:
    """Batches of generated (image, caption) pairs over ``compositions`` (default: every composition not held
    out of pretraining), each drawn uniformly."""

    def __init__(self, tokens: Tokens, seed: int, batch_size: int, compositions: Sequence[Composition] | None = None):
        if batch_size < 2:
            raise ValueError(f"batch size must be at least 2 for a contrastive loss, got {batch_size}")
        self.tokens = tokens
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.compositions = list(compositions) if compositions is not None else seen_compositions()
        self._colour = np.array([k.colour for k in self.compositions])
        self._shape = np.array([k.shape for k in self.compositions])

    def batch(self, index: int) -> PairBatch:
        rng = np.random.default_rng([self.seed, PAIRS_STREAM, int(index)])
        n = self.batch_size
        comp = rng.integers(0, len(self.compositions), n)
        scenes = sample_pretrain_scenes(rng, self._colour[comp], self._shape[comp])
        template = rng.integers(0, len(TEMPLATES), n)
        size_word = rng.integers(0, min(len(w) for w in SIZE_WORDS.values()), n)
        images = render(scenes, noise_rng=rng)
        captions = [
            caption(int(template[i]), int(scenes.colour[i]), int(scenes.shape[i]), int(scenes.size[i]),
                    int(size_word[i]), int(scenes.background[i]), int(scenes.position[i]))
            for i in range(n)
        ]
        return PairBatch(images=images, tokens=self.tokens.batch(captions), captions=captions, compositions=comp)


def to_model_input(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 ``[B, H, W, 3]`` -> normalised float ``[B, 3, H, W]``: what open_clip's test transform makes of the
    same pixels at the model's input size (no resize happens: images are drawn at that size)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s
