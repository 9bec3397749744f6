"""The ``dept-pipeline`` command line: one click group; one module per command group registers its commands here."""
from __future__ import annotations

import logging
import sys

import click

from pipelines.cli import analyze, export, featurize, miniature, report, train, tune, ui, zero_shot
from pipelines.secrets import guard_secrets


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
            click.echo(f"error: {e}", err=True)
            sys.exit(2)


@click.group(cls=OneLineErrors)
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """DePT prompt tuning at scale: featurize once with Ray, tune many trials with Ray Tune, track in MLflow."""
    guard_secrets()  # before MLflow or Ray print anything
    level = logging.WARNING - 10 * min(verbose, 2) if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if verbose < 2:
        # open_clip logs through the root logger; keep its and other libraries' chatter out of command output.
        logging.getLogger().setLevel(logging.WARNING)
        for name in ("dept", "pipelines"):
            logging.getLogger(name).setLevel(level)


# Each command module imports only click at the top (the work is imported when a command runs), so that
# `dept-pipeline --help` stays fast.
for _module in (featurize, train, tune, zero_shot, report, export, ui, miniature, analyze):
    for _command in _module.COMMANDS:
        main.add_command(_command)
