"""scripts/: every script parses (``bash -n``), and scripts/env.sh says what the first install is (what, how big,
how long, how to get a CPU-only torch) and takes torch from ``DEPT_TORCH_INDEX_URL`` first, checked by its dry run
(``DEPT_ENV_DRY_RUN=1``: the commands printed, nothing created; no second 6.5 GB virtualenv in a test)."""
from __future__ import annotations

import os
import shlex
import subprocess

import pytest

from tests.conftest import REPO

SCRIPTS = sorted((REPO / "scripts").glob("*.sh"))
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_parses(script):
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def dry_run(tmp_path, **env) -> tuple[list[str], list[list[str]]]:
    """(env.sh's own lines, the commands it would run, split), sourced from another folder."""
    venv = tmp_path / "venv"
    done = subprocess.run(["bash", "-c", f"source {shlex.quote(str(REPO / 'scripts' / 'env.sh'))} && "
                                         'echo "PATH0=${PATH%%:*}"'],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "DEPT_ENV_DRY_RUN": "1", "DEPT_VENV": str(venv), **env})
    assert done.returncode == 0, done.stdout + done.stderr
    assert not venv.exists()  # a dry run creates nothing
    lines = done.stdout.splitlines()
    assert lines[-1] == f"PATH0={venv}/bin"  # the virtualenv's bin/ first on the scripts' PATH
    said = [line for line in lines if line.startswith("env.sh: ")]
    commands = [shlex.split(line.removeprefix("would run: ")) for line in lines if line.startswith("would run: ")]
    return said, commands


def _pip_installs(commands):
    return [c for c in commands if c[1:4] == ["-m", "pip", "install"]]


def test_first_install_says_what_size_and_time_and_shows_pips_progress(tmp_path):
    said, commands = dry_run(tmp_path, DEPT_TORCH_INDEX_URL="")
    text = "\n".join(said)
    assert "6.5 GB" in text and "3-7 min" in text and f"DEPT_TORCH_INDEX_URL={CPU_INDEX}" in text, text
    assert commands[0] == ["python3", "-m", "venv", str(tmp_path / "venv")]
    (pip,) = _pip_installs(commands)  # no torch step without the variable
    assert pip[-2:] == ["-e", "."] and "-q" not in pip and "--progress-bar" in pip, pip
    assert not any("--extra-index-url" in c for c in commands)


def test_torch_index_url_installs_torch_first_from_it(tmp_path):
    said, commands = dry_run(tmp_path, DEPT_TORCH_INDEX_URL=CPU_INDEX, DEPT_EXTRAS="[test]")
    assert any(CPU_INDEX in line for line in said), said
    torch, package = _pip_installs(commands)
    assert torch[torch.index("--extra-index-url") + 1] == CPU_INDEX
    assert [a.split(">")[0] for a in torch if a.startswith("torch")] == ["torch", "torchvision"]
    assert package[-2:] == ["-e", ".[test]"] and "--extra-index-url" not in package


def test_install_page_says_size_time_cpu_torch_and_activation():
    page = (REPO / "docs" / "install.md").read_text()
    for needle in ("6.5 GB", "3-7 min", "DEPT_TORCH_INDEX_URL", CPU_INDEX, "source .venv/bin/activate",
                   ".venv/bin/dept-pipeline", "DEPT_ENV_DRY_RUN"):
        assert needle in page, needle


def test_quickstart_prints_its_ui_command_by_path_with_an_absolute_store():
    """The last lines name the program as found on the script's PATH (env.sh's virtualenv: an absolute path, which
    the user's shell reaches without activating it) and the store by its absolute URI."""
    text = (REPO / "scripts" / "quickstart.sh").read_text()
    tail = text[text.rindex("cat <<MSG"):]
    assert "$(command -v dept-pipeline) ui --mlflow-uri sqlite:///$PWD/mlflow.db" in tail
    assert "source $VENV/bin/activate" in tail
