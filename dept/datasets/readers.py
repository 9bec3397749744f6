"""Readers for CoOp's dataset folder layouts.

Each reader takes a :class:`~dept.datasets.types.DatasetSpec` and the dataset's folder and returns
:class:`DatasetSplits`. Everything a user can get wrong (missing or malformed files, images listed but absent) is
checked here, before any caller starts work, and raised as a one-line :class:`DatasetError`.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence

from .types import DatasetError, DatasetSpec, DatasetSplits, Item

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "val", "test")


def clean_classname(raw: str, renames: Mapping[str, str]) -> str:
    """A raw class name as written in a split/label file -> the name used in prompts.

    A per-dataset rename wins (EuroSAT's "AnnualCrop" -> "Annual Crop Land"); otherwise ``_`` becomes a space.
    """
    raw = raw.strip()
    if raw in renames:
        return renames[raw]
    return raw.replace("_", " ")


def _short(value: object, limit: int = 120) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
    text = " ".join(text.split())  # keep the message on one line
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_relpath(name: str, path: str, where: str, impath: str) -> None:
    """Split entries must stay inside the image folder: no absolute paths, no ``..`` escapes."""
    norm = os.path.normpath(impath)
    if os.path.isabs(impath) or norm == ".." or norm.startswith(".." + os.sep) or norm == ".":
        raise DatasetError(
            f"{name}: malformed split file {path}: {where} image path {impath!r} must be relative to the image folder"
        )


def check_images_exist(name: str, image_root: str, impaths: Iterable[str], listed_in: str) -> None:
    """Raise if any listed image is not a file under ``image_root``.

    Reads each directory once (``os.scandir``) instead of one ``stat`` per image: on network filesystems a split
    with 100k entries is checked in the time of a few hundred directory listings.
    """
    listings: dict[str, set[str] | None] = {}
    missing: list[str] = []
    for impath in impaths:
        folder, base = os.path.split(os.path.normpath(impath))
        if folder not in listings:
            try:
                with os.scandir(os.path.join(image_root, folder)) as entries:
                    listings[folder] = {e.name for e in entries if not e.is_dir()}
            except (FileNotFoundError, NotADirectoryError):
                listings[folder] = None
        names = listings[folder]
        if names is None or base not in names:
            missing.append(impath)
    if missing:
        first = os.path.join(image_root, missing[0])
        raise DatasetError(
            f"{name}: {len(missing)} image(s) listed in {listed_in} do not exist under {image_root}; "
            f"first missing: {first}"
        )


def _read_lines(name: str, path: str, what: str) -> list[str]:
    """Lines of a text label file; a missing or non-text file is a one-line DatasetError."""
    if not os.path.isfile(path):
        raise DatasetError(f"{name}: {what} not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except UnicodeDecodeError:
        raise DatasetError(f"{name}: malformed {what} {path}: not UTF-8 text") from None


def _list_files(folder: str) -> list[str]:
    """Non-hidden regular files of ``folder``, sorted (CoOp lists in filesystem order; sorting makes it stable)."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if not e.name.startswith(".") and e.is_file())


def _list_dirs(folder: str) -> list[str]:
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if not e.name.startswith(".") and e.is_dir())


# ----------------------------------------------------------------------------------------------------------------
# CoOp split JSON: {"train": [[impath, label, classname], ...], "val": [...], "test": [...]}


def read_split_json(
    name: str,
    split_path: str,
    image_root: str,
    *,
    renames: Mapping[str, str] | None = None,
    dropped_classes: Sequence[str] = (),
) -> DatasetSplits:
    """Read a CoOp split file (``split_zhou_*.json`` or a custom dataset's ``split.json``).

    Entries whose raw class name, or whose top-level image folder, is in ``dropped_classes`` are skipped (Caltech101's
    BACKGROUND_Google and Faces_easy; CoOp's own file already leaves them out), and the remaining labels are then
    renumbered 0..n-1 in their original order. Without dropped entries the labels must already be exactly 0..n-1.
    Every listed image must exist.
    """
    if not os.path.isfile(split_path):
        raise DatasetError(f"{name}: split file not found: {split_path}")
    try:
        with open(split_path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(
            f"{name}: malformed split file {split_path}: invalid JSON at line {e.lineno}: {e.msg}"
        ) from None
    except UnicodeDecodeError:
        raise DatasetError(f"{name}: malformed split file {split_path}: not UTF-8 text") from None
    if not isinstance(data, dict) or any(not isinstance(data.get(s), list) for s in SPLIT_NAMES):
        raise DatasetError(
            f"{name}: malformed split file {split_path}: expected a JSON object with lists "
            f"'train', 'val' and 'test'"
        )

    renames = renames or {}
    dropped = set(dropped_classes)
    raw: dict[str, list[tuple[str, int, str]]] = {}
    label_to_name: dict[int, str] = {}
    n_dropped = 0
    for split in SPLIT_NAMES:
        rows = []
        for i, entry in enumerate(data[split]):
            where = f"entry {split}[{i}] = {_short(entry)}"
            if not isinstance(entry, (list, tuple)) or len(entry) != 3:
                raise DatasetError(
                    f"{name}: malformed split file {split_path}: {where}: expected [image path, label, class name]"
                )
            impath, label, classname = entry
            if not isinstance(impath, str) or not impath:
                raise DatasetError(f"{name}: malformed split file {split_path}: {where}: image path must be a string")
            if isinstance(label, bool) or not isinstance(label, int) or label < 0:
                raise DatasetError(
                    f"{name}: malformed split file {split_path}: {where}: label must be a non-negative integer"
                )
            if not isinstance(classname, str) or not classname.strip():
                raise DatasetError(f"{name}: malformed split file {split_path}: {where}: class name must be a string")
            _check_relpath(name, split_path, where, impath)
            top_folder = os.path.normpath(impath).split(os.sep)[0]
            if classname.strip() in dropped or top_folder in dropped:
                n_dropped += 1
                continue
            cname = clean_classname(classname, renames)
            known = label_to_name.setdefault(label, cname)
            if known != cname:
                raise DatasetError(
                    f"{name}: malformed split file {split_path}: {where}: label {label} is named {known!r} elsewhere"
                )
            rows.append((impath, label, cname))
        raw[split] = rows

    labels = sorted(label_to_name)
    if n_dropped:
        log.info("%s: skipped %d entries of dropped classes %s", name, n_dropped, sorted(dropped))
    elif labels != list(range(len(labels))):
        gap = next(i for i in range(len(labels) + 1) if i not in label_to_name)
        raise DatasetError(
            f"{name}: malformed split file {split_path}: labels must be 0..n-1, but label {gap} has no entry"
        )
    relabel = {old: new for new, old in enumerate(labels)}
    classnames = [label_to_name[old] for old in labels]
    seen: dict[str, int] = {}
    for i, cname in enumerate(classnames):
        if cname in seen:
            raise DatasetError(
                f"{name}: malformed split file {split_path}: class name {cname!r} is given to labels "
                f"{labels[seen[cname]]} and {labels[i]}"
            )
        seen[cname] = i

    check_images_exist(
        name, image_root, (impath for split in SPLIT_NAMES for impath, _, _ in raw[split]), split_path
    )
    items = {
        split: [Item(impath, relabel[label], cname) for impath, label, cname in raw[split]] for split in SPLIT_NAMES
    }
    return DatasetSplits(
        name=name,
        image_root=os.path.abspath(image_root),
        classnames=classnames,
        train=items["train"],
        val=items["val"],
        test=items["test"],
        split_file=os.path.abspath(split_path),
    )


def read_json_dataset(spec: DatasetSpec, dataset_dir: str) -> DatasetSplits:
    """Reader for the datasets CoOp ships a ``split_zhou_*.json`` for."""
    return read_split_json(
        spec.name,
        os.path.join(dataset_dir, spec.split_file),
        os.path.join(dataset_dir, spec.image_subdir),
        renames=spec.classname_renames,
        dropped_classes=spec.dropped_classes,
    )


# ----------------------------------------------------------------------------------------------------------------
# ImageNet: classnames.txt ("<wnid> <name>" per line) + images/{train,val}/<wnid>/


def read_imagenet_classnames(
    name: str, path: str, renames: Mapping[str, str] | None = None
) -> tuple[list[str], list[str]]:
    """``classnames.txt`` -> (wnids, class names), both in file order (file order defines the 1000 labels)."""
    renames = renames or {}
    wnids: list[str] = []
    names: list[str] = []
    seen: set[str] = set()
    for lineno, line in enumerate(_read_lines(name, path, "class list"), start=1):
        if not line.strip():
            continue
        parts = line.strip().split(maxsplit=1)
        if len(parts) != 2:
            raise DatasetError(
                f"{name}: malformed class list {path}: line {lineno} {_short(line.strip())!r}: "
                f"expected '<wnid> <class name>'"
            )
        if parts[0] in seen:
            raise DatasetError(f"{name}: malformed class list {path}: line {lineno}: wnid {parts[0]} repeated")
        seen.add(parts[0])
        wnids.append(parts[0])
        names.append(clean_classname(parts[1], renames))
    if not wnids:
        raise DatasetError(f"{name}: malformed class list {path}: no classes")
    return wnids, names


def _read_class_folders(
    name: str, image_root: str, subdir: str, folder_to_label: Mapping[str, int], class_list: str
) -> dict[int, list[str]]:
    """``image_root/subdir/<class folder>/<file>`` -> label -> sorted image paths relative to ``image_root``."""
    root = os.path.join(image_root, subdir) if subdir else image_root
    if not os.path.isdir(root):
        raise DatasetError(f"{name}: image folder not found: {root}")
    out: dict[int, list[str]] = {}
    for folder in _list_dirs(root):
        if folder not in folder_to_label:
            raise DatasetError(
                f"{name}: class folder {os.path.join(root, folder)} is not a class of {class_list}"
            )
        rel = os.path.join(subdir, folder) if subdir else folder
        out[folder_to_label[folder]] = [os.path.join(rel, f) for f in _list_files(os.path.join(root, folder))]
    return out


def read_imagenet(spec: DatasetSpec, dataset_dir: str) -> DatasetSplits:
    """ImageNet in CoOp's layout.

    Labels follow the line order of ``classnames.txt`` (CoOp's file is sorted by wnid, so they equal CoOp's sorted
    folder labels). The test split is ``images/val`` (as in CoOp). CoOp has no validation split for ImageNet (it
    reuses the test images); here, so that tuning never looks at test images, the last
    ``spec.val_holdout_per_class`` images of each class of ``images/train`` in sorted file order form ``val`` and are
    left out of ``train``. With ``val_holdout_per_class == 0``, ``train`` is all of ``images/train`` and ``val`` is
    empty. Image lists are sorted by file name per class (CoOp uses filesystem order, which is not reproducible).
    """
    class_list = os.path.join(dataset_dir, spec.split_file)
    image_root = os.path.join(dataset_dir, spec.image_subdir)
    wnids, classnames = read_imagenet_classnames(spec.name, class_list, spec.classname_renames)
    wnid_to_label = {w: i for i, w in enumerate(wnids)}
    splits: dict[str, dict[int, list[str]]] = {}
    for sub in ("train", "val"):
        splits[sub] = _read_class_folders(spec.name, image_root, sub, wnid_to_label, class_list)
        absent = [w for w in wnids if wnid_to_label[w] not in splits[sub]]
        if absent:
            raise DatasetError(
                f"{spec.name}: {len(absent)} class folder(s) of {class_list} missing; first: "
                f"{os.path.join(image_root, sub, absent[0])}"
            )

    hold = spec.val_holdout_per_class
    train: list[Item] = []
    val: list[Item] = []
    for label, cname in enumerate(classnames):
        files = splits["train"][label]
        keep = len(files) - hold if hold > 0 and len(files) > hold else len(files)
        if hold > 0 and len(files) <= hold:
            log.warning("%s: class %s has only %d train images; none held out for val", spec.name, cname, len(files))
        train.extend(Item(p, label, cname) for p in files[:keep])
        val.extend(Item(p, label, cname) for p in files[keep:])
    test = [Item(p, label, classnames[label]) for label in range(len(wnids)) for p in splits["val"][label]]
    return DatasetSplits(
        name=spec.name,
        image_root=os.path.abspath(image_root),
        classnames=classnames,
        train=train,
        val=val,
        test=test,
        split_file=os.path.abspath(class_list),
    )


def read_imagenet_variant(spec: DatasetSpec, dataset_dir: str) -> DatasetSplits:
    """ImageNetV2 / -Sketch / -A / -R: test images only, in class folders under the image folder.

    Class folders are named by wnid, or by the class's line index in ``classnames.txt`` when
    ``spec.class_folders_by_index`` (ImageNetV2's matched-frequency format: folders ``0`` .. ``999``). Files in the
    image folder that are not directories (ImageNet-A's README.txt) are ignored.

    When ``spec.class_subset`` (ImageNet-A and -R, 200 classes each), labels are 0..m-1 over the classes that have a
    folder, in ``classnames.txt`` order, and ``label_to_imagenet`` gives each one's 1000-class index. Otherwise labels
    are the 1000-class indices themselves, and a class without a folder just has no images (logged).
    """
    class_list = os.path.join(dataset_dir, spec.split_file)
    image_root = os.path.join(dataset_dir, spec.image_subdir)
    wnids, classnames = read_imagenet_classnames(spec.name, class_list, spec.classname_renames)
    if spec.class_folders_by_index:
        folder_to_label = {str(i): i for i in range(len(wnids))}
    else:
        folder_to_label = {w: i for i, w in enumerate(wnids)}
    by_label = _read_class_folders(spec.name, image_root, "", folder_to_label, class_list)
    if not by_label:
        raise DatasetError(f"{spec.name}: no class folders in {image_root}")

    label_to_imagenet: list[int] | None = None
    if spec.class_subset:
        label_to_imagenet = sorted(by_label)
        relabel = {old: new for new, old in enumerate(label_to_imagenet)}
        names = [classnames[old] for old in label_to_imagenet]
    else:
        relabel = {i: i for i in range(len(wnids))}
        names = list(classnames)
        if len(by_label) < len(wnids):
            log.warning("%s: %d of %d classes have no folder under %s", spec.name, len(wnids) - len(by_label),
                        len(wnids), image_root)
    test = [Item(p, relabel[old], classnames[old]) for old in sorted(by_label) for p in by_label[old]]
    return DatasetSplits(
        name=spec.name,
        image_root=os.path.abspath(image_root),
        classnames=names,
        train=[],
        val=[],
        test=test,
        split_file=os.path.abspath(class_list),
        label_to_imagenet=label_to_imagenet,
    )


# ----------------------------------------------------------------------------------------------------------------
# FGVCAircraft: variants.txt + images_variant_{train,val,test}.txt ("<image id> <variant>"), images/<id>.jpg


def read_fgvc_aircraft(spec: DatasetSpec, dataset_dir: str) -> DatasetSplits:
    """FGVCAircraft in CoOp's layout: labels follow the line order of ``variants.txt``; the split files
    (``spec.extra_files``, train / val / test in that order) list ``<image id> <variant name>`` per line, and the
    image is ``images/<image id>.jpg``."""
    variants_path = os.path.join(dataset_dir, spec.split_file)
    image_root = os.path.join(dataset_dir, spec.image_subdir)
    raw_names: list[str] = []
    variant_to_label: dict[str, int] = {}
    for lineno, line in enumerate(_read_lines(spec.name, variants_path, "class list"), start=1):
        if not line.strip():
            continue
        if line.strip() in variant_to_label:
            raise DatasetError(
                f"{spec.name}: malformed class list {variants_path}: line {lineno}: {line.strip()!r} repeated"
            )
        variant_to_label[line.strip()] = len(raw_names)
        raw_names.append(line.strip())
    if not raw_names:
        raise DatasetError(f"{spec.name}: malformed class list {variants_path}: no classes")
    classnames = [clean_classname(v, spec.classname_renames) for v in raw_names]

    if len(spec.extra_files) != len(SPLIT_NAMES):
        raise ValueError(f"{spec.name}: spec must name one split file per split {SPLIT_NAMES}")
    items: dict[str, list[Item]] = {}
    for split, fname in zip(SPLIT_NAMES, spec.extra_files):
        path = os.path.join(dataset_dir, fname)
        rows = []
        for lineno, line in enumerate(_read_lines(spec.name, path, "split file"), start=1):
            if not line.strip():
                continue
            parts = line.strip().split(" ", 1)
            if len(parts) != 2 or not parts[1].strip():
                raise DatasetError(
                    f"{spec.name}: malformed split file {path}: line {lineno} {_short(line.strip())!r}: "
                    f"expected '<image id> <variant>'"
                )
            image_id, variant = parts[0], parts[1].strip()
            if variant not in variant_to_label:
                raise DatasetError(
                    f"{spec.name}: malformed split file {path}: line {lineno}: variant {variant!r} "
                    f"is not in {variants_path}"
                )
            impath = image_id + ".jpg"
            _check_relpath(spec.name, path, f"line {lineno}", impath)
            label = variant_to_label[variant]
            rows.append(Item(impath, label, classnames[label]))
        check_images_exist(spec.name, image_root, (it.impath for it in rows), path)
        items[split] = rows
    return DatasetSplits(
        name=spec.name,
        image_root=os.path.abspath(image_root),
        classnames=classnames,
        train=items["train"],
        val=items["val"],
        test=items["test"],
        split_file=os.path.abspath(variants_path),
        split_files=[os.path.abspath(variants_path)]
        + [os.path.abspath(os.path.join(dataset_dir, f)) for f in spec.extra_files],
    )
