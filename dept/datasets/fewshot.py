"""Few-shot draws compatible with CoOp's, the base/new class split, and relabelling to a class subset."""
from __future__ import annotations

import math
import random
from collections.abc import Sequence

from .types import DatasetSplits, Item

#: CoOp draws at most this many validation images per class, whatever the number of shots.
MAX_VAL_SHOTS = 4


def _draw_per_label(items: Sequence[Item], shots: int, rng: random.Random) -> list[Item]:
    """CoOp's per-class draw: group by label in order of first appearance, ``sample(group, shots)`` per group;
    a group smaller than ``shots`` is taken whole (no repeats, no draw from the RNG)."""
    groups: dict[int, list[Item]] = {}
    for item in items:
        groups.setdefault(item.label, []).append(item)
    out: list[Item] = []
    for group in groups.values():
        out.extend(rng.sample(group, shots) if len(group) >= shots else group)
    return out


def draw_few_shot(splits: DatasetSplits, shots: int | None, seed: int) -> tuple[list[Item], list[Item]]:
    """The few-shot (train, val) items of one seed, drawn exactly as CoOp does.

    Python's ``random`` is seeded with ``seed``; the train split is drawn first with ``shots`` per class, then, on
    the same random stream, the val split with ``min(shots, 4)`` per class. Within a split, classes are visited in
    order of their first appearance and each draws ``random.sample(class_items, k)``. A class with fewer than ``k``
    items contributes all of them (CoOp's behaviour without ``repeat``). ``shots`` of ``None`` or ``<= 0`` means
    every item of both splits.

    The draw uses a private ``random.Random(seed)``, whose stream is identical to that of ``random.seed(seed)``
    followed by the module-level functions, so the global RNG state of the caller is left untouched.
    """
    if shots is None or shots <= 0:
        return list(splits.train), list(splits.val)
    rng = random.Random(seed)
    train = _draw_per_label(splits.train, shots, rng)
    val = _draw_per_label(splits.val, min(shots, MAX_VAL_SHOTS), rng)
    return train, val


def base_new_split(num_classes: int) -> tuple[list[int], list[int]]:
    """CoOp's class split: labels sorted, base = the first ceil(n/2), new = the rest."""
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")
    m = math.ceil(num_classes / 2)
    return list(range(m)), list(range(m, num_classes))


def subset(
    items: Sequence[Item], labels: Sequence[int], classnames: Sequence[str] | None = None
) -> tuple[list[Item], list[str]]:
    """Keep the items whose label is in ``labels`` and relabel them ``0..m-1`` in the order of ``labels``.

    Returns the kept items (in their original order) and the m matching class names. The names come from
    ``classnames`` (the full list, index = old label) when given, else from the items themselves, in which case
    every label in ``labels`` must occur in ``items``.
    """
    relabel = {old: new for new, old in enumerate(labels)}
    if len(relabel) != len(labels):
        raise ValueError(f"labels must be distinct, got {list(labels)}")
    kept = [Item(it.impath, relabel[it.label], it.classname) for it in items if it.label in relabel]
    if classnames is not None:
        names = [classnames[old] for old in labels]
    else:
        by_label = {it.label: it.classname for it in items}
        absent = [old for old in labels if old not in by_label]
        if absent:
            raise ValueError(f"labels {absent} have no items; pass classnames to name them")
        names = [by_label[old] for old in labels]
    return kept, names
