"""The miniature: a small CLIP world that this package can pretrain and evaluate end to end on a laptop.

- ``world``: colours, shapes, held-out compositions, caption templates.
- ``render``: vectorised drawing of 32 px scenes (pretraining domain and the shifted downstream domain).
- ``pairs``: the generated image-caption stream for contrastive pretraining.
- ``model``: contrastive loss, exact truncated text forward, zero-shot helpers.
- ``probe``: the zero-shot probe on seen and held-out compositions.
- ``downstream``: the downstream few-shot dataset (class splits ``shared`` / ``disjoint``) and its zero-shot.
- ``transfer``: the transfer suite: a source with all its classes, domain-shifted and disjoint-class targets.
- ``shipped_checkpoint()``: the pretrained ``dept-mini-vit`` weights that ship with the package.

numpy / PIL / torch / open_clip only.
"""
from __future__ import annotations

import json
from pathlib import Path

from dept.miniature.downstream import (
    SPLITS,
    ClassSplit,
    DownstreamConfig,
    MiniatureError,
    class_split,
    write_miniature_dataset,
    zero_shot_base_new,
)
from dept.miniature.model import MODEL_NAME, contrastive_loss, encode_text
from dept.miniature.pairs import PairStream, Tokens, to_model_input
from dept.miniature.probe import Probe, build_probe
from dept.miniature.render import Shift
from dept.miniature.transfer import SUITE, TransferSuiteConfig, write_transfer_suite

ASSETS = Path(__file__).resolve().parent.parent / "assets"
SHIPPED_CHECKPOINT = ASSETS / f"{MODEL_NAME}.safetensors"
SHIPPED_RECORD = ASSETS / f"{MODEL_NAME}.json"


def shipped_checkpoint() -> Path:
    """Path of the pretrained miniature checkpoint shipped with the package (``--pretrained`` accepts it)."""
    if not SHIPPED_CHECKPOINT.is_file():
        raise MiniatureError(f"the shipped miniature checkpoint is missing: {SHIPPED_CHECKPOINT}")
    return SHIPPED_CHECKPOINT


def shipped_record() -> dict:
    """What was recorded when the shipped checkpoint was made: pretraining figures and zero-shot numbers."""
    if not SHIPPED_RECORD.is_file():
        raise MiniatureError(f"the shipped miniature record is missing: {SHIPPED_RECORD}")
    return json.loads(SHIPPED_RECORD.read_text(encoding="utf-8"))


__all__ = [
    "ASSETS", "ClassSplit", "DownstreamConfig", "MODEL_NAME", "MiniatureError", "PairStream", "Probe", "SPLITS",
    "SHIPPED_CHECKPOINT", "SHIPPED_RECORD", "SUITE", "Shift", "Tokens", "TransferSuiteConfig", "build_probe",
    "class_split", "contrastive_loss", "encode_text", "shipped_checkpoint", "shipped_record", "to_model_input",
    "write_miniature_dataset", "write_transfer_suite", "zero_shot_base_new",
]
