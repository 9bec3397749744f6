"""The command line as a user meets it first: ``--version``, the log level flags, a help line on every option,
``python -m pipelines.cli``, and follow-up commands printed so that they run (the program as the shell reaches it,
SQLite URIs absolute, passwords masked)."""
from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import click
import pytest

from pipelines.cli import main
from pipelines.cli._common import PROGRAM, absolute_uri, as_printed, command_line, program
from tests.conftest import REPO

SCRIPT = Path(sys.executable).parent / PROGRAM  # the installed console script of this interpreter


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=cwd or REPO, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def test_version_is_the_installed_distributions():
    out = run_cli("--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{PROGRAM} {version(PROGRAM)}"


def test_verbose_shows_debug_and_quiet_hides_info(tmp_path):
    demo = ["demo-data", "--num-classes", "2", "--train-per-class", "1", "--val-per-class", "1",
            "--test-per-class", "1", "--image-size", "16"]
    info = "INFO dept.datasets.demo: wrote demo dataset"
    debug = f"DEBUG pipelines.cli: {PROGRAM} {version(PROGRAM)}"

    default = run_cli(*demo, "--out", str(tmp_path / "a"))
    assert default.returncode == 0, default.stderr
    assert info in default.stderr and debug not in default.stderr

    verbose = run_cli("-v", *demo, "--out", str(tmp_path / "b"))
    assert verbose.returncode == 0, verbose.stderr
    assert debug in verbose.stderr and info in verbose.stderr

    quiet = run_cli("-q", *demo, "--out", str(tmp_path / "c"))
    assert quiet.returncode == 0, quiet.stderr
    assert "INFO" not in quiet.stderr and "demo dataset written to" in quiet.stdout

    both = run_cli("-v", "-q", *demo, "--out", str(tmp_path / "d"))
    assert both.returncode == 2 and "-v and -q" in both.stderr and not (tmp_path / "d").exists()


def _commands(command: click.Command, path: tuple[str, ...] = (PROGRAM,)):
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _commands(sub, (*path, name))


def test_every_option_of_every_command_has_a_help_line():
    walked = list(_commands(main))
    assert len(walked) > 10 and any(len(p) == 3 for p, _ in walked)  # the walk reaches the nested groups
    missing = [f"{' '.join(path)} {'/'.join(p.opts)}" for path, command in walked for p in command.params
               if isinstance(p, click.Option) and not (p.help or "").strip()]
    assert not missing, "options without help: " + ", ".join(missing)


def test_the_help_walk_finds_an_option_without_help():
    """The check itself: an option planted without help is reported."""
    bare = click.Group("g", commands=[click.Command("c", params=[click.Option(["--x"])])])
    found = [p.opts for _, c in _commands(bare) for p in c.params if not (p.help or "").strip()]
    assert found == [["--x"]]


def test_program_is_the_path_when_path_does_not_reach_it(monkeypatch, tmp_path):
    if not SCRIPT.is_file():
        pytest.skip(f"no {PROGRAM} script beside {sys.executable}")
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "tune"])
    monkeypatch.setenv("PATH", str(tmp_path))  # the venv's bin/ not on PATH
    assert program() == [str(SCRIPT)]
    monkeypatch.setenv("PATH", str(SCRIPT.parent))
    monkeypatch.setenv("VIRTUAL_ENV", sys.prefix)  # activated: the name is enough
    assert program() == [PROGRAM]
    monkeypatch.delenv("VIRTUAL_ENV")  # on PATH for this process only (as scripts/env.sh does): the path
    assert program() == ([str(SCRIPT)] if sys.prefix != sys.base_prefix else [PROGRAM])
    monkeypatch.setattr(sys, "argv", [str(REPO / "pipelines" / "cli" / "__main__.py")])
    assert program() == [sys.executable, "-m", "pipelines.cli"]


def test_command_line_makes_sqlite_absolute_and_masks_passwords(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(REPO / "pipelines" / "cli" / "__main__.py")])
    line = command_line("ui", "--mlflow-uri", "sqlite:///mlflow.db", "--experiment", "a b")
    assert line == (f"{sys.executable} -m pipelines.cli ui --mlflow-uri sqlite:///{tmp_path / 'mlflow.db'} "
                    "--experiment 'a b'")
    assert "s3cret" not in command_line("report", "--mlflow-uri", "https://me:s3cret@mlflow.example.org")
    assert absolute_uri("sqlite:////abs/x.db") == "sqlite:////abs/x.db"
    assert absolute_uri("http://h:5000") == "http://h:5000"
    # hints written by lower layers name the program the same way
    hint = as_printed("no targets; featurize them, e.g. `dept-pipeline featurize --dataset all`")
    assert hint == f"no targets; featurize them, e.g. `{sys.executable} -m pipelines.cli featurize --dataset all`"
    assert as_printed("re-run `dept-pipeline featurize` into a new --out") == (
        f"re-run `{sys.executable} -m pipelines.cli featurize` into a new --out")
    named = "another `dept-pipeline tune` is running experiment 'x'"  # a command named, not one to run
    assert as_printed(named) == named


def test_python_dash_m_runs_the_cli():
    out = run_cli("--help")
    assert out.returncode == 0, out.stderr
    assert "Usage: dept-pipeline" in out.stdout and "featurize" in out.stdout


def test_a_lower_layers_hint_is_printed_runnable(tmp_path):
    """A user error naming a command (the store's "run `dept-pipeline featurize`") names it as this program is
    reached: here ``python -m pipelines.cli``, which then runs."""
    out = run_cli("zero-shot", "--features", str(tmp_path), "--dataset", "x", "--mlflow-uri",
                  f"sqlite:///{tmp_path / 'm.db'}")
    assert out.returncode == 2, out.stderr
    (line,) = out.stderr.strip().splitlines()
    if "`dept-pipeline" not in line and f"`{sys.executable} -m pipelines.cli" not in line:
        pytest.skip(f"this error names no command: {line}")
    assert "`dept-pipeline" not in line, line
    hinted = line.split("`", 2)[1].split()
    assert hinted[:3] == [sys.executable, "-m", "pipelines.cli"]
    assert subprocess.run([*hinted[:4], "--help"], capture_output=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)}).returncode == 0
