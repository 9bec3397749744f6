"""What more than one command module shares: the ``--method`` and ``--protocol`` choices, ``--targets``, ``--out``
file handling."""
from __future__ import annotations

import os
from pathlib import Path

import click

from dept.methods import method_names
from dept.protocols import BASE_TO_NEW, DEFAULT_SOURCE, PROTOCOLS
from pipelines.paths import check_writable_file


class MethodChoice(click.Choice):
    """``--method``: the method registry's names (``dept.methods.method_names``, read without torch when a value
    is checked); ``--help`` shows METHOD (a method registered at run time is valid too); a wrong name is answered
    with the list."""

    name = "method"

    def __init__(self) -> None:
        super().__init__(())

    def get_metavar(self, *args, **kwargs) -> str:
        return "METHOD"

    @property
    def choices(self) -> tuple[str, ...]:
        return method_names()

    @choices.setter
    def choices(self, value) -> None:  # click.Choice.__init__ assigns it; the registry is the only source
        pass


METHOD_CHOICE = MethodChoice()

#: ``--protocol``: the method library's protocols.
PROTOCOL_CHOICE = click.Choice(list(PROTOCOLS))


def target_names(value: str | None) -> tuple[str, ...]:
    """``--targets A,B``: the names, in order (none: every target featurized)."""
    return tuple(t.strip() for t in (value or "").split(",") if t.strip())


def protocol_dataset(protocol: str, dataset: str | None, source: str | None,
                     targets: str | None) -> tuple[str, tuple[str, ...]]:
    """``train`` and ``tune`` alike: (the dataset a run trains on, the targets asked for): ``--dataset`` under
    base-to-new, ``--source`` (default ImageNet) and ``--targets`` under the transfer protocols; a mix is one line."""
    names = target_names(targets)
    if protocol == BASE_TO_NEW:
        if source or names:
            raise ValueError("--source / --targets are for --protocol cross-dataset or domain-generalization")
        if not dataset:
            raise click.UsageError("Missing option '--dataset' (a dataset in the store, or 'all').")
        return dataset, ()
    if dataset:
        raise ValueError(f"--protocol {protocol} trains on --source (default {DEFAULT_SOURCE}), not --dataset")
    return source or DEFAULT_SOURCE, names


def protocol_options(command):
    """``--protocol``, ``--source`` and ``--targets``: how ``train`` and ``tune`` are told the protocol."""
    command = click.option("--targets", default=None,
                           help="The transfer protocols' targets, comma-separated (default: every one featurized "
                                "for the source).")(command)
    command = click.option("--source", default=None,
                           help=f"The transfer protocols' source dataset (default {DEFAULT_SOURCE}).")(command)
    return click.option("--protocol", type=PROTOCOL_CHOICE, default=BASE_TO_NEW, show_default=True,
                        help="base-to-new per --dataset; or train on all classes of --source and evaluate its "
                             "targets.")(command)


def check_out(out: str | None) -> Path | None:
    """An output file's folder must exist and take files before any work starts."""
    if out is None or out == "-":
        return None
    return check_writable_file(out, "--out")


def write_atomic(path: Path, text: str) -> None:
    """Never leave a half-written file under the final name."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def feature_store_options(command):
    """``--features`` (store root or model folder) and the ``--model`` / ``--pretrained`` that pick a model folder
    under a root: the same three options for every command that reads the store."""
    command = click.option("--pretrained", default=None,
                           help="With a store root: the weights featurize used (tag, 'shipped', path).")(command)
    command = click.option("--model", default=None,
                           help="With a store root holding several models: the model's name.")(command)
    return click.option("--features", required=True,
                        help="Feature store: featurize's --out (the store root) or the model folder it printed.")(command)
