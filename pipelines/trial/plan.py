"""One DePT trial on cached features: load the text tower once, read the features once, train, report every epoch,
score the test images once at the end.

The same plan serves ``dept-pipeline train`` (no Tune: :func:`run_trial`), ``dept-pipeline tune``
(:mod:`pipelines.trial.trainable`, a Ray Tune function trainable that reports through ``ray.tune.report``) and a
population host (:mod:`pipelines.trial.population`, which trains many plans as one).

Objectives (what the per-epoch selection metrics are computed on; test images never are):

- ``val``: train on the base classes; per epoch ``val_base_acc`` (fused head, base val images),
  ``val_new_acc`` (ITM head, new val images) and ``val_hm``. The val images are each seed's few-shot val draw.
- ``pseudo-new``: never touches the new classes while selecting. The last ``pseudo_new_fraction`` of the base
  labels (at least one) are held out as *pseudo-new*; the trial trains on the remaining base classes and reports
  ``pseudo_base_acc`` (fused, val images of the remaining base classes), ``pseudo_new_acc`` (ITM, val images of the
  held-out classes) and ``pseudo_hm``. A trial that runs to its last epoch is then retrained with the same
  hyperparameters and seed on *all* base classes (the model the method would ship), and that model is scored on
  the test images. Test metrics are logged, never selected on; trials stopped early by the scheduler have none.

The final report (the last epoch's) also carries the fusion-weight sweep: the base accuracy and HM at fusion
weights 0, 0.05, ..., 1, re-scored from the two stored logit matrices without retraining.
"""
from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from dept.protocols import BASE_TO_NEW
from pipelines.store import open_store, open_target_store
from pipelines.trial import standin
from pipelines.trial.context import TrialContext
from pipelines.trial.settings import Hyperparameters
from pipelines.vocabulary import STATE_NAMES, TEST_BASE_ACC, TEST_HM, TEST_NEW_ACC, VAL_ACC

log = logging.getLogger(__name__)


#: Fusion weights of the post-training sweep (MLflow gets the HM at every 0.1: pipelines.vocabulary.sweep_key).
SWEEP_WEIGHTS = tuple(round(0.05 * i, 2) for i in range(21))
#: The final checkpoint's files, named once where the driver logs them as the run's learned_state/ artifacts.
STATE_FILE, HYPERPARAMETERS_FILE, FINAL_FILE = STATE_NAMES
#: An epoch checkpoint's training state (dept.schedule.TrainResume); the final checkpoint holds the two files above and
#: hyperparameters.json instead.
RESUME_FILE = "resume.pt"


class TrialFailed(ValueError):
    """The trial cannot succeed however often it is retried: its loss is no longer finite (one line, like every
    user-caused error: a lower lr is the remedy). ``metrics``: the epoch's."""

    def __init__(self, reason: str, metrics: dict):
        super().__init__(reason)
        self.metrics = metrics


def check_finite(metrics: dict) -> None:
    """A diverged trial stops at the epoch its training loss left the numbers (its accuracies would be chance)."""
    loss = metrics.get("train_loss")
    if loss is not None and not math.isfinite(loss):
        raise TrialFailed(f"train_loss is {loss} after epoch {metrics.get('epoch')} (diverged: lower the lr)", metrics)


class InjectedFailure(RuntimeError):
    """Raised by the test hook ``DEPT_PIPELINE_TEST_FAIL_ONCE_DIR``."""


@dataclass
class Split:
    features: "torch.Tensor"  # noqa: F821
    labels: "torch.Tensor"  # noqa: F821
    classnames: list[str]


def _subset(split: Split, labels: list[int]) -> Split:
    """The images of ``labels`` (old label values), relabelled 0..len-1 in that order."""
    import torch

    mapping = torch.full((len(split.classnames),), -1, dtype=torch.int64)
    for new, old in enumerate(labels):
        mapping[old] = new
    keep = mapping[split.labels] >= 0
    return Split(split.features[keep], mapping[split.labels[keep]], [split.classnames[i] for i in labels])


@dataclass
class TrialData:
    train: Split  # base classes, this seed's few-shot draw, all views
    val_base: Split
    val_new: Split | None  # None under the pseudo-new objective: new classes are not read for selection
    test_base: Split
    test_new: Split


def read_trial_data(ctx: TrialContext, hp: Hyperparameters, identity: dict) -> TrialData:
    """Every selection the trial needs, before training starts (so a bad store fails fast). The store is opened
    once per worker process (kept for the next trial of the same features: Tune reuses workers), each split is
    read once, and base / new / few-shot selections are taken from it in memory."""
    store = open_store(ctx.features_url, ctx.dataset, fingerprint=ctx.fingerprint, expected_identity=identity)

    def read(split: str, classes: str) -> Split:
        few_shot = split != "test"
        fs = store.features(split, classes=classes, seed=hp.seed if few_shot else None,
                            shots=hp.shots if few_shot else None)
        return Split(fs.features, fs.labels, list(fs.classnames))

    return TrialData(
        train=read("train", "base"),
        val_base=read("val", "base"),
        val_new=read("val", "new") if ctx.objective == "val" else None,
        test_base=read("test", "base"),
        test_new=read("test", "new"),
    )


def pseudo_new_split(num_base: int, fraction: float) -> tuple[list[int], list[int]]:
    """(kept base labels, held-out pseudo-new labels): the last ``fraction`` of the base labels, at least one,
    leaving at least one to train on."""
    if num_base < 2:
        raise ValueError(f"the pseudo-new objective needs at least 2 base classes, got {num_base}")
    held = min(num_base - 1, max(1, round(num_base * fraction)))
    return list(range(num_base - held)), list(range(num_base - held, num_base))


def _learner(clip, hp: Hyperparameters, classnames: list[str], dataset: str):
    from dept import build_learner

    return build_learner(
        hp.method, clip, classnames, dataset=dataset, method_options=hp.method_options(), dept=hp.dept_config(),
        seed=hp.seed, logit_scale=hp.logit_scale,
    )


@functools.lru_cache(maxsize=1)
def _frozen_text_tower(model: str, pretrained: str, device: str, weights_id: str):
    """The frozen text tower, kept across trials in one process: Tune reuses trial workers (``reuse_actors``), and
    rebuilding ViT-B's text tower costs seconds per trial. Frozen and never written to, so sharing it cannot change
    a trial's numbers; ``weights_id`` is in the key so features of other weights never meet a stale tower."""
    from dept import load_clip

    return load_clip(model, pretrained, device=device, text_only=True)


def text_tower(ctx: TrialContext, *, device: str | None = None, keep: bool = True):
    """The frozen text tower of ``ctx``'s model on ``device`` (default ``ctx.device``), refused unless its weights
    are those the features were made with. ``keep``: from the per-process cache trials share."""
    device = ctx.device if device is None else device
    if keep:
        clip = _frozen_text_tower(ctx.model, ctx.pretrained, device, ctx.weights_id)
    else:
        from dept import load_clip

        clip = load_clip(ctx.model, ctx.pretrained, device=device, text_only=True)
    if clip.weights_id != ctx.weights_id:
        raise ValueError(
            f"model {ctx.model} loaded from {ctx.pretrained} has weights {clip.weights_id}, but the features of "
            f"{ctx.dataset} were made with {ctx.weights_id}"
        )
    return clip


@dataclass
class TrialPlan:
    """What one trial trains and how it is scored, read and checked before any training (so a bad store or a
    batch larger than the training set fails fast): :func:`run_trial` trains it alone, a population host
    (:mod:`pipelines.trial.population`) trains many plans' learners in one batched step and finishes each the same way."""

    hp: Hyperparameters
    learner: object  # dept.DePTLearner trained for selection
    features: object  # its training features [N, V, D] and labels [N]
    labels: object
    validate: Callable  # learner -> the epoch's selection metrics
    finish: Callable  # (last epoch's metrics, the learner scored on test) -> the final report (no train_seconds)
    retrain: Callable | None = None  # pseudo-new: () -> (learner, features, labels) of the model scored on test

    def train_config(self):
        return self.hp.train_config()


def plan_trial(hp: Hyperparameters, ctx: TrialContext, clip) -> TrialPlan:
    """The :class:`TrialPlan` of one configuration under ``ctx``'s protocol and objective."""
    if ctx.protocol != BASE_TO_NEW:
        return _plan_transfer_trial(hp, ctx, clip)
    from dept import evaluate_base_new

    if standin.enabled():  # bench only (pipelines.trial.standin)
        evaluate_base_new = standin.evaluate_base_new  # noqa: F811
    data = read_trial_data(ctx, hp, clip.identity)
    log.info("%s %s seed %d: %d train images, %d base classes", ctx.dataset, hp.method, hp.seed,
             len(data.train.labels), len(data.train.classnames))
    if ctx.objective == "val":
        sel_train = data.train
        sel_base, sel_new, prefix = data.val_base, data.val_new, "val"
    else:
        kept, held = pseudo_new_split(len(data.train.classnames), ctx.pseudo_new_fraction)
        sel_train = _subset(data.train, kept)
        sel_base, sel_new, prefix = _subset(data.val_base, kept), _subset(data.val_base, held), "pseudo"
    _check_batch(ctx, sel_train, hp)

    def selection(learner) -> "object":
        return evaluate_base_new(
            learner, sel_base.features, sel_base.labels, sel_new.features, sel_new.labels, sel_new.classnames
        )

    def validate(learner) -> dict:
        res = selection(learner)
        return {f"{prefix}_base_acc": res.base_acc, f"{prefix}_new_acc": res.new_acc, f"{prefix}_hm": res.hm}

    learner = _learner(clip, hp, sel_train.classnames, ctx.dataset)

    def finish(last: dict, tested) -> dict:
        sel_result = selection(learner)
        if not last:  # epochs 0: no epoch reported; the untrained prompts' selection metrics, as epoch 0
            last = {"epoch": 0, **{f"{prefix}_{k}": v for k, v in sel_result.metrics().items()}}
        test = evaluate_base_new(tested, data.test_base.features, data.test_base.labels, data.test_new.features,
                                 data.test_new.labels, data.test_new.classnames)
        return {
            **last,
            TEST_BASE_ACC: test.base_acc,
            TEST_NEW_ACC: test.new_acc,
            TEST_HM: test.hm,
            "sweep_fusion_weights": list(SWEEP_WEIGHTS),
            f"sweep_{prefix}_base_acc": [b for _, b, _ in sel_result.fusion_sweep(SWEEP_WEIGHTS)],
            f"sweep_{prefix}_hm": [h for _, _, h in sel_result.fusion_sweep(SWEEP_WEIGHTS)],
            "sweep_test_base_acc": [b for _, b, _ in test.fusion_sweep(SWEEP_WEIGHTS)],
            "sweep_test_hm": [h for _, _, h in test.fusion_sweep(SWEEP_WEIGHTS)],
            "final": True,
        }

    def retrain():
        return _learner(clip, hp, data.train.classnames, ctx.dataset), data.train.features, data.train.labels

    # pseudo-new: retrain on every base class for the test scores; the selection numbers stay what they were
    return TrialPlan(hp, learner, sel_train.features, sel_train.labels, validate, finish,
                     retrain if ctx.objective == "pseudo-new" else None)


def _check_batch(ctx: TrialContext, train: "Split", hp: Hyperparameters) -> None:
    if len(train.labels) < hp.batch_size:
        raise ValueError(f"{ctx.dataset}: {len(train.labels)} training images, fewer than batch size {hp.batch_size}")


def run_trial(
    hp: Hyperparameters,
    ctx: TrialContext,
    *,
    on_epoch: Callable[[dict], None] | None = None,
    state_dir: str | Path | None = None,
    on_checkpoint: "Callable[[dict, TrainResume], None] | None" = None,  # noqa: F821
    resume: "TrainResume | None" = None,  # noqa: F821
) -> dict:
    """Train and evaluate one configuration. ``on_epoch`` gets the metrics of every epoch but the last; the last
    epoch's metrics come back in the returned dict together with the test metrics and the fusion sweep (so a
    scheduler whose horizon is the last epoch still sees the final report). With ``state_dir``, the learned state
    (prompts + CAT head, safetensors) is saved there. ``on_checkpoint``: as ``on_epoch``, with the selection
    training's state after that epoch (``dept.schedule.TrainResume``); ``resume``: continue from such a state (the
    epochs before it are not reported again)."""
    import torch

    from dept import PopulationOptions, save_state, train

    if standin.enabled():  # bench only (pipelines.trial.standin)
        train = standin.train  # noqa: F811
    torch.set_num_threads(max(1, ctx.num_threads))
    started = time.perf_counter()
    plan = plan_trial(hp, ctx, text_tower(ctx))
    options = PopulationOptions.for_precision(ctx.precision, ctx.compile)
    last: dict = {}
    train(plan.learner, plan.features, plan.labels, plan.train_config(),
          on_epoch=epoch_reporter(hp, last, on_epoch, on_checkpoint), validate=plan.validate, resume=resume,
          resumable=on_checkpoint is not None, options=options)
    tested = plan.learner
    if plan.retrain is not None:
        tested, features, labels = plan.retrain()
        train(tested, features, labels, plan.train_config(), options=options)
    final = {**plan.finish(last, tested), "train_seconds": time.perf_counter() - started}
    if state_dir is not None:
        save_state(tested, Path(state_dir) / STATE_FILE)
    return final


def epoch_reporter(hp: Hyperparameters, last: dict, on_epoch, on_checkpoint) -> Callable:
    """``dept.train``'s per-epoch hook (a population host's per member too): keeps the newest epoch's metrics in
    ``last`` and reports every epoch but the last (whose metrics go out with the final result)."""

    def epoch_done(stats) -> None:
        metrics = {"epoch": stats.epoch, "train_loss": stats.train_loss, "lr": stats.lr,
                   "epoch_seconds": stats.seconds, **stats.metrics}
        last.clear()
        last.update(metrics)
        if stats.epoch < hp.epochs and on_epoch is not None:
            on_epoch(metrics)
        if stats.epoch < hp.epochs and on_checkpoint is not None:
            on_checkpoint(metrics, stats.state)

    return epoch_done


def read_transfer_targets(ctx: TrialContext, identity: dict) -> list:
    """Every target's test images as ``dept.transfer.TransferTarget`` (all of the target's classes)."""
    from dept.transfer import TransferTarget

    out = []
    for t in ctx.targets:
        fs = open_target_store(ctx.features_url, t.dataset, fingerprint=t.fingerprint,
                               expected_identity=identity).features("test")
        out.append(TransferTarget(t.dataset, t.protocol, fs.features, fs.labels, list(fs.classnames),
                                  list(t.label_to_source) if t.label_to_source is not None else None))
    return out


def _plan_transfer_trial(hp: Hyperparameters, ctx: TrialContext, clip) -> TrialPlan:
    """The cross-dataset / domain-generalisation trial: train on every class of the source (its few-shot draw),
    select on the source's val images (``val_acc``, all source classes), then score the source's test images
    (``test_acc``) and every target's (``test_acc/<target>``, ``test_target_avg``; dept.transfer)."""
    from dept.transfer import evaluate_transfer, source_accuracy
    store = open_store(ctx.features_url, ctx.dataset, fingerprint=ctx.fingerprint, expected_identity=clip.identity)
    fs_train = store.features("train", seed=hp.seed, shots=hp.shots)
    fs_val = store.features("val", seed=hp.seed, shots=hp.shots)
    fs_test = store.features("test")
    targets = read_transfer_targets(ctx, clip.identity)  # before training: a bad target store fails fast
    _check_batch(ctx, fs_train, hp)
    log.info("%s (%s source) %s seed %d: %d train images, %d classes, %d targets", ctx.dataset, ctx.protocol,
             hp.method, hp.seed, len(fs_train.labels), len(fs_train.classnames), len(targets))

    def validate(learner) -> dict:
        if standin.enabled():  # bench only (pipelines.trial.standin): the metric without its forward
            return {VAL_ACC: 0.0}
        return {VAL_ACC: source_accuracy(learner, fs_val.features, fs_val.labels)}

    def finish(last: dict, tested) -> dict:
        if not last:  # epochs 0: the untrained prompts' selection metric, as epoch 0
            last = {"epoch": 0, **validate(tested)}
        return {**last, **evaluate_transfer(tested, fs_test.features, fs_test.labels, targets).metrics(), "final": True}

    learner = _learner(clip, hp, list(fs_train.classnames), ctx.dataset)
    return TrialPlan(hp, learner, fs_train.features, fs_train.labels, validate, finish)


