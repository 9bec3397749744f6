"""The trial logger's per-result MLflow writes, off Tune's event loop.

Tune calls its callbacks in its event loop, before it lets the reporting trial go on: a write there holds up that
trial and every result queued behind it, one after another (with a population of 64, 64 writes an epoch on the
critical path). :class:`ResultWriter` takes the writes of one result (metrics and tags of one run) and sends them
from one thread of its own, in order, every run's pending writes as one ``log_batch``.

Nothing is lost by the delay: the logger flushes before it reads back or ends a run (a trial's end, the end of the
experiment), a write error comes out of the next ``put`` or ``flush`` (as it came out of the callback before), and
a driver killed with writes pending leaves them in Tune's own result files, from which the resumed driver's
reconcile backfills every epoch a run lacks (``MlflowTrialLogger.backfill``).
"""
from __future__ import annotations

import logging
import threading
from typing import Any

from pipelines import benchtimers

log = logging.getLogger(__name__)


class ResultWriter:
    """One thread sending (run id, metrics, tags) writes to a :class:`pipelines.tracking.client.Tracker`."""

    def __init__(self, tracker, *, name: str = "mlflow-result-writer"):
        self.tracker = tracker
        self.name = name
        self._cond = threading.Condition()
        self._pending: list[tuple[str, list, dict[str, Any]]] = []
        self._sending = False
        self._error: BaseException | None = None
        self._closed = False
        self._thread: threading.Thread | None = None  # started by the first put

    def put(self, run_id: str, metrics: list, tags: dict[str, Any] | None = None) -> None:
        """Queue one result's writes (returns at once); raises the error of an earlier write, if one failed."""
        with self._cond:
            self._raise_error()
            if self._closed:
                raise RuntimeError(f"{self.name} is closed")
            self._pending.append((run_id, list(metrics), dict(tags or {})))
            if self._thread is None:
                self._thread = threading.Thread(target=self._send_loop, name=self.name, daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def flush(self) -> None:
        """Wait until every queued write is sent; raises the error of a write that failed."""
        with self._cond:
            while (self._pending or self._sending) and self._error is None:
                self._cond.wait()
            self._raise_error()

    def close(self) -> None:
        """Flush, then end the thread. Never raises (it runs while another error may be on its way out): a write
        that fails here is logged, and is in Tune's result files for the reconcile of a ``--resume``."""
        try:
            self.flush()
        except Exception as e:  # noqa: BLE001
            log.error("%s: MLflow writes not sent: %s", self.name, str(e).splitlines()[0] if str(e) else repr(e))
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()
            if self._thread is not None:
                self._thread.join(timeout=60)

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            self._pending.clear()  # the writer stops at the first error: what follows it is not sent either
            raise error

    def _send_loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    return
                batch, self._pending = self._pending, []
                self._sending = True
            try:
                with benchtimers.timed("mlflow_write", results=len(batch)):  # bench only; no-op otherwise
                    for run_id, metrics, tags in merge_by_run(batch):
                        self.tracker.write(run_id, metrics, tags)
            except BaseException as e:  # noqa: BLE001  (handed to the caller's thread at its next put / flush)
                with self._cond:
                    self._error = e
            finally:
                with self._cond:
                    self._sending = False
                    self._cond.notify_all()


def merge_by_run(batch: list[tuple[str, list, dict]]) -> list[tuple[str, list, dict]]:
    """One (run id, metrics, tags) per run, runs in the order they first come, metrics in order, a later tag value
    over an earlier one (as the writes one by one would leave it)."""
    merged: dict[str, tuple[list, dict]] = {}
    for run_id, metrics, tags in batch:
        m, t = merged.setdefault(run_id, ([], {}))
        m.extend(metrics)
        t.update(tags)
    return [(run_id, m, t) for run_id, (m, t) in merged.items()]
