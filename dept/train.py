"""Training a ``DePTLearner`` on cached image features.

Schedule (the reference recipe): Dassl's ``ConstantWarmupScheduler(CosineAnnealingLR(T_max=epochs))``, stepped
once per epoch. Epoch ``e`` (0-based) runs at ``warmup_lr`` for ``e < warmup_epochs``, for every parameter group
(CAT head included); from then on the cosine starts at its own epoch 0, so ``e`` runs at
``base_lr * (1 + cos(pi * (e - warmup_epochs) / epochs)) / 2``, each group at its own base lr. With 10 epochs, one
warmup epoch and lr 0.0035: 1e-5, 3.500e-3, 3.414e-3, ..., 3.342e-4 (the cosine never reaches its end).
Batches drop the last incomplete one, as the reference loader does.

Resuming: an epoch's shuffle and view draw depend only on (seed, epoch), and nothing else is random, so the learned
state and the SGD momentum after epoch ``E`` (a :class:`TrainResume`) are all that training epochs ``E+1..`` needs
to give the numbers of an uninterrupted run, bit for bit.
"""
from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from dept.learner import DePTLearner

log = logging.getLogger(__name__)


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


def train(
    learner: DePTLearner,
    features: torch.Tensor,
    labels: torch.Tensor,
    config: TrainConfig = TrainConfig(),
    *,
    on_epoch: Callable[[EpochStats], None] | None = None,
    validate: Callable[[DePTLearner], dict[str, float]] | None = None,
    resume: TrainResume | None = None,
    resumable: bool = False,
) -> list[EpochStats]:
    """Train on ``features`` ``[N, V, D]`` (view 0 = test transform, 1.. = augmented views) or ``[N, D]``,
    with ``labels`` ``[N]`` in 0..K-1 over ``learner.base_classnames``. Same seed, same numbers.

    ``resumable``: every epoch's stats carry the :class:`TrainResume` to continue from (a copy). ``resume``: load
    one into ``learner`` (built as for the first attempt) and run the remaining epochs; the history holds those.

    This is :func:`dept.population.train_population` with one member (one training loop for both); a non-finite
    loss does not stop it (the population would mark the member failed): every epoch runs and reports its loss."""
    from dept.population import train_population  # here: dept.population imports this module

    def epoch_done(_: int, stats: EpochStats) -> None:  # None: the caller's return value never stops training
        log.info("epoch %d/%d loss %.4f lr %.2e %s", stats.epoch, config.epochs, stats.train_loss, stats.lr,
                 stats.metrics)
        if on_epoch is not None:
            on_epoch(stats)

    [result] = train_population(
        [learner], features, labels, [config], on_epoch=epoch_done,
        validate=None if validate is None else (lambda _, m: validate(m)),
        resume=[resume], resumable=resumable, nonfinite="continue",
    )
    return result.history
