"""A tracking server that applies a write and dies before it answers (the client sees its connection reset): the
Tracker sends create_run and log_inputs again, which MLflow's client does not, and the store ends with one run and
one input, as if nothing had happened. The reset is staged by a loopback relay in front of a real ``mlflow server``:
it passes the chosen request through, lets the server answer, and resets the client's connection instead of
passing the answer on."""
from __future__ import annotations

import select
import socket
import struct
import threading

import pytest

from pipelines.tracking.client import Tracker, log_feature_store_input
from tests.mlflow_server import mlflow_server

pytestmark = pytest.mark.slow


class ResettingRelay:
    """127.0.0.1:<port> -> the server; the first answer to a request whose first line holds ``trigger`` (once
    armed) is dropped and the client's connection reset (RST, as a killed process's socket does)."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.trigger: bytes | None = None
        self.resets = 0
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, path: str) -> None:
        self.trigger = path.encode()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._pump, args=(client,), daemon=True).start()

    def _pump(self, client) -> None:
        # One thread per connection, both directions: the reset must close the socket while no other thread is
        # blocked reading it (a read in progress holds the socket open, and no RST goes out).
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        doomed = False  # this connection carried the triggering request: the server's answer is dropped
        with client, upstream:
            while True:
                ready, _, _ = select.select([client, upstream], [], [])
                if client in ready:
                    data = client.recv(65536)
                    if not data:
                        return
                    if self.trigger is not None and self.trigger in data.split(b"\r\n", 1)[0]:
                        self.trigger, doomed = None, True
                    upstream.sendall(data)
                if upstream in ready:
                    data = upstream.recv(65536)
                    if not data:
                        return
                    if doomed:  # the server has applied the request: reset instead of answering
                        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        self.resets += 1
                        return
                    client.sendall(data)

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def relayed(tmp_path, monkeypatch):
    # Few connect retries: every connection here is accepted, a reset is what is being tested.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")  # a relay that failed to answer fails the test soon
    with mlflow_server(tmp_path) as port:
        relay = ResettingRelay(port)
        try:
            yield relay, Tracker(f"http://127.0.0.1:{relay.port}", "resend"), Tracker(f"http://127.0.0.1:{port}",
                                                                                        "resend")
        finally:
            relay.close()


def test_create_run_and_log_inputs_survive_a_reset_after_the_server_applied_them(relayed):
    relay, tracker, direct = relayed
    tags = {"role": "trial", "dataset": "caltech101", "features_url": "/tmp/features", "feature_fingerprint": "ab12"}

    relay.arm("/runs/create")
    run_id = tracker.create_run("coop lr2.0e-03 s1", tags)
    assert relay.resets == 1
    runs = direct.search("attributes.run_name = 'coop lr2.0e-03 s1'")
    assert [r.info.run_id for r in runs] == [run_id]  # the run the reset request made, not a second one

    relay.arm("/runs/log-inputs")
    log_feature_store_input(tracker, run_id, tags)
    assert relay.resets == 2
    inputs = direct.client.get_run(run_id).inputs.dataset_inputs
    assert [(i.dataset.name, i.dataset.digest) for i in inputs] == [("caltech101", "ab12")]


def test_mlflow_alone_does_not_resend_them(relayed):
    # What the Tracker covers: MLflow's own client gives up on a create_run whose connection reset (else the test
    # above would pass without the Tracker's resend).
    from mlflow.exceptions import MlflowException

    relay, tracker, direct = relayed
    relay.arm("/runs/create")
    with pytest.raises(MlflowException, match="Connection"):
        tracker.client.create_run(tracker.experiment_id, run_name="plain", tags={"role": "trial"})
    assert relay.resets == 1
    assert len(direct.search("attributes.run_name = 'plain'")) == 1  # applied, though the client was told it failed
