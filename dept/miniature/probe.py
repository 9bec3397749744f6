"""The zero-shot probe of pretraining: classify fresh pretraining-style images among every colour x shape
composition (88-way) with the prompt "a photo of a {colour} {shape}.", separately for compositions seen in
pretraining and compositions held out of it (whose images the model has never seen, but whose words it has)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from dept.miniature.model import class_text_features, zero_shot_predictions
from dept.miniature.pairs import to_model_input
from dept.miniature.render import render, sample_pretrain_scenes
from dept.miniature.world import HELD_OUT, all_compositions

#: Distinguishes probe images from the pair stream and the downstream data drawn with the same seed.
PROBE_STREAM = 2
PROBE_TEMPLATE = "a photo of a {}."


@dataclass
class Probe:
    images: torch.Tensor  # [N, 3, H, W], normalised for the model
    labels: torch.Tensor  # [N] int64, index into ``classnames``
    held_out: torch.Tensor  # [N] bool: image of a composition held out of pretraining
    classnames: list[str]  # every composition, index = label

    @torch.no_grad()
    def evaluate(self, model: nn.Module, tokenizer: Callable) -> dict[str, float]:
        """Zero-shot top-1 accuracy (percent) on seen and on held-out compositions, and the chance level."""
        was_training = model.training
        model.eval()
        try:
            pred = zero_shot_predictions(model, self.images, class_text_features(model, tokenizer, self.classnames, PROBE_TEMPLATE))
        finally:
            model.train(was_training)
        correct = (pred == self.labels).float()
        return {
            "zs_seen": 100.0 * correct[~self.held_out].mean().item(),
            "zs_heldout": 100.0 * correct[self.held_out].mean().item(),
        }

    @property
    def chance(self) -> float:
        return 100.0 / len(self.classnames)


def build_probe(mean: Sequence[float], std: Sequence[float], *, per_seen: int = 4, per_held_out: int = 32, seed: int = 0) -> Probe:
    """A fixed probe set: ``per_seen`` images of each seen composition and ``per_held_out`` of each held-out one.
    It depends on ``seed`` only — not on the pretraining seed — so runs with different seeds are probed alike."""
    comps = all_compositions()
    held = set(HELD_OUT)
    counts = [per_held_out if (k.colour, k.shape) in held else per_seen for k in comps]
    labels = np.repeat(np.arange(len(comps)), counts)
    rng = np.random.default_rng([int(seed), PROBE_STREAM])
    colour = np.array([comps[i].colour for i in labels])
    shape = np.array([comps[i].shape for i in labels])
    images = render(sample_pretrain_scenes(rng, colour, shape), noise_rng=rng)
    return Probe(
        images=to_model_input(images, mean, std),
        labels=torch.from_numpy(labels).long(),
        held_out=torch.tensor([(comps[i].colour, comps[i].shape) in held for i in labels]),
        classnames=[k.name for k in comps],
    )
