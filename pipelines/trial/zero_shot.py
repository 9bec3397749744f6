"""CLIP zero-shot on a featurized dataset: the first row of the paper's base-to-new tables.

The class texts are the dataset's hand-crafted template (CoOp's zero-shot prompts, ``dept.datasets.zero_shot_template``;
"a photo of a {}." for custom datasets), encoded by the same frozen text tower trials load; the stored image features
are scored with ``dept.evaluate_zero_shot`` (ITM logits only, nothing trained): base accuracy among the base
classes, new among the new ones, on every test image, and the same on every stored validation image. There is no
seed, so one run per dataset says it all.

In MLflow it is a run with role ``zero-shot``, method ``clip``, the trials' feature tags (dataset, backbone,
pretrained, weights_id, feature_fingerprint, ...), their param names where they mean something (dept false, loss
and fusion weight 0, epochs 0, logit_scale) plus ``template``, and their metric names (``test_base_acc`` ...).
``dept-pipeline zero-shot`` logs a top-level run; ``tune`` logs one under each dataset's parent run
(:func:`ensure_zero_shot_run`), once, also across ``--resume``.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from dept.datasets import zero_shot_template
from dept.protocols import BASE_TO_NEW
from pipelines.store import DatasetStore
from pipelines.tracking.client import Tracker, metric_at
from pipelines.trial.context import TrialContext, make_context
from pipelines.trial.plan import text_tower
from pipelines.vocabulary import (
    FINAL_TAG,
    PARENT_TAG,
    ROLE_TAG,
    ROLE_ZERO_SHOT,
    TEST_BASE_ACC,
    TEST_HM,
    TEST_NEW_ACC,
    VAL_ACC,
    VAL_BASE_ACC,
    VAL_HM,
    VAL_NEW_ACC,
    is_transfer_test_metric,
    param_value,
)

log = logging.getLogger(__name__)

#: The ``method`` tag of a zero-shot run (the report names it "CLIP (zero-shot)").
ZERO_SHOT_METHOD = "clip"
RUN_NAME = "CLIP zero-shot"
METRICS = (TEST_BASE_ACC, TEST_NEW_ACC, TEST_HM, VAL_BASE_ACC, VAL_NEW_ACC, VAL_HM)


@dataclass(frozen=True)
class ZeroShotResult:
    dataset: str
    template: str
    metrics: dict[str, float]  # METRICS
    images: dict[str, int]  # images scored: test_base, test_new, val_base, val_new
    tags: dict[str, str]  # the features' tags, as a trial's (TrialContext.tags())

    def line(self) -> str:
        m = self.metrics
        return (f"{self.dataset} CLIP zero-shot ({self.template!r}): base {m['test_base_acc']:.2f}  "
                f"new {m['test_new_acc']:.2f}  HM {m['test_hm']:.2f}  (test; val HM {m['val_hm']:.2f})")


def template_for(dataset: str, template: str | None = None) -> str:
    """``template`` if given, else the dataset's hand-crafted one."""
    chosen = zero_shot_template(dataset) if template is None else template
    if "{}" not in chosen:
        raise ValueError(f"zero-shot template must contain {{}} for the class name, got {chosen!r}")
    return chosen


def zero_shot_from_context(ctx: TrialContext, *, template: str | None = None, device: str = "cpu") -> ZeroShotResult:
    """Zero-shot base / new / HM of ``ctx``'s dataset from its feature store (test and every stored val image)."""
    # torch here: the command's checks (template, store, context) answer before it loads.
    from dept.evaluate import evaluate_zero_shot

    chosen = template_for(ctx.dataset, template)
    # Not from the trials' per-process cache: the tune driver should not keep a text tower after this call.
    clip = text_tower(ctx, device=device, keep=False)
    # Opened for this call alone, for the same reason.
    store = DatasetStore.open(ctx.features_url, ctx.dataset, expected_identity=clip.identity)
    if ctx.protocol != BASE_TO_NEW:
        return _transfer_zero_shot(ctx, clip, store, chosen)
    metrics: dict[str, float] = {}
    images: dict[str, int] = {}
    for split in ("test", "val"):
        base, new = store.features(split, classes="base"), store.features(split, classes="new")
        res = evaluate_zero_shot(clip, chosen, base.features, base.labels, base.classnames,
                                 new.features, new.labels, new.classnames)
        metrics.update(res.metrics(f"{split}_"))
        images.update({f"{split}_base": len(base.labels), f"{split}_new": len(new.labels)})
    return ZeroShotResult(ctx.dataset, chosen, metrics, images, ctx.tags())


def _transfer_zero_shot(ctx: TrialContext, clip, store, template: str) -> ZeroShotResult:
    """The transfer protocols' zero-shot row: accuracy over all classes of the source (test and val images) and of
    each target (its own classes and template), the trials' names (``test_acc``, ``test_acc/<target>``, ...)."""
    from dept.transfer import TransferResult
    from dept.zero_shot import zero_shot_classifier

    def acc(fs, chosen: str) -> float:  # over all of the dataset's classes
        return zero_shot_classifier(clip, fs.classnames, chosen).accuracy(fs.features, fs.labels)

    test, val = store.features("test"), store.features("val")
    images = {"test": len(test.labels), "val": len(val.labels)}
    targets = {}
    for t in ctx.targets:
        fs = DatasetStore.open(ctx.features_url, t.dataset, expected_identity=clip.identity).features("test")
        targets[t.dataset] = acc(fs, template_for(t.dataset))
        images[f"test_{t.dataset}"] = len(fs.labels)
    metrics = {**TransferResult(acc(test, template), targets).metrics(), VAL_ACC: acc(val, template)}
    return ZeroShotResult(ctx.dataset, template, metrics, images, ctx.tags())


def zero_shot(features: str, dataset: str, *, model: str | None = None, pretrained: str | None = None,
              template: str | None = None, device: str = "cpu") -> ZeroShotResult:
    """Zero-shot on one dataset of a feature store (``features``: a model folder, or the root with ``model`` /
    ``pretrained``), after the same store checks as a trial's."""
    ctx = make_context(features, dataset, shots=[None], seeds=[], device=device, model=model, pretrained=pretrained,
                       who="zero-shot")
    return zero_shot_from_context(ctx, template=template, device=device)


def run_params(result: ZeroShotResult) -> dict[str, object]:
    """The trials' param names where they mean something for zero-shot, and the template."""
    return {
        "method": ZERO_SHOT_METHOD, "dept": False, "loss_weight": 0.0, "fusion_weight": 0.0, "epochs": 0,
        "logit_scale": "learned", "template": result.template,
        "dept_effective": False, "loss_weight_effective": 0.0, "fusion_weight_effective": 0.0,
    }


def log_zero_shot_run(tracker: Tracker, result: ZeroShotResult, *, parent_run_id: str | None = None) -> str:
    """One finished MLflow run holding ``result`` (a child of ``parent_run_id`` when given)."""
    # No trial_status tag: it is no trial (filters on that tag find trials and train runs only).
    tags = {**result.tags, ROLE_TAG: ROLE_ZERO_SHOT, "method": ZERO_SHOT_METHOD, "dept": param_value(False),
            "template": result.template, **{f"images_{k}": str(v) for k, v in result.images.items()}}
    if parent_run_id is not None:
        tags[PARENT_TAG] = parent_run_id
    run_id = tracker.create_run(RUN_NAME, tags)
    try:
        tracker.log_params(run_id, run_params(result))
        ts = int(time.time() * 1000)
        tracker.log_metrics(run_id, [metric_at(k, v, 0, ts) for k, v in result.metrics.items() if not math.isnan(v)])
        tracker.set_tags(run_id, {FINAL_TAG: True})
    except BaseException:
        tracker.client.set_terminated(run_id, "FAILED")
        raise
    tracker.client.set_terminated(run_id, "FINISHED")
    return run_id


def find_zero_shot_run(tracker: Tracker, parent_run_id: str):
    """The finished zero-shot child run of a parent, or None."""
    runs = tracker.search(f"tags.role = '{ROLE_ZERO_SHOT}' and tags.`{PARENT_TAG}` = '{parent_run_id}'")
    runs = [r for r in runs if r.info.status == "FINISHED"]
    return max(runs, key=lambda r: r.info.start_time or 0) if runs else None


def ensure_zero_shot_run(tracker: Tracker, parent_run_id: str, ctx: TrialContext) -> dict[str, float]:
    """``tune``: the zero-shot metrics of a dataset, logged under its parent run once (a resumed experiment
    finds the run it logged before and computes nothing). Computed on the driver, on the CPU."""
    existing = find_zero_shot_run(tracker, parent_run_id)
    if existing is not None:
        return {k: v for k, v in existing.data.metrics.items()
                if k in METRICS or k == VAL_ACC or is_transfer_test_metric(k)}
    result = zero_shot_from_context(ctx, device="cpu")
    log_zero_shot_run(tracker, result, parent_run_id=parent_run_id)
    return result.metrics
