"""A real headless Chromium driven over the DevTools protocol (CDP), for page tests.

No browser download and no driver: the system's ``chromium`` (Debian's package; ``.ci/run``
installs it through ``scripts/setup``) starts with ``--remote-debugging-port=0``, writes the
port it picked to ``DevToolsActivePort`` in its profile folder, and the test speaks CDP over a
WebSocket to its first tab (``websockets``, which the web side already depends on):
``Page.navigate`` and ``Runtime.evaluate`` are all the tests need.

Every wait is bounded; :meth:`Browser.close` ends the browser it started.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect

START_TIMEOUT_S = 15.0


def find_chromium() -> str | None:
    """The path of an installed Chromium (or Chrome), or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """One headless browser with one tab; use as a context manager."""

    def __init__(self, executable: str, profile: Path) -> None:
        profile.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [executable, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--no-default-browser-check", "--disable-extensions", "--mute-audio",
             "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._ids = itertools.count(1)
        self._stack = contextlib.ExitStack()
        self.ws: ClientConnection | None = None
        try:
            port = self._port(profile / "DevToolsActivePort")
            tabs = self._tabs(port)
            self.ws = self._stack.enter_context(connect(
                tabs[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=START_TIMEOUT_S))
        except BaseException:
            self.close()
            raise

    def _port(self, path: Path) -> int:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.proc.returncode} at start")
            if path.exists():
                first = path.read_text().split("\n", 1)[0].strip()
                if first.isdigit():
                    return int(first)
            time.sleep(0.05)
        raise TimeoutError(f"chromium wrote no {path.name} within {START_TIMEOUT_S} s")

    @staticmethod
    def _tabs(port: int) -> list[dict[str, Any]]:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            tabs = [t for t in httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=5).json()
                    if t.get("type") == "page"]
            if tabs:
                return tabs
            if time.monotonic() > deadline:
                raise TimeoutError("chromium opened no tab")
            time.sleep(0.05)

    def call(self, method: str, params: dict[str, Any] | None = None,
             timeout: float = 10.0) -> dict[str, Any]:
        """One CDP command; returns its result (events in between are skipped)."""
        assert self.ws is not None
        ident = next(self._ids)
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params or {}}))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer to {method} within {timeout} s")
            message = json.loads(self.ws.recv(timeout=left))
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message["result"]
                return result

    def navigate(self, url: str) -> None:
        """Open ``url`` in the tab and wait until its document has loaded."""
        self.call("Page.navigate", {"url": url})
        self.wait_for(f"location.href === {json.dumps(url)} && "
                      "document.readyState === 'complete'")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-able values only)."""
        result = self.call("Runtime.evaluate", {"expression": expression,
                                                "returnByValue": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 10.0) -> Any:
        """Evaluate ``expression`` until it is truthy; returns that value (fails after
        ``timeout`` with the last value)."""
        deadline = time.monotonic() + timeout
        value: Any = None
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"{expression} stayed {value!r} for {timeout} s")

    def close(self) -> None:
        """Close the connection and end the browser."""
        self.ws = None
        self._stack.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
