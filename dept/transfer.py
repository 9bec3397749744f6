"""The paper's two transfer protocols: a prompt trained on *all* classes of a source dataset (ImageNet), evaluated
on other datasets without further training.

- ``cross-dataset``: targets with their own classes (the 10 other datasets). ITM head only, over the target's
  classes: the CAT head's linear layer knows only source classes, so it is never used.
- ``domain-generalization``: targets with the source's classes in another domain (ImageNet-V2 / -Sketch / -A / -R).
  The fused head, as on the source; for a target holding a subset of the source's classes (A and R: 200 of 1000)
  the CAT linear layer is cut to the rows of those classes (``label_to_source``), so both heads score the same
  classes.

Source accuracy: the fused head over all source classes (the learner's ``base_scores``: its "base" classes are
all of the source's here).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dept.evaluate import accuracy, itm_logits
from dept.head import fuse
from dept.learner import DePTLearner
from dept.protocols import CROSS_DATASET, DOMAIN_GENERALIZATION


@dataclass(frozen=True)
class TransferTarget:
    """One target's test images. ``label_to_source``: for a domain-generalisation target holding a subset of the
    source's classes, entry ``i`` is the source label of this target's label ``i`` (None: the source's labels)."""

    name: str
    protocol: str  # CROSS_DATASET or DOMAIN_GENERALIZATION
    features: torch.Tensor  # [N, D]
    labels: torch.Tensor  # [N], this target's labels
    classnames: list[str]
    label_to_source: list[int] | None = None


def check_target_classes(name: str, classnames: list[str], label_to_source: list[int] | None,
                         source_classnames: list[str]) -> None:
    """A domain-generalisation target must name the source's classes (through ``label_to_source``): else fusing the
    CAT head's rows with the ITM scores would mix two class lists. One line naming the target."""
    rows = list(label_to_source) if label_to_source is not None else list(range(len(classnames)))
    if len(rows) != len(classnames) or any(not 0 <= r < len(source_classnames) for r in rows):
        raise ValueError(f"target {name}: its {len(classnames)} classes do not map into the source's "
                         f"{len(source_classnames)} classes")
    wrong = [(c, source_classnames[r]) for c, r in zip(classnames, rows) if c != source_classnames[r]]
    if wrong:
        raise ValueError(f"target {name}: class {wrong[0][0]!r} is {wrong[0][1]!r} in the source "
                         f"({len(wrong)} of {len(rows)} class names differ); a domain-generalisation target needs "
                         "the source's classes")


def check_target(learner: DePTLearner, target: TransferTarget) -> None:
    if target.protocol == CROSS_DATASET:
        return
    if target.protocol != DOMAIN_GENERALIZATION:
        raise ValueError(f"target {target.name}: protocol must be {CROSS_DATASET} or {DOMAIN_GENERALIZATION}, "
                         f"not {target.protocol!r}")
    check_target_classes(target.name, target.classnames, target.label_to_source, learner.base_classnames)


@torch.no_grad()
def cut_cat_logits(learner: DePTLearner, features: torch.Tensor, columns: list[int] | None) -> torch.Tensor:
    """The CAT head's image logits with its linear layer cut to ``columns`` (source labels); None: all of them.
    Equal to the full head's logits restricted to those columns, without computing the others."""
    head = learner.cat_head
    if head is None:
        raise ValueError("this learner has no CAT head (DePT is off)")
    device = head.classifier.weight.device
    u = head.cwt_image(features.to(device))
    w, b = head.classifier.weight, head.classifier.bias
    if columns is not None:
        index = torch.as_tensor(columns, device=device)
        w, b = w[index], b[index]
    return torch.nn.functional.linear(u, w, b).cpu()


@torch.no_grad()
def target_scores(learner: DePTLearner, target: TransferTarget) -> torch.Tensor:
    """``[N, K_target]`` scores: ITM only for cross-dataset; fused (cut where a class subset) for domain
    generalisation, with the learner's fusion weight; ITM alone when the learner has no CAT head."""
    check_target(learner, target)
    itm = itm_logits(learner, target.features, list(target.classnames))
    if target.protocol == CROSS_DATASET or learner.dept is None:
        return itm
    cat = cut_cat_logits(learner, target.features, target.label_to_source)
    return fuse(itm, cat, learner.dept.fusion_weight, learner.dept.fusion)


@torch.no_grad()
def source_accuracy(learner: DePTLearner, features: torch.Tensor, labels: torch.Tensor) -> float:
    """Accuracy over all source classes (the learner's classes), fused with DePT, ITM without."""
    itm = itm_logits(learner, features, learner.base_classnames)
    if learner.dept is None:
        return accuracy(itm, labels)
    cat = cut_cat_logits(learner, features, None)
    return accuracy(fuse(itm, cat, learner.dept.fusion_weight, learner.dept.fusion), labels)


@dataclass
class TransferResult:
    source_acc: float
    target_acc: dict[str, float]  # target name -> accuracy, in the order given

    @property
    def target_average(self) -> float:
        vals = list(self.target_acc.values())
        return sum(vals) / len(vals) if vals else float("nan")

    def metrics(self) -> dict[str, float]:
        """The names runs log (``test_acc``, ``test_acc/<target>``, ``test_target_avg``)."""
        out = {"test_acc": self.source_acc, **{f"test_acc/{k}": v for k, v in self.target_acc.items()}}
        if self.target_acc:
            out["test_target_avg"] = self.target_average
        return out


def evaluate_transfer(
    learner: DePTLearner, source_features: torch.Tensor, source_labels: torch.Tensor, targets: list[TransferTarget]
) -> TransferResult:
    """Source test accuracy and each target's, as the protocol of each target prescribes."""
    for t in targets:
        check_target(learner, t)
    return TransferResult(
        source_acc=source_accuracy(learner, source_features, source_labels),
        target_acc={t.name: accuracy(target_scores(learner, t), t.labels) for t in targets},
    )
