"""The training records shared by ``dept.train`` and ``dept.train_population``: what an epoch reports
(:class:`EpochStats`), what training resumes from (:class:`TrainResume`), which stored view each image uses in an
epoch (:func:`epoch_views`) and the check of the training data (:func:`check_training_data`).

Resuming: an epoch's shuffle and view draw depend only on (seed, epoch), and nothing else is random, so the learned
state and the SGD momentum after epoch ``E`` (a :class:`TrainResume`) are all that training epochs ``E+1..`` needs
to give the numbers of an uninterrupted run, bit for bit.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from dept.config import TrainConfig  # noqa: F401  (the recipe these records belong to, re-exported)

if TYPE_CHECKING:
    from dept.learner import DePTLearner


@dataclass
class TrainResume:
    """What training continues from after ``epoch`` epochs: the learned modules' tensors (prompts / meta-net, CAT
    head; the frozen towers are rebuilt, not stored) and the optimizer's state (SGD momentum)."""

    epoch: int  # epochs done; training resumes at 0-based epoch ``epoch``
    learned: dict[str, torch.Tensor]  # keys as in dept.state.learned_state_dict
    optimizer: dict  # torch.optim.SGD.state_dict()

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(self._as_dict(), tmp)
        tmp.replace(path)  # never a half-written state under the final name
        return path

    @classmethod
    def load(cls, path: str | Path) -> "TrainResume":
        return cls._from_dict(torch.load(Path(path), map_location="cpu", weights_only=True))

    def to_bytes(self) -> bytes:
        """The file :meth:`save` writes, in memory (to pass between processes)."""
        buf = io.BytesIO()
        torch.save(self._as_dict(), buf)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "TrainResume":
        return cls._from_dict(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))

    def _as_dict(self) -> dict:
        return {"epoch": self.epoch, "learned": self.learned, "optimizer": self.optimizer}

    @classmethod
    def _from_dict(cls, d: dict) -> "TrainResume":
        return cls(epoch=int(d["epoch"]), learned=d["learned"], optimizer=d["optimizer"])


@dataclass
class EpochStats:
    epoch: int  # 1-based: the number of epochs done
    train_loss: float
    lr: float  # prompt lr used in this epoch
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)  # from the caller's ``validate``, if any
    state: TrainResume | None = field(default=None, repr=False)  # with ``train(resumable=True)``: resume from here


def epoch_views(num_images: int, num_views: int, epoch: int, seed: int) -> torch.Tensor:
    """Which stored view each image uses in an epoch: views 1..V-1 are augmented views (0 is the test
    transform), drawn deterministically from (seed, epoch); with only view 0 stored, view 0."""
    if num_views <= 1:
        return torch.zeros(num_images, dtype=torch.long)
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randint(1, num_views, (num_images,), generator=g)


def check_training_data(learner: DePTLearner, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``features`` as ``[N, V, D]`` after checking them and ``labels`` against the learner (one line each)."""
    if features.dim() == 2:
        features = features.unsqueeze(1)
    n, _, dim = features.shape
    if labels.shape != (n,):
        raise ValueError(f"labels shape {tuple(labels.shape)} does not match {n} images")
    if n and (labels.min() < 0 or labels.max() >= len(learner.base_classnames)):
        raise ValueError(f"labels must lie in 0..{len(learner.base_classnames) - 1}")
    if dim != learner.embed_dim:
        raise ValueError(f"image features have dim {dim}, the model's embedding is {learner.embed_dim}")
    return features
