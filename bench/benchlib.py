"""Small helpers shared by the bench scripts (run as ``python bench/<script>.py``, so this is importable)."""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from PIL import Image

from dept.datasets.demo import write_demo_dataset


def machine_line() -> str:
    import torch

    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"load average {load}")


def write_jpeg_dataset(out: Path, *, num_classes: int, train_per_class: int, val_per_class: int,
                       test_per_class: int, side: int, seed: int = 0, quality: int = 90) -> Path:
    """A custom-layout dataset (``out/split.json`` + ``out/images/``) of the demo's generated drawings saved as
    JPEG, like the benchmark datasets' photos (the demo itself writes PNG, whose decoding costs differ)."""
    out = Path(out)
    src = write_demo_dataset(out.parent / f".{out.name}-png", num_classes=num_classes,
                             train_per_class=train_per_class, val_per_class=val_per_class,
                             test_per_class=test_per_class, image_size=side, seed=seed)
    split = json.loads((src / "split.json").read_text())
    (out / "images").mkdir(parents=True, exist_ok=True)
    new_split = {}
    for name, rows in split.items():
        new_rows = []
        for impath, label, classname in rows:
            jpg = str(Path(impath).with_suffix(".jpg"))
            dst = out / "images" / jpg
            dst.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(src / "images" / impath) as im:
                im.convert("RGB").save(dst, quality=quality)
            new_rows.append([jpg, label, classname])
        new_split[name] = new_rows
    (out / "split.json").write_text(json.dumps(new_split))
    return out
