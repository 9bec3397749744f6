"""The transfer protocols' setup: which featurized datasets are targets of a source, checked before Ray starts.

A dataset is a target of (protocol, source) when its manifest says so (``target_of``, written by featurize from the
dataset registry or a custom dataset's ``transfer.json``); stores written before manifests carried it fall back on
the registry's record for known dataset names. Trials then train on the source (all classes) and are scored on
every target at their end (``pipelines.trial.plan.plan_trial``).
"""
from __future__ import annotations

from dataclasses import dataclass

from dept.datasets import DatasetError, TargetOf, dataset_names, get_spec
from dept.protocols import CROSS_DATASET
from pipelines.store import list_datasets, read_manifest


@dataclass(frozen=True)
class TargetContext:
    """A transfer target a trial is evaluated on at its end (its test images, from the same model folder)."""

    dataset: str
    fingerprint: str
    protocol: str  # cross-dataset | domain-generalization
    label_to_source: tuple[int, ...] | None = None  # a class subset of the source (domain generalisation)


class ProtocolError(ValueError):
    """A transfer setup that cannot run; one line."""


def target_role(manifest):
    """A featurized dataset's transfer role (``dept.datasets.TargetOf``) or None."""
    role = manifest.target()
    if role is not None:
        return role
    try:
        spec = get_spec(manifest.dataset)
    except DatasetError:
        return None  # a custom dataset without transfer.json: nobody's target
    if spec.target_of is None:
        return None
    labels = manifest.label_to_imagenet
    return TargetOf(spec.target_of[0], spec.target_of[1], tuple(labels) if labels is not None else None)


def _order(name: str) -> tuple:
    """The paper's order for registry datasets, then others by name."""
    known = [n.lower() for n in dataset_names()]
    return (0, known.index(name.lower()), "") if name.lower() in known else (1, 0, name)


def find_targets(model_url: str, source: str, protocol: str, names: tuple[str, ...] = ()) -> tuple[TargetContext, ...]:
    """The targets of ``source`` under ``protocol`` in the model folder ``model_url``: ``names`` (each must be
    featurized there and be such a target), or every one featurized. Domain-generalisation targets must carry the
    source's class names (through their label mapping)."""
    from dept.transfer import check_target_classes  # here: dept.transfer loads torch, needed only for this check

    present = list_datasets(model_url)
    manifests = {d: read_manifest(model_url, d) for d in present}
    roles = {d: target_role(m) for d, m in manifests.items()}

    def is_target(d: str) -> bool:
        r = roles[d]
        return r is not None and r.protocol == protocol and r.source.lower() == source.lower()

    by_lower = {d.lower(): d for d in present}
    chosen = []
    for n in names:
        d = by_lower.get(n.lower())
        if d is None:
            raise ProtocolError(f"--targets {n}: no complete features under {model_url} (datasets there: "
                                f"{', '.join(present) or 'none'}); featurize it first")
        if not is_target(d):
            r = roles[d]
            what = f"a {r.protocol} target of {r.source}" if r is not None else "no transfer target"
            raise ProtocolError(f"--targets {n}: {d} is {what} (its manifest, {model_url}/{d}), not a {protocol} "
                                f"target of {source}")
        chosen.append(d)
    if not names:
        chosen = sorted((d for d in present if is_target(d)), key=_order)
    if not chosen:
        raise ProtocolError(f"no {protocol} targets of {source} featurized under {model_url} (datasets there: "
                            f"{', '.join(present) or 'none'}); featurize them, e.g. `dept-pipeline featurize "
                            "--dataset all`")
    source_names = list(manifests[by_lower[source.lower()]].classnames) if source.lower() in by_lower else None
    out = []
    for d in chosen:
        m, r = manifests[d], roles[d]
        if protocol != CROSS_DATASET and source_names is not None:
            try:
                check_target_classes(d, list(m.classnames), r.label_to_source, source_names)
            except ValueError as e:
                raise ProtocolError(f"{e} ({model_url}/{d})") from None
        if int(m.rows.get("test", 0)) == 0:
            raise ProtocolError(f"target {d} ({model_url}/{d}) has no test images")
        out.append(TargetContext(d, m.fingerprint, protocol, r.label_to_source))
    return tuple(out)


def check_class_specific(protocol: str, targets: tuple[TargetContext, ...], class_specific: bool) -> None:
    """CoOp's class-specific contexts exist for the source's classes only: they cannot score a cross-dataset
    target's classes, nor a class subset of the source (its own list of names), so such trials are refused here
    rather than failing at their end."""
    if not class_specific:
        return
    bad = [t.dataset for t in targets if t.protocol == CROSS_DATASET or t.label_to_source is not None]
    if bad:
        raise ProtocolError(f"class_specific (CoOp's CSC) learns one context per source class and cannot score "
                            f"target {bad[0]}'s classes ({protocol}); use shared contexts (class_specific: false)")
