"""Who owns an MLflow experiment while a ``tune`` runs: a lease held on the experiment itself.

A file lock in the Tune storage cannot see a second ``tune`` that writes the same MLflow experiment from another
``--storage`` (or another machine, against a shared ``mlflow server``); the experiment is what both share. So the
owner is written as an experiment tag (:data:`~pipelines.vocabulary.TUNE_OWNER_TAG`): host, pid, Tune storage,
start, and an expiry that a heartbeat thread renews while the run lives. A second ``tune`` finding a live lease
stops in one line naming it. A lease nobody renews any more is stale and taken over: at once when its holder ran on
this machine and its process is gone (a killed run resumed where it ran), else when it expires
(``DEPT_TUNE_LEASE_SECONDS``, default 300 s, so a killed driver on another machine blocks for at most that long).

MLflow has no compare-and-swap on tags, so taking a lease is Fischer's protocol: write our claim, wait
:data:`SETTLE_S`, read it back; the last of two simultaneous claims stands, the other sees it and stops. It holds as
long as a claim's read-check-write takes less than :data:`SETTLE_S` (milliseconds against sqlite or a server).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from pipelines.vocabulary import TUNE_OWNER_TAG

log = logging.getLogger(__name__)

LEASE_ENV = "DEPT_TUNE_LEASE_SECONDS"
DEFAULT_TTL_S = 300.0  # longer than an MLflow server restart, which the heartbeats ride out
SETTLE_S = 2.0


def lease_ttl() -> float:
    try:
        return max(10.0, float(os.environ.get(LEASE_ENV, DEFAULT_TTL_S)))
    except ValueError:
        return DEFAULT_TTL_S


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def machine_id() -> str:
    """This machine and pid namespace: host name, kernel boot id and pid namespace (two containers sharing a host
    name and kernel still differ by the last), so that a pid is only judged where it means the same process."""
    try:
        pid_ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pid_ns = ""
    return f"{socket.gethostname()}/{_read_text('/proc/sys/kernel/random/boot_id')}/{pid_ns}"


def process_start(pid: int) -> str:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22): with the pid, one process (a
    pid reused later has another); empty where there is no /proc."""
    stat = _read_text(f"/proc/{pid}/stat")
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else ""


def process_alive(pid: int, started: str) -> bool:
    if started and Path("/proc").is_dir():
        return process_start(pid) == started
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class Owner:
    """The running ``tune`` that holds an experiment."""

    token: str  # this holding (a pid alone may be reused)
    host: str
    pid: int
    machine: str  # machine_id()
    started: str  # process_start(pid)
    storage: str  # its Tune storage, masked
    since: float
    renewed: float
    expires: float

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> "Owner | None":
        try:
            data = json.loads(text or "")
            return cls(**{k: data[k] for k in cls.__dataclass_fields__})
        except (ValueError, TypeError, KeyError):
            return None  # absent, or not ours to read: no owner

    def stale(self, now: float) -> bool:
        if now > self.expires:
            return True
        return self.machine == machine_id() and not process_alive(self.pid, self.started)

    def describe(self, now: float) -> str:
        return (f"pid {self.pid} on {self.host}, Tune storage {self.storage}, since "
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.since))}, lease renewed "
                f"{max(0, now - self.renewed):.0f} s ago, expires in {max(0, self.expires - now):.0f} s")


class LeaseHeld(Exception):
    def __init__(self, owner: Owner):
        super().__init__(owner.describe(time.time()))
        self.owner = owner


class ExperimentLease:
    """The lease of one MLflow experiment for one ``tune`` process: :meth:`acquire`, then renewed every ``ttl/10``
    by a daemon thread until :meth:`release`."""

    def __init__(self, client, experiment_id: str, storage: str, *, ttl: float | None = None,
                 settle: float = SETTLE_S):
        self.client = client
        self.experiment_id = experiment_id
        self.storage = storage
        self.ttl = ttl if ttl is not None else lease_ttl()
        self.settle = settle
        self.token = uuid.uuid4().hex
        self._since = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost_to: Owner | None = None  # set by the heartbeat when another run took the lease over

    # -- the tag ------------------------------------------------------------------------------------------------
    def current(self) -> Owner | None:
        return Owner.from_json(self.client.get_experiment(self.experiment_id).tags.get(TUNE_OWNER_TAG))

    def _mine(self, now: float) -> Owner:
        return Owner(token=self.token, host=socket.gethostname(), pid=os.getpid(), machine=machine_id(),
                     started=process_start(os.getpid()), storage=self.storage, since=self._since, renewed=now,
                     expires=now + self.ttl)

    def _write(self) -> None:
        self.client.set_experiment_tag(self.experiment_id, TUNE_OWNER_TAG, self._mine(time.time()).to_json())

    # -- holding --------------------------------------------------------------------------------------------------
    def acquire(self) -> None:
        """Raises :class:`LeaseHeld` naming the owner when another live ``tune`` holds the experiment."""
        for _ in range(3):
            held = self.current()
            if held is not None and held.token != self.token:
                if not held.stale(time.time()):
                    raise LeaseHeld(held)
                log.info("taking over the stale lease of MLflow experiment %s (%s)", self.experiment_id,
                         held.describe(time.time()))
            self._write()
            time.sleep(self.settle)  # a simultaneous claim lands within this; the last one stands
            back = self.current()
            if back is not None and back.token == self.token:
                self._thread = threading.Thread(target=self._beat, name="dept-tune-lease", daemon=True)
                self._thread.start()
                return
            if back is not None and not back.stale(time.time()):
                raise LeaseHeld(back)
            # Released (or stale) between our claim and the read-back: claim again.
        raise LeaseHeld(back) if back is not None else RuntimeError("the experiment's lease did not hold")

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 10):
            try:
                held = self.current()
                if held is not None and held.token != self.token:
                    if self.lost_to is None or self.lost_to.token != held.token:
                        log.error("MLflow experiment %s: another tune took over this run's lease (%s); this run's "
                                  "renewals failed for longer than the lease lasts", self.experiment_id,
                                  held.describe(time.time()))
                    self.lost_to = held
                    continue
                self._write()
            except Exception as e:  # noqa: BLE001  (MLflow down for a while: the next beat tries again)
                log.debug("lease renewal of MLflow experiment %s failed: %s", self.experiment_id, e)

    def release(self) -> None:
        self._stop.set()
        if self._thread is None:
            return
        self._thread.join(timeout=30)
        self._thread = None
        try:
            held = self.current()
            if held is not None and held.token == self.token:
                self.client.delete_experiment_tag(self.experiment_id, TUNE_OWNER_TAG)
        except Exception as e:  # noqa: BLE001  (left behind, it is stale once this process is gone)
            log.warning("could not release the lease of MLflow experiment %s: %s", self.experiment_id, e)
