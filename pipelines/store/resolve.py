"""From what a user types as ``--features`` (the store root featurize wrote to, or a model folder inside it) and
optionally ``--model`` / ``--pretrained``, to the model folder ``<root>/<model-slug>/<weights-slug>`` that holds
the datasets. The weights slug of a checkpoint is a sha256 nobody can guess; it is found here instead."""
from __future__ import annotations

import json
import logging
import os
import posixpath
from dataclasses import dataclass

from dept.weights import ASSET_DIR, RANDOM_INIT_SEED, SHIPPED_TAG, file_sha256, is_local_checkpoint, is_none
from pipelines.store.layout import (
    LEGACY_MANIFEST,
    MANIFEST,
    StoreError,
    join_url,
    normalize_url,
    url_to_filesystem,
)
from pipelines.store.reader import legacy_message

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelFolder:
    """One ``<root>/<model>/<weights>`` folder, as its manifests describe it."""

    url: str
    model: str
    pretrained: str
    weights_id: str
    datasets: tuple[str, ...]  # with a manifest (complete or not)

    def describe(self) -> str:
        return f"{self.model} ({self.pretrained}): {', '.join(self.datasets)}"


def _manifests_below(url: str, depth: int) -> list[str]:
    """URLs of the dataset folders ``depth`` levels below ``url`` that hold a manifest."""
    fs, path = url_to_filesystem(url)
    pattern = posixpath.join(path, *(["*"] * depth), MANIFEST)
    found = sorted(posixpath.dirname(p) for p in fs.glob(pattern))
    if not found and fs.glob(posixpath.join(path, *(["*"] * depth), LEGACY_MANIFEST)):
        raise StoreError(legacy_message(url))
    return [join_url(url, posixpath.relpath(p, path)) for p in found]


def model_folders(root: str) -> list[ModelFolder]:
    """Every model folder under the store root ``root`` (one manifest read per model folder)."""
    by_model: dict[str, list[str]] = {}
    for dataset_url in _manifests_below(root, 3):
        model_url, name = dataset_url.rsplit("/", 1)
        by_model.setdefault(model_url, []).append(name)
    out = []
    for model_url, names in sorted(by_model.items()):
        fs, path = url_to_filesystem(join_url(model_url, names[0], MANIFEST))
        try:
            with fs.open(path, "rb") as f:
                raw = json.loads(f.read().decode())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            continue
        out.append(ModelFolder(model_url, str(raw.get("model")), str(raw.get("pretrained") or "none"),
                               str(raw.get("weights_id")), tuple(sorted(names))))
    return out


def weights_id_of(model: str, pretrained: str | None) -> str | None:
    """The weights id featurize records for (model, pretrained), without building the model; None when it cannot
    be known here (a checkpoint path that does not exist on this machine)."""
    if is_none(pretrained):
        return f"random-init:{RANDOM_INIT_SEED}"
    if pretrained == SHIPPED_TAG or is_local_checkpoint(pretrained):
        path = ASSET_DIR / f"{model}.safetensors" if pretrained == SHIPPED_TAG else os.path.expanduser(str(pretrained))
        return "sha256:" + file_sha256(path) if os.path.isfile(path) else None
    return str(pretrained)


def _matches(folder: ModelFolder, model: str | None, pretrained: str | None) -> bool:
    if model is not None and folder.model != model:
        return False
    if pretrained is None:
        return True
    wid = weights_id_of(folder.model, pretrained)
    if wid is not None:
        return folder.weights_id == wid
    # A checkpoint missing here: match the path featurize recorded.
    return folder.pretrained in (pretrained, os.path.abspath(os.path.expanduser(pretrained)))


def _asked(model: str | None, pretrained: str | None) -> str:
    return " ".join(x for x in (f"--model {model}" if model else "", f"--pretrained {pretrained}" if pretrained else "")
                    if x) or "any model"


def resolve_features(features: str, *, dataset: str | None = None, model: str | None = None,
                     pretrained: str | None = None) -> str:
    """The model folder to read: ``features`` itself when it is one (checked against ``model``/``pretrained``
    when given), else the one folder under the store root ``features`` that matches ``model`` / ``pretrained``
    and holds ``dataset`` (None or "all": any). Local paths come back absolute. ``StoreError`` (one line, naming
    the models and datasets present) when none or several match."""
    url = normalize_url(features)
    fs, path = url_to_filesystem(url)
    if not fs.exists(path):
        raise StoreError(f"--features {features}: no featurized datasets there (no such folder)")
    if fs.exists(posixpath.join(path, MANIFEST)):
        raise StoreError(f"--features {features} is one dataset's folder; give the model folder above it "
                         f"({url.rsplit('/', 1)[0]}) or the store root")
    if _manifests_below(url, 1):  # a model folder: <root>/<model>/<weights>
        if model is None and pretrained is None:
            return url
        here = model_folders(url.rsplit("/", 2)[0])
        this = [f for f in here if f.url == url]
        if this and not _matches(this[0], model, pretrained):
            raise StoreError(f"--features {features} holds features of {this[0].model} ({this[0].pretrained}), "
                             f"not of {_asked(model, pretrained)}; give the store root to choose among: "
                             + "; ".join(f.describe() for f in here))
        return url
    folders = model_folders(url)
    if not folders:
        raise StoreError(f"--features {features}: no featurized datasets there (neither a store root nor a model "
                         "folder); run `dept-pipeline featurize --out` there first")
    present = "; ".join(f.describe() for f in folders)
    wanted = [f for f in folders if _matches(f, model, pretrained)]
    if dataset not in (None, "all"):
        wanted = [f for f in wanted if dataset in f.datasets]
    what = _asked(model, pretrained) + (f" with dataset {dataset!r}" if dataset not in (None, "all") else "")
    if not wanted:
        raise StoreError(f"no features of {what} under {url}; present: {present}")
    if len(wanted) > 1:
        match = (f"hold dataset {dataset!r}" if dataset not in (None, "all") else "match") + (
            f" ({_asked(model, pretrained)})" if model or pretrained else "")
        raise StoreError(f"several model folders under {url} {match}: "
                         + "; ".join(f.describe() for f in wanted) + "; choose one with --model and --pretrained")
    log.info("features of %s: %s", what, wanted[0].url)
    return wanted[0].url
