"""The MLflow-side lease of an experiment (pipelines.tracking.lease) on a real SQLite MLflow store: a live owner
refuses a second, however many claim at once only one holds it, the heartbeat renews it, and a stale one (its
process gone on this machine, or expired elsewhere) is taken over instead of blocking for ever."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time

import pytest

from pipelines.tracking.lease import ExperimentLease, LeaseHeld, Owner, machine_id
from pipelines.vocabulary import TUNE_OWNER_TAG


@pytest.fixture
def experiment(tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    return client, client.create_experiment("leased", artifact_location=str(tmp_path / "mlruns"))


def plant(client, experiment_id, **fields) -> Owner:
    now = time.time()
    owner = Owner(**{"token": "planted", "host": "elsewhere", "pid": 4242, "machine": "elsewhere/boot/ns",
                     "started": "", "storage": "/far/tune", "since": now - 60, "renewed": now - 5,
                     "expires": now + 300, **fields})
    client.set_experiment_tag(experiment_id, TUNE_OWNER_TAG, owner.to_json())
    return owner


def test_a_live_lease_refuses_and_names_its_owner(experiment):
    client, exp = experiment
    plant(client, exp)
    lease = ExperimentLease(client, exp, "/here/tune", settle=0.1)
    with pytest.raises(LeaseHeld) as held:
        lease.acquire()
    text = str(held.value)
    assert "\n" not in text and text.startswith("pid 4242 on elsewhere, Tune storage /far/tune, since ")
    assert re.search(r"lease renewed 5 s ago, expires in (299|300) s$", text), text
    assert Owner.from_json(client.get_experiment(exp).tags[TUNE_OWNER_TAG]).token == "planted"  # untouched


def test_stale_leases_are_taken_over(experiment):
    client, exp = experiment
    # Elsewhere, expired: nobody renewed it for longer than it lasts.
    plant(client, exp, expires=time.time() - 1)
    lease = ExperimentLease(client, exp, "/here/tune", settle=0.1)
    lease.acquire()
    assert lease.current().token == lease.token
    lease.release()
    assert TUNE_OWNER_TAG not in client.get_experiment(exp).tags
    # On this machine, not expired, its process gone (a killed run resumed where it ran): at once.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    plant(client, exp, machine=machine_id(), pid=dead.pid)
    lease = ExperimentLease(client, exp, "/here/tune", settle=0.1)
    lease.acquire()
    assert lease.current().pid != dead.pid
    lease.release()
    # On this machine and alive (this very process, another holding): held.
    plant(client, exp, machine=machine_id(), pid=os.getpid())
    with pytest.raises(LeaseHeld):
        ExperimentLease(client, exp, "/here/tune", settle=0.1).acquire()


def test_of_simultaneous_claims_one_holds_and_the_heartbeat_renews_it(experiment):
    client, exp = experiment
    leases = [ExperimentLease(client, exp, f"/storage{i}", ttl=10, settle=1.0) for i in range(3)]
    outcomes: dict[int, str] = {}

    def claim(i):
        try:
            leases[i].acquire()
            outcomes[i] = "held"
        except LeaseHeld as e:
            outcomes[i] = str(e)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    holders = [i for i, o in outcomes.items() if o == "held"]
    assert len(holders) == 1, outcomes
    (winner,) = holders
    for i, text in outcomes.items():  # each other one names a claimant it saw (the last one, or an earlier one)
        if i != winner:
            assert text.startswith("pid ") and "Tune storage /storage" in text and f"/storage{i}," not in text
    first = leases[winner].current()
    time.sleep(2.5)  # the heartbeat renews every ttl / 10 = 1 s
    renewed = leases[winner].current()
    assert renewed.token == first.token and renewed.renewed > first.renewed and renewed.expires > first.expires
    leases[winner].release()
    assert TUNE_OWNER_TAG not in client.get_experiment(exp).tags
