"""What every trial of one dataset shares, wherever it runs (``train``, ``tune``, a population host, zero-shot):
:class:`TrialContext`, built by :func:`make_context` after checking that the feature store can serve every trial
asked for, with the transfer protocols' targets (:mod:`pipelines.trial.targets`).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from dept.config import resolve_precision
from dept.protocols import BASE_TO_NEW
from dept.weights import is_local_checkpoint
from pipelines.store import read_manifest, resolve_features, weights_id_of
from pipelines.trial.settings import Hyperparameters, seed_of
from pipelines.trial.targets import ProtocolError, TargetContext, find_targets
from pipelines.vocabulary import PROTOCOL_TAG

#: Test hook (documented, used by tests/pipelines/tune/test_tune.py): a folder; when set in the *driver's* environment, every
#: trial raises once after its first epoch report (a marker file per trial id records the first attempt), so
#: FailureConfig's retry can be checked end to end. Leave unset in real runs.
FAIL_ONCE_ENV = "DEPT_PIPELINE_TEST_FAIL_ONCE_DIR"
#: Test hook: seconds every trial pauses at each epoch report. Test trials on tiny data last ~0.2 s in a reused
#: worker, too short to still be running when a test kills the driver or for a second node's worker to start.
EPOCH_PAUSE_ENV = "DEPT_PIPELINE_TEST_EPOCH_PAUSE_S"


class TrialSetupError(ValueError):
    """Trials of this dataset cannot start (the store cannot serve them); one line."""


@dataclass(frozen=True)
class TrialContext:
    """What every trial of one dataset shares (passed to workers with ``tune.with_parameters``)."""

    features_url: str  # the feature store's model folder (<root>/<model>/<weights>)
    dataset: str
    model: str  # from the store's manifest: the model whose text tower the trial loads
    pretrained: str
    weights_id: str
    fingerprint: str
    store_shots: int  # shots the store drew (0: whole splits stored, any shots can be drawn)
    objective: str = "val"
    pseudo_new_fraction: float = 1.0 / 3.0
    seeds: tuple[int, ...] = (1,)  # the space's seeds (Repeater index -> seed)
    num_threads: int = 1
    device: str = "cpu"  # "cuda" when the trial holds a GPU
    precision: str = "fp32"  # the training step's, resolved for ``device`` (dept.config.resolve_precision)
    compile: str | None = None  # torch.compile mode of the training step (dept.config.COMPILE_MODES)
    fail_once_dir: str | None = None  # test hook, see FAIL_ONCE_ENV
    epoch_pause_s: float = 0.0  # test hook, see EPOCH_PAUSE_ENV
    protocol: str = BASE_TO_NEW  # or cross-dataset / domain-generalization: ``dataset`` is then the source
    targets: tuple[TargetContext, ...] = ()  # the transfer protocols' targets
    population: int = 1  # > 1: trained in populations of up to this many (pipelines.trial.population)
    population_group: str = ""  # the name of the driver's population registry actor

    def hyperparameters(self, config: dict) -> Hyperparameters:
        """The resolved hyperparameters of a trial config (the driver uses this too, for MLflow params)."""
        hp = Hyperparameters.from_config({**config, "seed": seed_of(config, self.seeds)})
        return hp.resolved([self.store_shots] if self.store_shots > 0 else [16])

    def tags(self) -> dict[str, str]:
        return {
            "dataset": self.dataset,
            "backbone": self.model,
            "pretrained": self.pretrained,
            "weights_id": self.weights_id,
            "feature_fingerprint": self.fingerprint,
            "features_url": self.features_url,
            "objective": self.objective,
            PROTOCOL_TAG: self.protocol,
            "precision": self.precision,
            **({"compile": self.compile} if self.compile else {}),
            **({"targets": ",".join(t.dataset for t in self.targets)} if self.protocol != BASE_TO_NEW else {}),
        }


def make_context(
    features: str,
    dataset: str,
    *,
    shots: list[int | None],
    seeds: list[int],
    objective: str = "val",
    pseudo_new_fraction: float = 1.0 / 3.0,
    num_threads: int = 1,
    device: str = "cpu",
    precision: str = "auto",
    compile: str | None = None,
    who: str = "",
    model: str | None = None,
    pretrained: str | None = None,
    protocol: str = BASE_TO_NEW,
    targets: tuple[str, ...] = (),
) -> TrialContext:
    """The trial context of one dataset, after checking that the store can serve every trial asked for
    (``shots`` / ``seeds`` drawn, the model's checkpoint present, enough base classes). ``features``: a model
    folder, or the store root with ``model`` / ``pretrained`` choosing the model folder. ``precision``: one of
    ``dept.config.PRECISIONS``, resolved for ``device``."""
    # An absolute model folder: trials run in other processes (other machines).
    features = resolve_features(features, dataset=dataset, model=model, pretrained=pretrained)
    manifest = read_manifest(features, dataset)
    stored_shots = manifest.shots
    where = f"{features} ({dataset})"
    who = f"{who}: " if who else ""
    if stored_shots > 0:
        wrong = [s for s in shots if s is not None and s != stored_shots]
        if wrong:
            raise TrialSetupError(f"{who}shots {wrong[0]} but the feature store {where} holds {stored_shots}-shot "
                                 f"draws; featurize with --shots {wrong[0]} or ask for {stored_shots}")
        missing = [s for s in seeds if s not in set(manifest.seeds)]
        if missing:
            raise TrialSetupError(f"{who}seed {missing[0]} was not drawn in the feature store {where} "
                                 f"(seeds {list(manifest.seeds)}); featurize with that seed or use those")
    made_with = manifest.pretrained or "none"
    if is_local_checkpoint(made_with) and not Path(made_with).is_file():
        raise TrialSetupError(f"the feature store {where} was made with checkpoint {made_with}, which does not "
                             "exist here (trials load its text tower)")
    # Trials load the text tower from the same file; other weights there would fail every trial, one by one.
    now = weights_id_of(manifest.model, made_with)
    if now is not None and now != manifest.weights_id:
        raise TrialSetupError(f"the feature store {where} was made with weights {manifest.weights_id}, but "
                             f"{made_with} now holds {now}; featurize again with these weights, or restore the file")
    found: tuple = ()
    if protocol != BASE_TO_NEW:
        if int(manifest.rows.get("train", 0)) == 0:
            raise TrialSetupError(f"{who}source {dataset} has no training images in {where}; a {protocol} source "
                                 "needs its few-shot draws (featurize it with --shots)")
        try:
            found = find_targets(features, dataset, protocol, targets)
        except ProtocolError as e:
            raise TrialSetupError(f"{who}{e}") from None
    if objective == "pseudo-new":
        num_base = math.ceil(len(manifest.classnames) / 2)
        if num_base < 2:
            raise TrialSetupError(f"{dataset}: objective pseudo-new needs at least 2 base classes, it has {num_base}")
    return TrialContext(
        features_url=features,
        dataset=dataset,
        model=manifest.model,
        pretrained=made_with,
        weights_id=manifest.weights_id,
        fingerprint=manifest.fingerprint,
        store_shots=stored_shots,
        objective=objective,
        pseudo_new_fraction=pseudo_new_fraction,
        seeds=tuple(seeds),
        num_threads=num_threads,
        device=device,
        precision=resolve_precision(precision, device),
        compile=compile,
        fail_once_dir=os.environ.get(FAIL_ONCE_ENV) or None,
        epoch_pause_s=float(os.environ.get(EPOCH_PAUSE_ENV) or 0.0),
        protocol=protocol,
        targets=found,
    )
