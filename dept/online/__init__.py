"""Prompt methods with the image tower in the loop (MaPLe, PromptSRC): not cacheable, so kept apart from
``dept.methods`` (whose modules the cached trial path lists as methods). Each composes with DePT's one CAT head,
loss and fusion (``dept.head``) through :class:`dept.online.learner.OnlineLearner`.
"""
from __future__ import annotations

from dept.online import maple, promptsrc  # noqa: F401  (register the methods)
from dept.online.base import ONLINE_METHODS, OnlinePromptMethod, register_online_method
from dept.online.learner import (
    OnlineLearner,
    build_online_learner,
    online_optimizer,
    online_training_step,
    train_online,
)
from dept.online.promptsrc import GaussianPromptAverage, gaussian_weights

__all__ = [
    "ONLINE_METHODS", "GaussianPromptAverage", "OnlineLearner", "OnlinePromptMethod", "build_online_learner",
    "gaussian_weights", "online_optimizer", "online_training_step", "register_online_method",
    "train_online",
]
