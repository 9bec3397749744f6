"""README.md stays true: its Python example runs, and its two top commands name scripts that exist."""
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

README = (REPO / "README.md").read_text()


@pytest.mark.slow
def test_python_api_example_runs(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert blocks, "README.md has no python example"
    for code in blocks:
        out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        assert "hm" in out.stdout.lower()


def test_quickstart_shows_exactly_two_commands_first():
    first_block = re.search(r"```(?:bash|sh)\n(.*?)```", README, flags=re.S).group(1)
    commands = [l for l in first_block.splitlines() if l.strip() and not l.lstrip().startswith("#")]
    assert len(commands) == 2, commands
    for command in commands:
        script = command.split()[1]
        assert (REPO / script).is_file(), script
    ci = (REPO / ".ci/run").read_text()
    assert commands[1].split()[1] in ci, "CI must run README's test command"
