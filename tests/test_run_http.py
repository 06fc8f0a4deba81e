"""`riff run --http 0` as a real daemon: the monitor page answers on loopback only, its
WebSocket takes a command through the same checks as OSC, and the engine's state follows."""

from __future__ import annotations

import json
import re
import signal

import httpx
import pytest
from websockets.sync.client import connect

from tests.riff_process import RiffProcess

pytestmark = pytest.mark.jack


def test_riff_run_http_serves_the_monitor_and_takes_commands(jack_server: str) -> None:
    daemon = RiffProcess("run", "--model", "test-tones", "--tempo", "240", "--bars", "1",
                         "--steps", "2", "--no-connect", "--osc-port", "0",
                         "--client-name", "riff-http-test", "--http", "0")
    try:
        daemon.wait_for(lambda t: "monitor page on http://" in t, timeout=120)
        found = re.search(r"monitor page on http://([\d.]+):(\d+)(/\S*)", daemon.text())
        assert found is not None
        host, port, path = found.group(1), int(found.group(2)), found.group(3)
        assert host == "127.0.0.1"  # loopback unless --http-host says otherwise
        base = f"http://127.0.0.1:{port}"
        page = httpx.get(base + path, timeout=10)
        assert page.status_code == 200 and "<script>" in page.text
        with connect(f"ws://127.0.0.1:{port}{path}/ws", open_timeout=10) as ws:
            hello = json.loads(ws.recv(timeout=10))
            assert hello["type"] == "hello"
            assert any(c["address"] == "/riff/alpha" for c in hello["controls"])
            ws.send(json.dumps({"id": 1, "address": "/riff/alpha", "args": [2.5]}))
            ws.send(json.dumps({"id": 2, "address": "/riff/alpha", "args": [0.625]}))
            replies: dict[int, dict[str, object]] = {}
            while len(replies) < 2:
                msg = json.loads(ws.recv(timeout=10))
                if msg["type"] == "reply":
                    replies[msg["id"]] = msg
        assert not replies[1]["ok"] and replies[2]["ok"]  # out of range: refused, nothing set
        status = httpx.get(base + path + "/status", timeout=10).json()
        assert status["parameters"]["alpha"] == 0.625
    finally:
        code = daemon.finish(signal.SIGTERM)
    assert code == 0, daemon.text()[-3000:]
    assert "Traceback" not in daemon.text()
