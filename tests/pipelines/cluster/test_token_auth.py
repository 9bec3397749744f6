"""Joining a Ray cluster with token authentication (what ``ray start --head`` sets up in Ray 2.60 when a token
exists): with the cluster's token where Ray looks and ``RAY_AUTH_MODE=token`` the driver joins; without the mode, or
with another token, the command ends in one line naming ``RAY_AUTH_MODE`` and ``RAY_AUTH_TOKEN_PATH`` (not a minute
of ``InvalidAuthToken`` warnings, then "cannot connect"). A real ``ray start --head`` on
127.0.0.1 in a private temp dir (tests/pipelines/cluster/real_cluster.py)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dept.datasets import write_demo_dataset
from tests.conftest import REPO, TINY_MODEL
from tests.pipelines.cluster.real_cluster import ray_start_cluster

AUTH_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")


def _featurize(data, out, checkpoint, env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "featurize", "--dataset-dir", str(data), "--out", str(out),
         "--model", TINY_MODEL, "--pretrained", str(checkpoint), "--views", "1", "--shots", "1", "--seeds", "1",
         "--batch-size", "8", "--no-progress"],
        env=env, capture_output=True, text=True, timeout=600)


def _one_error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-3000:]
    assert "InvalidAuthToken" not in done.stderr and "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, done.stderr[-3000:]
    return lines[0]


@pytest.mark.slow
def test_token_auth_cluster_one_line_when_refused_joins_with_its_token(tmp_path, tiny_clip_checkpoint):
    data = write_demo_dataset(tmp_path / "demo", num_classes=2, train_per_class=2, val_per_class=1,
                              test_per_class=1, image_size=32)
    home = tmp_path / "home"  # the default token file lives in HOME: not this machine's user's
    home.mkdir()
    base = {k: v for k, v in os.environ.items() if k not in AUTH_ENV}
    base.update(PYTHONPATH=str(REPO), HOME=str(home))
    with ray_start_cluster(base, [{}], num_cpus=2) as cluster:
        token = open(cluster.env["RAY_AUTH_TOKEN_PATH"]).read().strip()
        client = {**base, "RAY_ADDRESS": cluster.gcs_address}

        # The cluster's token is in ~/.ray/auth_token, but Ray sends none to an address it was given without the mode.
        (home / ".ray").mkdir()
        (home / ".ray" / "auth_token").write_text(token)
        line = _one_error_line(_featurize(data, tmp_path / "s1", tiny_clip_checkpoint, client))
        assert "uses token authentication" in line and "RAY_AUTH_MODE=token" in line, line
        assert "RAY_AUTH_TOKEN_PATH" in line and cluster.gcs_address in line and "$RAY_ADDRESS" in line, line

        # Another cluster's token: refused, said so, naming where that token came from.
        wrong = _one_error_line(_featurize(data, tmp_path / "s2", tiny_clip_checkpoint,
                                           {**client, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}))
        assert "refused the token from $RAY_AUTH_TOKEN" in wrong and "RAY_AUTH_TOKEN_PATH" in wrong, wrong

        # The mode, and no token anywhere Ray looks.
        (home / ".ray" / "auth_token").unlink()
        missing = _one_error_line(_featurize(data, tmp_path / "s3", tiny_clip_checkpoint,
                                             {**client, "RAY_AUTH_MODE": "token"}))
        assert "no token found" in missing and "RAY_AUTH_TOKEN_PATH" in missing, missing
        # Each refusal came before featurize wrote anything (its plan, manifest or lock).
        for refused in ("s1", "s2", "s3"):
            assert not [p for p in (tmp_path / refused).rglob("*") if p.is_file()], refused

        # The mode and the cluster's token (here by RAY_AUTH_TOKEN_PATH): it joins and featurizes on the cluster.
        joined = _featurize(data, tmp_path / "s4", tiny_clip_checkpoint,
                            {**client, "RAY_AUTH_MODE": "token",
                             "RAY_AUTH_TOKEN_PATH": cluster.env["RAY_AUTH_TOKEN_PATH"]})
        assert joined.returncode == 0, joined.stdout[-2000:] + joined.stderr[-3000:]
        assert f"joining the Ray cluster at {cluster.gcs_address}" in joined.stderr
        assert "features: " in joined.stdout and "InvalidAuthToken" not in joined.stderr


def test_token_source_follows_rays_order(monkeypatch, tmp_path):
    from pipelines.ray_runtime import token_source

    for name in AUTH_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert token_source() == (None, "")
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-home\n")
    assert token_source() == ("from-home", "~/.ray/auth_token")
    named = tmp_path / "lab-token"
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(named))
    assert token_source() == (None, "")  # set, it is the only file Ray reads: missing means no token
    named.write_text("from-path")
    assert token_source() == ("from-path", f"$RAY_AUTH_TOKEN_PATH ({named})")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert token_source() == ("from-env", "$RAY_AUTH_TOKEN")


def test_token_mode_without_a_token_is_one_line_before_any_connection(monkeypatch, tmp_path):
    from pipelines.ray_runtime import RayAuthError, check_ray_auth

    for name in AUTH_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    with pytest.raises(RayAuthError, match=r"RAY_AUTH_MODE=token but no token found .*RAY_AUTH_TOKEN_PATH"):
        check_ray_auth("127.0.0.1:9", "--ray-address")  # port 9: nothing listens; the check stops before
    check_ray_auth("ray://127.0.0.1:10001", "--ray-address")  # Ray Client addresses are left to ray.init
    assert issubclass(RayAuthError, ConnectionError)  # the CLI's one-line errors catch it
