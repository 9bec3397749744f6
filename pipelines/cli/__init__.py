"""The ``dept-pipeline`` command line: one click group; one module per command group registers its commands here."""
from __future__ import annotations

import logging
import sys
from importlib.metadata import PackageNotFoundError, version

import click

from pipelines.cli import analyze, export, featurize, miniature, report, train, tune, ui, zero_shot
from pipelines.cli._common import PROGRAM, as_printed
from pipelines.secrets import guard_secrets

log = logging.getLogger(__name__)


def package_version() -> str:
    """The installed distribution's version (pyproject.toml's, as pip recorded it)."""
    try:
        return version(PROGRAM)
    except PackageNotFoundError:  # the source tree on PYTHONPATH without an install
        return "unknown (not installed)"


class OneLineErrors(click.Group):
    """User-caused errors (bad names, paths, files, unreachable servers) end as one line and exit code 2,
    not a traceback. Library code raises ``ValueError`` subclasses for those; anything else is a bug and keeps
    its traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except (ValueError, FileNotFoundError, PermissionError, ConnectionError) as e:
            click.echo(f"error: {as_printed(str(e))}", err=True)
            sys.exit(2)


def log_level(verbose: int, quiet: bool) -> int:
    """The level of dept's and pipelines' log lines: INFO by default, DEBUG with -v, WARNING with -q."""
    if quiet:
        return logging.WARNING
    return logging.DEBUG if verbose else logging.INFO


@click.group(cls=OneLineErrors)
@click.version_option(package_version(), "--version", prog_name=PROGRAM, message="%(prog)s %(version)s",
                      help="Print the installed version and exit.")
@click.option("-v", "--verbose", count=True,
              help="Debug log lines (default: info); -vv also other libraries' debug lines.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors in the log (default: info).")
def main(verbose: int, quiet: bool) -> None:
    """DePT prompt tuning at scale: featurize once with Ray, tune many trials with Ray Tune, track in MLflow."""
    guard_secrets()  # before MLflow or Ray print anything
    if verbose and quiet:
        raise click.UsageError("-v and -q contradict each other; pass one")
    level = log_level(verbose, quiet)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # open_clip logs through the root logger; keep its and other libraries' chatter out of command output (-vv: all).
    logging.getLogger().setLevel(logging.DEBUG if verbose >= 2 else logging.WARNING)
    for name in ("dept", "pipelines"):
        logging.getLogger(name).setLevel(level)
    log.debug("%s %s, Python %s, started as %s", PROGRAM, package_version(), sys.version.split()[0], sys.argv[0])


# Each command module imports only click at the top (the work is imported when a command runs), so that
# `dept-pipeline --help` stays fast.
for _module in (featurize, train, tune, zero_shot, report, export, ui, miniature, analyze):
    for _command in _module.COMMANDS:
        main.add_command(_command)
