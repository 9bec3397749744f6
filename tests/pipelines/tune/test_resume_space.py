"""``--resume`` runs the space that ran: a space file edited since (same name) is refused in one line naming what
changed, before any work; the parent's ``space.yaml`` artifact is the space that ran."""
from __future__ import annotations

import textwrap

import pytest
import yaml
from click.testing import CliRunner

from pipelines.cli import main
from tests.pipelines.tune.test_tune import invoke, runs_of, tune_args

SPACE = """
    params:
      method: coop
      dept: true
      lr: {grid: [0.002]}
      epochs: 1
      warmup_epochs: 0
      n_ctx: 2
      ctx_init: ""
    seeds: [1]
    metric: val_hm
    mode: max
    scheduler: {type: none}
"""


@pytest.mark.slow
def test_resume_refuses_an_edited_space_and_the_parent_records_what_ran(demo_store, tmp_path):
    space = tmp_path / "mine.yaml"
    space.write_text(textwrap.dedent(SPACE))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [str(a) for a in tune_args(demo_store, tmp_path, uri, "edited", "--space", space)]
    assert invoke(*args).exit_code == 0

    space.write_text(textwrap.dedent(SPACE).replace("lr: {grid: [0.002]}", "lr: {grid: [0.002, 0.01]}")
                     .replace("seeds: [1]", "seeds: [1, 2]"))
    r = CliRunner().invoke(main, [*args, "--resume"])
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1, r.output
    line = lines[0]
    assert "--resume: space 'mine' changed since dataset demo was tuned (params.lr, seeds)" in line, line

    client, (parent,) = runs_of(uri, "edited", "tags.role = 'parent'")
    recorded = yaml.safe_load(open(client.download_artifacts(parent.info.run_id, "space.yaml", str(tmp_path))))
    assert recorded["params"]["lr"] == {"grid": [0.002]} and recorded["seeds"] == [1]  # what ran, not the edit
    _, trials = runs_of(uri, "edited", "tags.role = 'trial'")
    assert len(trials) == 1  # nothing of the edited space ran

    space.write_text(textwrap.dedent(SPACE).replace("params:", "description: only the words changed\nparams:"))
    again = invoke(*args, "--resume")  # the same trials: resuming a finished experiment runs nothing new
    assert again.exit_code == 0, again.output
    assert len(runs_of(uri, "edited", "tags.role = 'trial'")[1]) == 1
