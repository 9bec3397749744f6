"""Passwords in URIs: masked wherever shown; a basic-auth tracking URI passes the pre-flight check when the server
answers (a real ``mlflow server --app-name basic-auth`` on 127.0.0.1, when MLflow's auth extra is installed)."""
from __future__ import annotations

import base64
import os
import textwrap

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
