"""SIGINT (Ctrl-C) and SIGTERM as one clean stop, for every long command (``featurize``, ``tune``): which signal
arrived, and a SIGTERM that takes the path of a Ctrl-C (the CLI prints the command that continues:
``pipelines.cli._common.rerun_line``).

Ray's ``ray.init`` installs a SIGTERM handler that calls ``sys.exit`` wherever the main thread is, which mid-way
through Ray's native calls aborts the process with a C++ stack dump; ``pipelines.ray_runtime.ensure_ray`` puts ours
back after it."""
from __future__ import annotations

import signal
import threading


class StopSignals:
    """SIGTERM made the same clean stop as SIGINT, and which of the two arrived.

    Our SIGTERM handler calls whatever SIGINT handler is current: Ray Tune's during ``Tuner.fit`` (it saves the
    experiment state one last time and returns; a second SIGINT skips that), Python's ``KeyboardInterrupt``
    elsewhere. ``tune_started`` says whether a Tune experiment began (so has state to resume)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.tune_started = False
        self._saved: dict[int, object] = {}

    def record(self, signum: int) -> None:
        """The first signal counts (a second SIGINT only makes the stop quicker)."""
        if self.received is None:
            self.received = signum

    def install(self) -> None:
        """Our SIGTERM handler (``ensure_ray`` keeps it across ``ray.init``). Main thread only."""
        if threading.current_thread() is not threading.main_thread():
            return
        self._saved.setdefault(signal.SIGTERM, signal.getsignal(signal.SIGTERM))
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame) -> None:
        self.record(signum)
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):
            handler(signal.SIGINT, frame)
        else:
            raise KeyboardInterrupt

    _on_sigterm._dept_stop = True  # how ensure_ray tells it from Ray's

    def watch_tune(self) -> None:
        """Called when Tune has just installed its SIGINT handler (the trial logger's ``setup``): wrap it, to know."""
        self.tune_started = True
        if threading.current_thread() is not threading.main_thread():
            return
        tune_handler = signal.getsignal(signal.SIGINT)
        if not callable(tune_handler) or getattr(tune_handler, "_dept_watch", False):
            return

        def on_sigint(signum, frame):
            self.record(signum)
            tune_handler(signum, frame)

        on_sigint._dept_watch = True
        signal.signal(signal.SIGINT, on_sigint)

    def interrupted(self) -> bool:
        return self.received is not None

    def signal_name(self) -> str:
        return signal.Signals(self.received or signal.SIGINT).name

    def exit_status(self) -> int:
        """The shell's convention: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + int(self.received or signal.SIGINT)

    def restore(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, handler in self._saved.items():
            signal.signal(signum, handler)
        self._saved.clear()


