"""The manifest: one typed record per dataset folder of what its features are (model identity, transforms, views,
shots, seeds, split files, row counts) and the fingerprint that pins them."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from dept.datasets import TargetOf
from pipelines.store.layout import STORE_FORMAT, StoreError, sha256_json

#: Manifest keys that are bookkeeping, not content: excluded from the fingerprint.
NOT_FINGERPRINTED = ("fingerprint", "config_fingerprint", "complete", "shards", "created", "pretrained",
                     "image_root", "split_files", "on_error", "url",
                     # a dataset's transfer role says nothing about its features; stores written before it was
                     # recorded stay valid and are not re-encoded (tune falls back on the registry for them)
                     "target_of")
#: What encoding produced (not asked for): in the content fingerprint, not in the settings fingerprint.
RESULTS = ("rows", "skipped")
#: Fields held as tuples (JSON lists on disk) so that a Manifest is immutable.
_TUPLES = ("mean", "std", "seeds", "classnames", "label_to_imagenet", "split_files", "split_sha256", "skipped")


def content_fingerprint(manifest: dict) -> str:
    """sha256 over everything in a manifest dict that determines the stored features (not where files lay, which
    machine encoded what, or when)."""
    return sha256_json({k: v for k, v in manifest.items() if k not in NOT_FINGERPRINTED})


@dataclass(frozen=True)
class Manifest:
    """``_manifest.json`` of one dataset folder. Featurize writes it twice: first the settings (``complete``
    false, results empty), last with ``rows`` / ``skipped`` / ``shards`` and ``complete`` true."""

    dataset: str
    model: str
    pretrained: str  # as given to featurize: a tag, "shipped", an absolute checkpoint path, or "none"
    weights_id: str  # tag, "sha256:<hex>" of the checkpoint file, or "random-init:<seed>"
    open_clip_version: str
    feature_dim: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    transforms: dict[str, Any]  # {"test": ..., "train_view": ...} as dept.transforms describes them
    views: int  # augmented train views (train rows carry views 0..views)
    shots: int  # 0: whole train / val splits stored, any draw can be made from them
    val_shots: int
    seeds: tuple[int, ...]  # seeds whose few-shot draws are stored (empty with shots 0)
    num_classes: int
    classnames: tuple[str, ...]  # index = label
    label_to_imagenet: tuple[int, ...] | None
    split_files: tuple[str, ...]
    split_sha256: tuple[dict, ...]  # [{"file": name, "sha256": hex}]
    image_root: str
    images_per_shard: int
    images: dict[str, int]  # images planned per split
    fewshot_sha256: str  # sha256 of _fewshot.json's content
    format: int = STORE_FORMAT
    #: a transfer target's role: {"protocol", "source", "label_to_source"} (dept.datasets.TargetOf); None: none.
    #: Stores written before it existed read as None.
    target_of: dict | None = None
    config_fingerprint: str = ""  # the settings alone: a rerun with other settings is refused
    complete: bool = False
    rows: dict[str, int] = field(default_factory=dict)  # stored rows per split (train: images x (1 + views))
    skipped: tuple[dict, ...] = ()  # [{"split", "image_id", "error"}] unreadable images skipped (--on-error skip)
    shards: dict[str, dict] = field(default_factory=dict)  # shard name -> rows, node ids, skipped
    on_error: str = ""
    created: str = ""
    fingerprint: str = ""  # content_fingerprint of the complete manifest

    # -- (de)serialisation -------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: dict, where: str) -> "Manifest":
        """Parse a manifest read from ``where``; unknown keys are ignored (they are still fingerprinted)."""
        names = {f.name for f in dataclasses.fields(cls)}
        required = [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [k for k in required if k not in raw]
        if missing:
            raise StoreError(f"manifest {where} lacks {missing[0]!r} (written by another version?); "
                             "re-run `dept-pipeline featurize` into a new --out")
        kwargs = {k: (tuple(v) if k in _TUPLES and v is not None else v) for k, v in raw.items() if k in names}
        return cls(**kwargs)

    def to_dict(self) -> dict:
        """The JSON form (tuples become lists when written)."""
        return dataclasses.asdict(self)

    # -- fingerprints ------------------------------------------------------------------------------------
    def content_fingerprint(self) -> str:
        return content_fingerprint(self.to_dict())

    def settings_fingerprint(self) -> str:
        return content_fingerprint({k: v for k, v in self.to_dict().items() if k not in RESULTS})

    def settings_diff(self, other: "Manifest") -> str:
        """What differs between this (stored) manifest's settings and ``other``'s, short values shown."""
        a, b = self.to_dict(), other.to_dict()
        keys = sorted(k for k in a if k not in NOT_FINGERPRINTED and k not in RESULTS and a[k] != b[k])

        def show(k: str) -> str:
            x, y = a[k], b[k]
            return f"{k} {x!r} in the store, {y!r} now" if len(repr(x)) <= 40 and len(repr(y)) <= 40 else k

        return "; ".join(map(show, keys)) or "store format"

    # -- identity ----------------------------------------------------------------------------------------
    @property
    def identity(self) -> dict:
        return {"model": self.model, "weights_id": self.weights_id}

    def target(self):
        """This dataset's transfer role as a ``dept.datasets.TargetOf``, or None."""
        t = self.target_of
        if not t:
            return None
        labels = t.get("label_to_source")
        return TargetOf(t["protocol"], t["source"], tuple(labels) if labels is not None else None)

    def check_identity(self, expected: dict, where: str) -> None:
        """Refuse features of another model than ``expected`` (a ``LoadedClip.identity``)."""
        want = (expected.get("model"), expected.get("weights_id"))
        if (self.model, self.weights_id) != want:
            raise StoreError(
                f"feature store {where} holds features of model {self.model} (weights {self.weights_id}), "
                f"not of {want[0]} (weights {want[1]}); featurize with that model first"
            )
