"""Passwords in URIs: masked wherever shown; a basic-auth tracking URI passes the pre-flight check when the server
answers (a real ``mlflow server --app-name basic-auth`` on 127.0.0.1, when MLflow's auth extra is installed)."""
from __future__ import annotations

import base64
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipelines.secrets import mask_uri, split_basic_auth
from tests.mlflow_server import mlflow_server as serve_mlflow


def test_mask_uri_hides_passwords_and_secret_query_values_only():
    assert mask_uri("http://alice:s3cr%40t@mlflow.lab:5000/x") == "http://alice:***@mlflow.lab:5000/x"
    assert mask_uri("https://tok@host/") == "https://tok@host/"  # a user name alone is no secret
    assert mask_uri("s3://bucket/p?X-Amz-Signature=abc&region=eu") == "s3://bucket/p?X-Amz-Signature=***&region=eu"
    for plain in ("sqlite:////tmp/m.db", "/local/path", "http://127.0.0.1:5000", "", None):
        assert mask_uri(plain) == ("" if plain is None else plain)


def test_split_basic_auth_makes_the_header_and_strips_the_credentials():
    bare, headers = split_basic_auth("http://alice:p%3Aw@127.0.0.1:5000/")
    assert bare == "http://127.0.0.1:5000/"
    assert base64.b64decode(headers["Authorization"].split()[1]) == b"alice:p:w"
    assert split_basic_auth("http://127.0.0.1:5000") == ("http://127.0.0.1:5000", {})


def test_errors_never_show_the_password(tmp_path):
    from pipelines.cli import main

    uri = "http://alice:hunter2@127.0.0.1:9"
    for args in (["report", "--mlflow-uri", uri], ["tune", "--features", str(tmp_path), "--dataset", "x",
                                                     "--mlflow-uri", uri]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, result.output
        assert "hunter2" not in result.output and "alice:***@127.0.0.1:9" in result.output


@pytest.fixture()
def auth_server(tmp_path):
    """``mlflow server --app-name basic-auth`` on 127.0.0.1 with its admin account; stopped by its process group."""
    pytest.importorskip("flask_wtf", reason="MLflow's basic-auth app needs mlflow[auth] (Flask-WTF)")
    folder = tmp_path / "server"
    folder.mkdir()
    (folder / "auth.ini").write_text(textwrap.dedent(f"""
        [mlflow]
        default_permission = READ
        database_uri = sqlite:///{folder / 'auth.db'}
        admin_username = admin
        admin_password = not-the-default-9
        authorization_function = mlflow.server.auth:authenticate_request_basic_auth
    """))
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_AUTH_CONFIG_PATH": str(folder / "auth.ini"),
           "MLFLOW_FLASK_SERVER_SECRET_KEY": os.urandom(16).hex()}
    env.pop("MLFLOW_TRACKING_USERNAME", None)
    env.pop("MLFLOW_TRACKING_PASSWORD", None)
    with serve_mlflow(folder, extra_args=("--app-name", "basic-auth"), env=env, answer_is_enough=True) as port:
        yield port


@pytest.mark.slow
def test_basic_auth_tracking_uri_works_and_is_shown_masked(auth_server, monkeypatch):
    from pipelines.cli import main
    from pipelines.tracking.client import Tracker, TrackingError, check_tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    good = f"http://admin:not-the-default-9@127.0.0.1:{auth_server}"
    check_tracking_uri(good)  # the pre-flight check passes with the credentials in the URI
    tracker = Tracker(good, "auth")  # and MLflow's own client writes with them
    run_id = tracker.create_run("r", {"role": "train"})
    tracker.log_values(run_id, {"x": 1.0}, step=0)
    assert tracker.client.get_run(run_id).data.metrics == {"x": 1.0}

    with pytest.raises(TrackingError) as bad:
        check_tracking_uri(f"http://admin:wrong-password@127.0.0.1:{auth_server}")
    assert "wrong-password" not in str(bad.value) and "admin:***@" in str(bad.value)
    result = CliRunner().invoke(main, ["report", "--mlflow-uri", f"http://admin:wrong-password@127.0.0.1:{auth_server}",
                                       "--experiment", "auth"])
    assert result.exit_code != 0 and "wrong-password" not in result.output


def test_mask_text_masks_url_passwords_and_secret_env_values(monkeypatch):
    from pipelines.secrets import mask_text

    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "tok-planted-123")
    text = "at: http://alice:hunter2@h:5000/#/x, token tok-planted-123, ray://x:y@h:1, http://h:5000/a@b"
    assert mask_text(text) == "at: http://alice:***@h:5000/#/x, token ***, ray://x:***@h:1, http://h:5000/a@b"


def _cli(*args):
    return [sys.executable, "-c", "from pipelines.cli import main; main()", *[str(a) for a in args]]


@pytest.mark.slow
def test_planted_credentials_are_in_nothing_tune_train_zero_shot_report_and_export_write(demo_store, ray_cluster,
                                                                                         tmp_path):
    """A password in the tracking URI of a real ``mlflow server`` (one without auth accepts and ignores it), a
    token and an AWS secret in the environment, a secret in a credentials file: none is in any command's stdout or
    stderr, the Tune storage, the outputs, the server's store and artifacts, or any file of the Ray session."""
    from mlflow import MlflowClient

    from tests.pipelines.cluster.real_cluster import files_containing

    secrets = {name: f"planted-{name}-{uuid.uuid4().hex[:12]}" for name in ("uri", "token", "aws", "file")}
    creds = tmp_path / "aws-credentials"  # a token file, where boto3 would read it
    creds.write_text(f"[default]\naws_access_key_id = AKIAPLANTED\naws_secret_access_key = {secrets['file']}\n")
    env = {**os.environ, "MLFLOW_TRACKING_TOKEN": secrets["token"], "AWS_SECRET_ACCESS_KEY": secrets["aws"],
           "AWS_SHARED_CREDENTIALS_FILE": str(creds)}
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"):
        env.pop(name, None)
    server_dir, work = tmp_path / "server", tmp_path / "work"
    server_dir.mkdir()
    work.mkdir()
    outputs = []

    def run(*args) -> str:
        done = subprocess.run(_cli(*args), cwd=work, env=env, capture_output=True, text=True, timeout=900)
        outputs.append((args[0], done.stdout + done.stderr))
        assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
        return done.stdout

    with serve_mlflow(server_dir) as port:
        uri = f"http://alice:{secrets['uri']}@127.0.0.1:{port}"
        run("tune", "--features", demo_store, "--dataset", "demo", "--space", "smoke", "--method", "coop",
            "--num-samples", 1, "--storage", tmp_path / "tune", "--mlflow-uri", uri, "--experiment", "leak",
            "--ray-address", ray_cluster.address)
        trained = run("train", "--features", demo_store, "--dataset", "demo", "--method", "coop", "--epochs", 1,
                      "--out", tmp_path / "train.json", "--mlflow-uri", uri, "--experiment", "leak")
        (run_id,) = [ln.split()[2] for ln in trained.splitlines() if ln.startswith("MLflow run ")]
        run("zero-shot", "--features", demo_store, "--dataset", "demo", "--mlflow-uri", uri, "--experiment", "leak-zs")
        run("report", "--mlflow-uri", uri, "--experiment", "leak")
        run("export", "--run-id", run_id, "--out", tmp_path / "exported", "--mlflow-uri", uri)
        client = MlflowClient(f"http://127.0.0.1:{port}")
        roles = [r.data.tags.get("role") for r in
                 client.search_runs([client.get_experiment_by_name("leak").experiment_id])]
        assert roles.count("trial") == 2 and roles.count("parent") == 1 and roles.count("train") == 1, roles

    assert {name for name, _ in outputs} == {"tune", "train", "zero-shot", "report", "export"}
    assert "alice:***@127.0.0.1" in outputs[0][1]  # the URI is shown, masked
    assert (server_dir / "mlartifacts").is_dir() and (tmp_path / "exported").is_dir()  # there were records to search
    session = Path(ray_cluster.head_node.get_session_dir_path())
    assert files_containing(tmp_path, secrets["file"]) == ["aws-credentials"]  # the search finds a planted secret
    for name, secret in secrets.items():
        for command, text in outputs:
            assert secret not in text, (name, command)
        assert not [p for p in files_containing(tmp_path, secret) if p != "aws-credentials"], name
        assert files_containing(session, secret) == [], name
    assert not [command for command, text in outputs if "View run" in text]  # MLflow's run links are off
