"""DePT: Decoupled Prompt Tuning on frozen CLIP (PyTorch + open_clip only; importable in a notebook).

    from dept import load_clip, build_learner, DePTConfig, TrainConfig, train, evaluate_base_new

The names below are loaded on first use (PEP 562): ``import dept`` and the torch-free configs
(``dept.config``, ``dept.protocols``, ``dept.datasets``) do not load torch, so a command line that only reads
defaults or checks its arguments answers at once.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: Public name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(["ClipLoadError", "LoadedClip", "load_clip", "save_random_checkpoint"], "dept.clip"),
    **dict.fromkeys(["DePTConfig", "FusionMode", "TrainConfig", "applied_dept"], "dept.config"),
    **dict.fromkeys(["BaseNewResult", "accuracy", "evaluate_base_new", "evaluate_zero_shot", "harmonic_mean"],
                    "dept.evaluate"),
    **dict.fromkeys(["CATHead", "ChannelwiseTransform", "dept_loss", "fuse"], "dept.head"),
    **dict.fromkeys(["DePTLearner", "build_learner"], "dept.learner"),
    **dict.fromkeys(["METHODS", "PromptMethod", "register_method"], "dept.methods"),
    **dict.fromkeys(["MemberResult", "PopulationOptions", "train_population"], "dept.population"),
    **dict.fromkeys(["EpochStats", "TrainResume"], "dept.schedule"),
    **dict.fromkeys(["load_state", "save_state"], "dept.state"),
    **dict.fromkeys(["PromptTextEncoder"], "dept.text_encoder"),
    **dict.fromkeys(["train"], "dept.training"),
    **dict.fromkeys(["ZeroShotClassifier", "zero_shot_classifier"], "dept.zero_shot"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dept' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # what static tools and editors see; nothing of it runs
    from dept.clip import ClipLoadError, LoadedClip, load_clip, save_random_checkpoint
    from dept.config import DePTConfig, FusionMode, TrainConfig, applied_dept
    from dept.evaluate import BaseNewResult, accuracy, evaluate_base_new, evaluate_zero_shot, harmonic_mean
    from dept.head import CATHead, ChannelwiseTransform, dept_loss, fuse
    from dept.learner import DePTLearner, build_learner
    from dept.methods import METHODS, PromptMethod, register_method
    from dept.population import MemberResult, PopulationOptions, train_population
    from dept.schedule import EpochStats, TrainResume
    from dept.state import load_state, save_state
    from dept.text_encoder import PromptTextEncoder
    from dept.training import train
    from dept.zero_shot import ZeroShotClassifier, zero_shot_classifier
