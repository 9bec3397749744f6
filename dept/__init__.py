"""DePT: Decoupled Prompt Tuning on frozen CLIP (PyTorch + open_clip only; importable in a notebook).

    from dept import load_clip, build_learner, DePTConfig, TrainConfig, train, evaluate_base_new
"""
from dept.clip import ClipLoadError, LoadedClip, load_clip, save_random_checkpoint
from dept.evaluate import BaseNewResult, accuracy, evaluate_base_new, evaluate_zero_shot, harmonic_mean
from dept.head import CATHead, ChannelwiseTransform, DePTConfig, applied_dept, dept_loss, fuse
from dept.learner import DePTLearner, build_learner
from dept.methods import METHODS, PromptMethod, register_method
from dept.population import MemberResult, PopulationOptions, train_population
from dept.state import load_state, save_state
from dept.text_encoder import PromptTextEncoder
from dept.train import EpochStats, TrainConfig, train

__all__ = [
    "BaseNewResult", "CATHead", "ChannelwiseTransform", "ClipLoadError", "DePTConfig", "DePTLearner",
    "EpochStats", "LoadedClip", "METHODS", "PromptMethod", "PromptTextEncoder", "TrainConfig", "accuracy",
    "applied_dept", "build_learner", "dept_loss", "evaluate_base_new", "evaluate_zero_shot", "fuse", "harmonic_mean",
    "load_clip", "load_state", "register_method", "save_random_checkpoint", "save_state", "train",
    "MemberResult", "PopulationOptions", "train_population",
]
