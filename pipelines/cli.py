"""The ``dept-pipeline`` command line: one click group; each area registers its commands here."""
from __future__ import annotations

import logging
import sys

import click


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
    level = logging.WARNING - 10 * min(verbose, 2) if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if verbose < 2:
        # open_clip logs through the root logger; keep its and other libraries' chatter out of command output.
        logging.getLogger().setLevel(logging.WARNING)
        for name in ("dept", "pipelines"):
            logging.getLogger(name).setLevel(level)


def _register() -> None:
    from pipelines import cli_featurize, cli_miniature, cli_tune

    for module in (cli_featurize, cli_tune, cli_miniature):
        for command in module.COMMANDS:
            main.add_command(command)


_register()
