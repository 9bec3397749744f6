"""A headless Chromium driven over the Chrome DevTools protocol on a pipe (``--remote-debugging-pipe``: fds 3 and 4,
NUL-separated JSON), so that a check can click like a user without a debugging port or a websocket package."""
from __future__ import annotations

import base64
import fcntl
import json
import os
import queue
import subprocess
import tempfile
import threading
import time

#: Chromium on loopback only: everything but 127.0.0.1 goes to a dead proxy and unresolved names. Scrollbars are
#: shown, as a user has them, so that a check of what fits counts them.
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-extensions", "--proxy-server=http://127.0.0.1:9",
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]


class BrowserError(RuntimeError):
    pass


class Browser:
    """One Chromium with one page of ``width`` x ``height`` CSS pixels and a fresh profile (a first-time user:
    no localStorage, so MLflow's panels open as they do for a new user)."""

    def __init__(self, executable: str, width: int = 1600, height: int = 1000):
        self.width, self.height = width, height
        self._profile = tempfile.TemporaryDirectory(prefix="ui-check-chromium-")
        low_r, self._to_browser = os.pipe()
        self._from_browser, low_w = os.pipe()
        # Above 4, so that placing them on 3 and 4 cannot overwrite one with the other.
        to_browser_r, from_browser_w = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (low_r, low_w))
        os.close(low_r)
        os.close(low_w)
        # Chromium reads fd 3 and writes fd 4: bash (dash takes no fd above 9) puts the ends there, then is Chromium.
        args = [executable, *FLAGS, f"--user-data-dir={self._profile.name}", f"--window-size={width},{height}",
                "--remote-debugging-pipe", "about:blank"]
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$@" 3<&{to_browser_r} 4>&{from_browser_w} {to_browser_r}<&- {from_browser_w}>&-',
             "chromium", *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            pass_fds=(to_browser_r, from_browser_w), start_new_session=True)
        for fd in (to_browser_r, from_browser_w):
            os.close(fd)
        self._next_id = 0
        self._replies: dict[int, queue.Queue] = {}
        self._lock = threading.Lock()
        self.events: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        page = next(t for t in self.send("Target.getTargets")["targetInfos"] if t["type"] == "page")
        self.session = self.send("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
        for domain in ("Page", "Runtime"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    # -- the protocol ---------------------------------------------------------------------------------------------
    def _read(self):
        buffer = b""
        while True:
            try:
                chunk = os.read(self._from_browser, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                for q in list(self._replies.values()):
                    q.put({"error": {"message": "Chromium closed the pipe"}})
                return
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for raw in messages:
                message = json.loads(raw)
                if "id" in message and message["id"] in self._replies:
                    self._replies[message["id"]].put(message)
                else:
                    self.events.put(message)

    def send(self, method: str, session: str | None = None, timeout: float = 60, **params):
        with self._lock:
            self._next_id += 1
            ident = self._next_id
            self._replies[ident] = q = queue.Queue()
            message = {"id": ident, "method": method, "params": params}
            if session:
                message["sessionId"] = session
            os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        try:
            reply = q.get(timeout=timeout)
        except queue.Empty:
            raise BrowserError(f"{method}: no answer from Chromium in {timeout:.0f} s") from None
        finally:
            self._replies.pop(ident, None)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error'].get('message')}")
        return reply.get("result", {})

    def call(self, method: str, **params):
        """A command to the page."""
        return self.send(method, session=self.session, **params)

    # -- what a check does ----------------------------------------------------------------------------------------
    def js(self, expression: str):
        """The value of a JavaScript expression in the page (awaited when it is a promise)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:80]}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def goto(self, url: str) -> None:
        """A new visit: the page is left for about:blank first, so that nothing is found on the page before."""
        self.call("Page.navigate", url="about:blank")
        self.wait_for("location.href === 'about:blank'", 30, "about:blank")
        self.call("Page.navigate", url=url)

    def wait_for(self, expression: str, timeout: float = 60, what: str = ""):
        """Poll ``expression`` until it is truthy; its value, or BrowserError naming ``what`` after ``timeout``."""
        deadline = time.time() + timeout
        while True:
            try:
                value = self.js(expression)
            except BrowserError:
                value = None  # the page is between documents
            if value:
                return value
            if time.time() > deadline:
                raise BrowserError(f"waited {timeout:.0f} s for {what or expression[:80]}")
            time.sleep(0.25)

    def settle(self, quiet: float = 1.5, timeout: float = 30) -> None:
        """Wait until the page's DOM has not changed for ``quiet`` seconds (React has fetched and rendered)."""
        self.js("window.__changes = 0; new MutationObserver(() => window.__changes++)"
                ".observe(document, {subtree: true, childList: true, attributes: true, characterData: true}); 0")
        deadline, last, since = time.time() + timeout, -1, time.time()
        while time.time() < deadline:
            try:
                changes = self.js("window.__changes")
            except BrowserError:
                changes = None
            if changes != last:
                last, since = changes, time.time()
            elif time.time() - since >= quiet:
                return
            time.sleep(0.25)

    def click_at(self, x: float, y: float) -> None:
        """A real left click (mouse moved, pressed and released through Chromium's input pipeline)."""
        self.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def click(self, finder: str, what: str, timeout: float = 60) -> None:
        """Click the centre of the element that the JavaScript expression ``finder`` returns, once it is shown."""
        box = self.wait_for(
            f"(() => {{ const e = {finder}; if (!e) return null; e.scrollIntoView({{block: 'center'}});"
            " const r = e.getBoundingClientRect(); return r.width && r.height ? [r.x + r.width / 2, r.y + r.height / 2]"
            " : null; })()", timeout, what)
        self.click_at(*box)

    def screenshot(self, path: str) -> None:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except BrowserError:
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(timeout=20)
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        self._profile.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
