"""The two scores every table is made of, torch-free to import: top-1 accuracy in percent and the harmonic mean of
base and new accuracy (HM). ``report`` and the selection rule use :func:`harmonic_mean` without loading torch."""
from __future__ import annotations


def harmonic_mean(base: float, new: float) -> float:
    return 0.0 if base + new == 0 else 2.0 * base * new / (base + new)


def accuracy(scores, labels) -> float:
    """Top-1 accuracy in percent of ``[N, K]`` scores against ``[N]`` labels (tensors); NaN without images."""
    if len(labels) == 0:
        return float("nan")
    return 100.0 * (scores.argmax(-1) == labels).float().mean().item()
