"""What more than one command module shares: the ``--method`` and ``--protocol`` choices, ``--targets``, ``--out``
file handling."""
from __future__ import annotations

import os
from pathlib import Path

import click


class MethodChoice(click.Choice):
    """``--method``: the names registered in ``dept.methods.METHODS``, read when a value is checked. Importing
    ``dept`` loads torch (~10 s on a small CPU), so ``--help`` shows METHOD instead of the list; a wrong name is
    answered with the list."""

    name = "method"

    def __init__(self) -> None:
        super().__init__(())

    def get_metavar(self, *args, **kwargs) -> str:
        return "METHOD"

    @property
    def choices(self) -> tuple[str, ...]:
        from dept.methods import METHODS

        return tuple(METHODS)

    @choices.setter
    def choices(self, value) -> None:  # click.Choice.__init__ assigns it; the registry is the only source
        pass


METHOD_CHOICE = MethodChoice()

#: ``--protocol``: dept.datasets.types.PROTOCOLS, spelt out here (importing dept loads torch; ``report`` need not).
PROTOCOL_CHOICE = click.Choice(["base-to-new", "cross-dataset", "domain-generalization"])


def target_names(value: str | None) -> tuple[str, ...]:
    """``--targets A,B``: the names, in order (none: every target featurized)."""
    return tuple(t.strip() for t in (value or "").split(",") if t.strip())


def check_out(out: str | None) -> Path | None:
    """An output file's folder must exist before any work starts."""
    if out is None or out == "-":
        return None
    path = Path(out).expanduser().resolve()
    if not path.parent.is_dir():
        raise click.BadParameter(f"folder {path.parent} does not exist", param_hint="--out")
    return path


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
