"""What more than one command module shares: the ``--method`` and ``--protocol`` choices, ``--targets``, ``--out``
file handling, and the follow-up commands printed for the user to run (:func:`command_line`)."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
from pathlib import Path

import click

from dept.methods import method_names
from dept.protocols import BASE_TO_NEW, DEFAULT_SOURCE, PROTOCOLS
from pipelines.paths import check_writable_file, write_bytes_atomic
from pipelines.secrets import mask_uri


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
    write_bytes_atomic(path, text.encode())


def feature_store_options(command):
    """``--features`` (store root or model folder) and the ``--model`` / ``--pretrained`` that pick a model folder
    under a root: the same three options for every command that reads the store."""
    command = click.option("--pretrained", default=None,
                           help="With a store root: the weights featurize used (tag, 'shipped', path).")(command)
    command = click.option("--model", default=None,
                           help="With a store root holding several models: the model's name.")(command)
    return click.option("--features", required=True,
                        help="Feature store: featurize's --out (the store root) or the model folder it printed.")(command)


PROGRAM = "dept-pipeline"


def program() -> list[str]:
    """How a shell reaches this very program: ``dept-pipeline`` from an activated virtualenv or a system-wide
    install; else the script's absolute path (e.g. ``.venv/bin/dept-pipeline`` run by scripts/quickstart.sh, whose
    PATH is not the user's shell's); ``python -m pipelines.cli`` with this interpreter when started so."""
    argv0 = sys.argv[0] if sys.argv else ""
    name = os.path.basename(argv0)
    if name == "__main__.py" and os.path.abspath(argv0) == str(Path(__file__).with_name("__main__.py")):
        return [sys.executable, "-m", "pipelines.cli"]
    # called in-process (click's test runner, `python -c`): the script on PATH stands for this program
    script = argv0 if name == PROGRAM and os.path.isfile(argv0) else shutil.which(PROGRAM)
    if script is None:
        return [sys.executable, "-m", "pipelines.cli"]
    return [PROGRAM] if _reached_by_name(script) else [os.path.abspath(script)]


def _reached_by_name(script: str) -> bool:
    """The bare name runs ``script`` in the user's shell: it is the one on PATH, and PATH holds its folder not only
    for this process (a virtualenv is activated, or the install is not in one)."""
    on_path = shutil.which(PROGRAM)
    if not on_path or not os.path.samefile(on_path, script):
        return False
    if sys.prefix == sys.base_prefix:
        return True
    active = os.environ.get("VIRTUAL_ENV")
    return bool(active) and os.path.realpath(active) == os.path.realpath(sys.prefix)


def absolute_uri(value: str) -> str:
    """A relative SQLite URI (``sqlite:///mlflow.db``) made absolute, so that a printed command means the same
    store from any folder; anything else unchanged."""
    prefix = "sqlite:///"
    if value.startswith(prefix) and not value.startswith(prefix + "/") and value != prefix + ":memory:":
        return prefix + os.path.abspath(value[len(prefix):])
    return value


def command_line(*args: object) -> str:
    """A follow-up command as the user can paste it: :func:`program`, then ``args`` with SQLite URIs absolute and
    any password in a URI shown as ``***`` (the user puts it back, or passes it as MLFLOW_TRACKING_PASSWORD)."""
    return shlex.join([*program(), *(mask_uri(absolute_uri(str(a))) for a in args)])


def rerun_line(*flags: str) -> str:
    """This very command line as :func:`command_line` prints it, with ``flags`` added where missing (``--resume``)."""
    args = sys.argv[1:]
    return command_line(*args, *(f for f in flags if f not in args))


#: A command the text tells the user to run ("run `dept-pipeline featurize`", "e.g. `dept-pipeline ...`"), not one
#: it only names ("another `dept-pipeline tune` is running").
_TO_RUN = re.compile(r"(\b(?:run|e\.g\.|through|with:?) )`dept-pipeline(?= |`)")


def as_printed(text: str) -> str:
    """``text`` with each command it tells the user to run (the hints lower layers write, e.g. "run
    `dept-pipeline featurize`") starting with :func:`program` instead, so that it runs as printed."""
    reached = program()
    if reached == [PROGRAM]:
        return text
    return _TO_RUN.sub(lambda m: f"{m.group(1)}`{shlex.join(reached)}", text)
