"""``--precision`` and ``--compile``: how a command's training step runs (``train`` and ``tune`` share them)."""
from __future__ import annotations

import click

from dept.config import COMPILE_MODES, PRECISIONS


def compute_options(command):
    """The training step's precision and compilation (``dept.config.PRECISIONS``, ``COMPILE_MODES``)."""
    command = click.option(
        "--compile", "compile_mode", type=click.Choice(["none", *COMPILE_MODES]), default="none", show_default=True,
        callback=lambda c, p, v: None if v == "none" else v,
        help="torch.compile the training step with this mode (pays on a GPU, after a compile of about a minute; "
             "reduce-overhead adds CUDA graphs).")(command)
    command = click.option(
        "--precision", type=click.Choice(list(PRECISIONS)), default="auto", show_default=True,
        help="Training step precision: bf16 autocast with fp32 master weights, or fp32; auto: bf16 on a GPU, fp32 "
             "on CPU. Scoring is always fp32.")(command)
    return command
