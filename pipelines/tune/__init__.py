"""``dept-pipeline train`` / ``tune``: trials on cached features (:mod:`~pipelines.tune.trial`), their
hyperparameters (:mod:`~pipelines.tune.settings`), YAML search spaces (:mod:`~pipelines.tune.spaces`) and the Ray Tune
driver (:mod:`~pipelines.tune.runner`)."""
from pipelines.tune.runner import TuneOptions, TuneSetupError, best_table, make_context, run_tune
from pipelines.tune.settings import Hyperparameters
from pipelines.tune.spaces import SearchSpace, SpaceError, load_space, parse_space
from pipelines.tune.trial import TrialContext, run_trial

__all__ = [
    "Hyperparameters", "SearchSpace", "SpaceError", "TrialContext", "TuneOptions", "TuneSetupError", "best_table",
    "load_space", "make_context", "parse_space", "run_trial", "run_tune",
]
