"""Training a ``DePTLearner`` on cached image features.

Schedule (the reference recipe): Dassl's ``ConstantWarmupScheduler(CosineAnnealingLR(T_max=epochs))``, stepped
once per epoch. Epoch ``e`` (0-based) runs at ``warmup_lr`` for ``e < warmup_epochs``, for every parameter group
(CAT head included); from then on the cosine starts at its own epoch 0, so ``e`` runs at
``base_lr * (1 + cos(pi * (e - warmup_epochs) / epochs)) / 2``, each group at its own base lr. With 10 epochs, one
warmup epoch and lr 0.0035: 1e-5, 3.500e-3, 3.414e-3, ..., 3.342e-4 (the cosine never reaches its end).
Batches drop the last incomplete one, as the reference loader does.

The schedule itself is ``dept.config.TrainConfig.lr_at``; the records (epoch stats, resume states, view draws) are
in ``dept.schedule``, shared with ``dept.population``.
"""
from __future__ import annotations

import logging
from typing import Callable

import torch

from dept.config import TrainConfig
from dept.learner import DePTLearner
from dept.population import PopulationOptions, train_population
from dept.schedule import EpochStats, TrainResume

log = logging.getLogger(__name__)


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
    options: PopulationOptions = PopulationOptions(),
) -> list[EpochStats]:
    """Train on ``features`` ``[N, V, D]`` (view 0 = test transform, 1.. = augmented views) or ``[N, D]``,
    with ``labels`` ``[N]`` in 0..K-1 over ``learner.base_classnames``. Same seed, same numbers.

    ``resumable``: every epoch's stats carry the :class:`TrainResume` to continue from (a copy). ``resume``: load
    one into ``learner`` (built as for the first attempt) and run the remaining epochs; the history holds those.
    ``options``: bf16 autocast (``amp``) and ``torch.compile`` for the step, as for a population.

    This is :func:`dept.population.train_population` with one member (one training loop for both); a non-finite
    loss does not stop it (the population would mark the member failed): every epoch runs and reports its loss."""
    def epoch_done(_: int, stats: EpochStats) -> None:  # None: the caller's return value never stops training
        log.info("epoch %d/%d loss %.4f lr %.2e %s", stats.epoch, config.epochs, stats.train_loss, stats.lr,
                 stats.metrics)
        if on_epoch is not None:
            on_epoch(stats)

    [result] = train_population(
        [learner], features, labels, [config], on_epoch=epoch_done,
        validate=None if validate is None else (lambda _, m: validate(m)),
        resume=[resume], resumable=resumable, options=options, nonfinite="continue",
    )
    return result.history
