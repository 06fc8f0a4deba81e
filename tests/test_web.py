"""OSCQuery, mDNS advertising and the monitor page of ``riff run``, over real sockets.

The surfaces start as ``riff run`` starts them (``start_control_surfaces`` with OSC and the
web side on ephemeral ports); requests go over real HTTP (httpx), the page's feed and commands
over a real WebSocket (websockets' client, and a real headless Chromium where one is
installed), changes over real OSC UDP.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from engine.errors import InvalidRequest
from engine.live.control import Engine
from engine.live.state import PARAMETERS
from protocols.osc.server import OscConfig
from protocols.surfaces import ControlConfig, ControlSurfaces, start_control_surfaces
from protocols.web.advertise import OSCQUERY_TYPE, advertised_addresses, is_loopback
from protocols.web.server import WebConfig
from tests.control_surface_helpers import Client, EngineDouble, LoopThread
from tests.engine_fakes import FakeClock, FakeGenerator, FakeSink
from tests.headless_browser import Browser, find_chromium


class Rig:
    """Surfaces (OSC + web) over ``engine`` on a loop thread."""

    def __init__(self, engine: Any, tmp_path: Path, web: WebConfig) -> None:
        self.lt = LoopThread()
        self.engine = engine
        config = ControlConfig(osc=OscConfig(host=web.host, port=0), web=web,
                               preset_dirs=(tmp_path,), check_image_ids=False)

        async def start() -> ControlSurfaces:
            return await start_control_surfaces(engine, config)

        self.surfaces = self.lt.run(start())
        assert self.surfaces.web is not None and self.surfaces.osc is not None
        host, port = self.surfaces.web.address
        self.base = f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}"
        self.osc = Client(("127.0.0.1", self.surfaces.osc.address[1]))

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.base + path, timeout=10)

    def close(self) -> None:
        self.osc.close()
        self.lt.run(self.surfaces.close())
        self.lt.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(EngineDouble(), tmp_path, WebConfig(port=0))
    try:
        yield r
    finally:
        r.close()


def test_oscquery_namespace_types_ranges_and_live_values(rig: Rig) -> None:
    root = rig.get("/")
    assert root.status_code == 200 and root.headers["content-type"] == "application/json"
    tree = root.json()
    assert tree["FULL_PATH"] == "/" and "riff" in tree["CONTENTS"]
    riff = tree["CONTENTS"]["riff"]["CONTENTS"]
    alpha = riff["alpha"]
    assert alpha["FULL_PATH"] == "/riff/alpha" and alpha["TYPE"] == "f"
    assert alpha["RANGE"] == [{"MIN": 0.0, "MAX": 1.0}] and alpha["ACCESS"] == 3
    assert alpha["VALUE"] == [0.0] and alpha["DESCRIPTION"]
    # A method that is also a container, ints, int64 seeds, strings, bools, actions, status.
    assert alpha["CONTENTS"]["auto"]["TYPE"] == "T"
    assert riff["steps"]["TYPE"] == "i" and riff["steps"]["RANGE"] == [{"MIN": 1, "MAX": 150}]
    assert riff["seed"]["TYPE"] == "h" and riff["seed"]["CONTENTS"]["b"]["TYPE"] == "h"
    assert riff["prompt"]["TYPE"] == "s" and "RANGE" not in riff["prompt"]
    assert riff["play"]["ACCESS"] == 2 and "TYPE" not in riff["play"]
    assert riff["preset"]["CONTENTS"]["save"]["TYPE"] == "s"
    assert riff["status"]["CONTENTS"]["queue"]["ACCESS"] == 1
    # A change over OSC is in the next GET, as a subtree and as one attribute.
    rig.osc.send("/riff/alpha", 0.75)
    rig.osc.messages_until_pong()
    assert rig.get("/riff/alpha").json()["VALUE"] == [0.75]
    assert rig.get("/riff/alpha?VALUE").json() == {"VALUE": [0.75]}
    assert rig.get("/riff/prompt?TYPE").json() == {"TYPE": "s"}
    rig.engine.status_values["queue"] = 3
    assert rig.get("/riff/status/queue?VALUE").json() == {"VALUE": [3]}
    # Errors: unknown path 404, absent attribute 204, unknown attribute 400.
    assert rig.get("/riff/nothing").status_code == 404
    assert rig.get("/riff/prompt?RANGE").status_code == 204
    assert rig.get("/riff/alpha?BOGUS").status_code == 400


def test_host_info_names_the_osc_port(rig: Rig) -> None:
    info = rig.get("/?HOST_INFO").json()
    assert rig.surfaces.osc is not None
    assert info["OSC_PORT"] == rig.surfaces.osc.address[1]
    assert info["OSC_IP"] == "127.0.0.1" and info["OSC_TRANSPORT"] == "UDP"
    assert info["EXTENSIONS"]["VALUE"] is True and info["EXTENSIONS"]["RANGE"] is True
    assert info["NAME"].startswith("riff on ")


def test_http_edges(rig: Rig) -> None:
    assert httpx.head(rig.base + "/riff/alpha").content == b""
    assert httpx.post(rig.base + "/riff/alpha", content=b"x").status_code == 405
    # Keep-alive: several requests on one connection.
    with httpx.Client() as client:
        for _ in range(3):
            assert client.get(rig.base + "/riff/tempo?VALUE").json() == {"VALUE": [120.0]}
    # Garbage closes the connection with a 400 and the server goes on.
    host, port = rig.base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"NONSENSE\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 400")
    assert rig.get("/").status_code == 200


def test_loopback_is_never_advertised() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0")
    assert WebConfig(port=0).advertise  # on by default, but start_web skips loopback hosts


def _has_lan_address() -> bool:
    return bool(advertised_addresses("0.0.0.0"))


@pytest.mark.skipif(not _has_lan_address(), reason="no non-loopback IPv4 interface to "
                    "advertise on")
def test_zeroconf_advertises_oscquery(tmp_path: Path) -> None:
    from zeroconf import ServiceBrowser, ServiceListener, Zeroconf

    name = f"riff test {os.getpid()}"
    rig = Rig(EngineDouble(), tmp_path, WebConfig(host="0.0.0.0", port=0, name=name))
    found: dict[str, Any] = {}
    seen = threading.Event()

    class Listener(ServiceListener):
        def add_service(self, zc: Zeroconf, type_: str, service: str) -> None:
            if service.startswith(name):
                info = zc.get_service_info(type_, service, timeout=3000)
                if info is not None:
                    found["port"] = info.port
                    found["addresses"] = info.parsed_addresses()
                    seen.set()

        def update_service(self, zc: Zeroconf, type_: str, service: str) -> None:
            self.add_service(zc, type_, service)

        def remove_service(self, zc: Zeroconf, type_: str, service: str) -> None:
            pass

    zc = Zeroconf()
    try:
        assert rig.surfaces.web is not None
        if rig.surfaces.web.advertiser is None:
            pytest.skip("zeroconf could not start here (no multicast); see the log")
        ServiceBrowser(zc, OSCQUERY_TYPE, Listener())
        if not seen.wait(10):
            pytest.skip("no mDNS answer came back on this network (multicast loopback off)")
        assert found["port"] == rig.surfaces.web.address[1]
        assert set(found["addresses"]) & set(advertised_addresses("0.0.0.0"))
    finally:
        zc.close()
        rig.close()


def test_no_advertise_flag_and_loopback_host(tmp_path: Path) -> None:
    rig = Rig(EngineDouble(), tmp_path, WebConfig(port=0))
    try:
        assert rig.surfaces.web is not None and rig.surfaces.web.advertiser is None
    finally:
        rig.close()


def test_cli_options_build_the_web_config() -> None:
    import argparse

    from protocols.surfaces import add_control_arguments, control_config_from_args

    parser = argparse.ArgumentParser()
    add_control_arguments(parser)
    assert control_config_from_args(parser.parse_args([])).web is None
    config = control_config_from_args(parser.parse_args(
        ["--osc-host", "0.0.0.0", "--oscquery-port", "9123", "--no-oscquery-advertise"]))
    assert config.web == WebConfig(host="0.0.0.0", port=9123, advertise=False)
    # --http: loopback unless --http-host says otherwise, whatever --osc-host is.
    config = control_config_from_args(parser.parse_args(
        ["--osc-host", "0.0.0.0", "--osc-allow", "10.0.0.0/8", "--http", "8080"]))
    assert config.web == WebConfig(host="127.0.0.1", port=8080, allow=("10.0.0.0/8",))
    config = control_config_from_args(parser.parse_args(
        ["--http", "8080", "--http-host", "0.0.0.0"]))
    assert config.web is not None and config.web.host == "0.0.0.0"
    config = control_config_from_args(parser.parse_args(
        ["--osc-host", "0.0.0.0", "--oscquery-port", "9123", "--http-host", "127.0.0.1"]))
    assert config.web is not None and config.web.host == "127.0.0.1"
    with pytest.raises(InvalidRequest, match="one server"):
        control_config_from_args(parser.parse_args(["--http", "8080", "--oscquery-port", "9"]))


# -- the monitor page ------------------------------------------------------------------------


@pytest.fixture
def playing(tmp_path: Path) -> Iterator[tuple[Rig, Engine, FakeClock]]:
    """The real engine facade (scheduler, planner, transport) with a GPU-less generator."""
    clock = FakeClock()
    engine = Engine(FakeGenerator(clock), FakeSink(clock, 48000), sample_rate=48000,
                    clock=clock)
    rig = Rig(engine, tmp_path, WebConfig(port=0))
    task = rig.lt.run(_start(engine))
    try:
        yield rig, engine, clock
    finally:
        rig.lt.run(engine.close())
        task.cancel()
        rig.close()


async def _start(engine: Engine) -> asyncio.Task[None]:
    return asyncio.ensure_future(engine.run())


def test_monitor_page_and_status(playing: tuple[Rig, Engine, FakeClock]) -> None:
    rig, engine, clock = playing
    page = rig.get("/monitor")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/monitor/ws" in page.text and "<script>" in page.text
    before = rig.get("/monitor/status").json()
    assert before["status"]["bar"] == -1 and before["timeline"]["playing"] is None
    rig.osc.send("/riff/prompt", "monitor test")
    rig.osc.send("/riff/play")
    rig.osc.messages_until_pong()
    rig.lt.run(clock.run_until(lambda: engine.scheduler.timeline()["playing"] is not None,
                               60, 0.05))
    doc = rig.get("/monitor/status").json()
    playing_clip = doc["timeline"]["playing"]
    assert playing_clip["prompt_b"] == "monitor test" or playing_clip["prompt"]
    assert playing_clip["duration_s"] > 0 and playing_clip["generation_s"] >= 0
    assert doc["status"]["bar"] >= 0 and doc["status"]["tempo"] == 120.0
    assert doc["parameters"]["prompt"] == "monitor test"
    assert doc["gpu"]["keeping_up"] in (True, False) and doc["gpu"]["ratio"] is not None
    assert all({"start_bar", "ready", "progress", "prompt"} <= set(c)
               for c in doc["timeline"]["upcoming"])
    assert doc["beat"] is not None and 0 <= doc["beat"] < 4


# -- the WebSocket: live document and commands -------------------------------------------


def _socket(rig: Rig, origin: str | None = None) -> ClientConnection:
    url = rig.base.replace("http://", "ws://") + "/monitor/ws"
    return connect(url, origin=origin, open_timeout=10)  # type: ignore[arg-type]


def _until(ws: ClientConnection, kind: str) -> dict[str, Any]:
    """The next message of ``kind`` (pushes in between are skipped)."""
    while True:
        message = json.loads(ws.recv(timeout=10))
        if message["type"] == kind:
            return message


def _command(ws: ClientConnection, ident: int, address: str, *args: Any) -> dict[str, Any]:
    ws.send(json.dumps({"id": ident, "address": address, "args": list(args)}))
    reply = _until(ws, "reply")
    assert reply["id"] == ident
    return reply


def test_websocket_hello_lists_every_parameter_with_its_range(rig: Rig) -> None:
    with _socket(rig) as ws:
        hello = json.loads(ws.recv(timeout=10))
        assert hello["type"] == "hello"
        controls = {c["name"]: c for c in hello["controls"]}
        assert list(controls) == list(PARAMETERS)
        for name, spec in PARAMETERS.items():
            assert controls[name]["address"] == spec.address
            if spec.kind in ("int", "float"):
                assert (controls[name]["min"], controls[name]["max"]) == (spec.lo, spec.hi)
        assert controls["alpha"]["widget"] == "slider" and controls["alpha"]["type"] == "f"
        assert controls["steps"]["widget"] == "slider" and controls["steps"]["step"] == 1
        assert controls["seed"]["widget"] == "number"  # 0..2**32-1 is no slider
        assert controls["alpha_auto"]["widget"] == "toggle"
        assert controls["prompt"]["widget"] == "text"
        first = _until(ws, "status")
        assert first["parameters"]["alpha"] == 0.0 and "status" in first


def test_websocket_commands_take_the_osc_path(rig: Rig) -> None:
    state = rig.engine.state
    with _socket(rig) as ws:
        assert _command(ws, 1, "/riff/alpha", 0.3) == {"type": "reply", "id": 1, "ok": True,
                                                      "errors": []}
        assert rig.lt.call(lambda: state.snapshot()["alpha"]) == 0.3
        # The next push carries the change.
        while _until(ws, "status")["parameters"]["alpha"] != 0.3:
            pass
        assert _command(ws, 2, "/riff/prompt", "from the page")["ok"]
        assert _command(ws, 3, "/riff/alpha/auto", False)["ok"]
        assert rig.lt.call(lambda: state.snapshot()["prompt"]) == "from the page"
        assert rig.lt.call(lambda: state.snapshot()["alpha_auto"]) is False
        assert _command(ws, 4, "/riff/play")["ok"] and rig.engine.plays == 1
        assert _command(ws, 5, "/riff/stop", 0)["ok"] and rig.engine.stops == 0  # a release
        assert _command(ws, 6, "/riff/stop")["ok"] and rig.engine.stops == 1


def test_websocket_bad_values_are_refused_with_osc_reasons_and_change_nothing(
        rig: Rig) -> None:
    state = rig.engine.state
    before = rig.lt.call(lambda: dict(state.snapshot()))
    # What OSC answers for the same out-of-range value.
    rig.osc.send("/riff/alpha", 2.0)
    osc_errors = [args for address, args in rig.osc.messages_until_pong()
                  if address == "/riff/error"]
    assert osc_errors and osc_errors[0][0] == "/riff/alpha"
    with _socket(rig) as ws:
        reply = _command(ws, 1, "/riff/alpha", 2.0)
        assert reply["ok"] is False
        assert reply["errors"] == [{"address": "/riff/alpha", "reason": osc_errors[0][1]}]
        assert "between 0 and 1" in reply["errors"][0]["reason"]
        for ident, address, args, words in (
                (2, "/riff/alpha", ["loud"], "takes a number"),
                (3, "/riff/prompt", [""], "must not be empty"),
                (4, "/riff/steps", [2.5], "integer"),
                (5, "/riff/alpha", [0.1, 0.2], "1 argument"),
                (6, "/riff/preset/save", ["x"], "not open to the monitor page"),
                (7, "/riff/nothing", [1], "not open to the monitor page")):
            reply = _command(ws, ident, address, *args)
            assert reply["ok"] is False and words in reply["errors"][0]["reason"], reply
        ws.send("{not json")
        reply = _until(ws, "reply")
        assert reply["ok"] is False and "bad command" in reply["errors"][0]["reason"]
        ws.send(json.dumps({"id": 8, "address": "/riff/alpha", "args": [{"x": 1}]}))
        assert "args is a list" in _until(ws, "reply")["errors"][0]["reason"]
        # The connection still works after all that.
        assert _command(ws, 9, "/riff/guidance", 9.5)["ok"]
    after = rig.lt.call(lambda: dict(state.snapshot()))
    assert {k: v for k, v in after.items() if k != "guidance"} == \
        {k: v for k, v in before.items() if k != "guidance"}
    assert after["guidance"] == 9.5
    assert rig.surfaces.web is not None
    assert rig.surfaces.web.counters.refused == 9 and rig.surfaces.web.counters.commands == 1


def test_websocket_from_another_origin_is_refused(rig: Rig) -> None:
    with pytest.raises(InvalidStatus) as refused:
        _socket(rig, origin="http://evil.example")
    assert refused.value.response.status_code == 403
    host = rig.base.removeprefix("http://")
    with _socket(rig, origin=f"http://{host}") as ws:  # the page's own origin
        assert json.loads(ws.recv(timeout=10))["type"] == "hello"
    # DNS rebinding: a page whose own name resolves to 127.0.0.1 sends its own name as Host
    # and Origin; the loopback server wants a loopback Host.
    port = int(host.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock, \
            pytest.raises(InvalidStatus) as refused:
        connect(f"ws://rebound.example:{port}/monitor/ws", sock=sock,
                origin=f"http://rebound.example:{port}", open_timeout=10)  # type: ignore[arg-type]
    assert refused.value.response.status_code == 403
    assert rig.surfaces.web is not None and rig.surfaces.web.counters.denied == 2


def test_websocket_outside_the_allowed_networks_is_refused(tmp_path: Path) -> None:
    rig = Rig(EngineDouble(), tmp_path, WebConfig(port=0, allow=("10.99.0.0/16",)))
    try:
        with pytest.raises(InvalidStatus):
            _socket(rig)
        assert rig.get("/monitor").status_code == 200  # the page itself only reads
    finally:
        rig.close()


def test_clip_spectrogram_picture(playing: tuple[Rig, Engine, FakeClock]) -> None:
    rig, engine, clock = playing
    rig.osc.send("/riff/play")
    rig.osc.messages_until_pong()
    rig.lt.run(clock.run_until(lambda: engine.scheduler.timeline()["playing"] is not None,
                               60, 0.05))
    playing_clip = rig.get("/monitor/status").json()["timeline"]["playing"]
    assert playing_clip["image"] == f"/monitor/clip/{playing_clip['job']}.png"
    picture = rig.get(playing_clip["image"])
    assert picture.status_code == 200 and picture.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(picture.content))
    assert image.size == (256, 128)
    assert len(np.unique(np.asarray(image))) > 8  # a spectrogram, not a blank
    assert rig.get("/monitor/clip/999999.png").status_code == 404


CHROMIUM = find_chromium()


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed (Debian: apt-get install "
                    "chromium; scripts/setup installs it) for the headless browser test")
def test_monitor_page_in_headless_chromium(playing: tuple[Rig, Engine, FakeClock],
                                           tmp_path: Path) -> None:
    """The page in a real browser: it connects, draws the playing clip from the WebSocket
    feed, and moving its alpha slider changes the engine's state; a bad value shows the
    engine's error on the page and changes nothing."""
    rig, engine, clock = playing
    rig.osc.send("/riff/play")
    rig.osc.messages_until_pong()
    rig.lt.run(clock.run_until(lambda: engine.scheduler.timeline()["playing"] is not None,
                               60, 0.05))
    job = rig.lt.call(lambda: engine.scheduler.playing_job)
    assert CHROMIUM is not None
    with Browser(CHROMIUM, tmp_path / "profile") as browser:
        browser.navigate(rig.base + "/monitor")
        browser.wait_for("document.getElementById('conn').textContent === 'live'")
        card = browser.wait_for(
            "(() => { const c = document.querySelector('#timeline .clip.playing');"
            " return c && c.dataset.job; })()")
        assert card == str(job)
        assert browser.evaluate("document.getElementById('playing').textContent").startswith(
            f"#{job} ")
        # The spectrogram picture of the playing clip loaded.
        assert browser.wait_for(
            "(() => { const i = document.querySelector('#timeline .clip.playing img');"
            " return i && i.complete && i.naturalWidth; })()") == 256
        # Move the alpha slider as a hand would: set its value, fire 'input'.
        browser.wait_for(
            "document.querySelector('input[data-address=\"/riff/alpha\"]') !== null")
        browser.evaluate(
            "(() => { const s = document.querySelector('input[data-address=\"/riff/alpha\"]');"
            " s.value = '0.625'; s.dispatchEvent(new Event('input', {bubbles: true})); })()")
        deadline = clock_deadline()
        while rig.lt.call(lambda: engine.state.snapshot()["alpha"]) != 0.625:
            assert not deadline(), "the slider did not change the engine's alpha"
        # An empty prompt is refused by the engine: the page says why, the prompt stays.
        prompt = rig.lt.call(lambda: engine.state.snapshot()["prompt"])
        browser.evaluate(
            "(() => { const t = document.querySelector('input[data-address=\"/riff/prompt\"]');"
            " t.value = ''; t.dispatchEvent(new Event('change', {bubbles: true})); })()")
        shown = browser.wait_for("document.getElementById('cmd_error').textContent")
        assert "/riff/prompt" in shown and "must not be empty" in shown
        assert rig.lt.call(lambda: engine.state.snapshot()["prompt"]) == prompt


def clock_deadline(seconds: float = 10.0) -> Any:
    """A function that turns true after ``seconds`` of wall time (sleeping a little per
    call), for polling the engine from the test thread."""
    import time

    end = time.monotonic() + seconds

    def passed() -> bool:
        time.sleep(0.02)
        return time.monotonic() > end

    return passed


def test_the_page_controls_the_engine_with_osc_off(tmp_path: Path) -> None:
    """--osc-port 0 --http PORT: the page's commands still take the OSC handlers' checks."""
    lt = LoopThread()
    engine = EngineDouble()
    config = ControlConfig(osc=None, web=WebConfig(port=0), preset_dirs=(tmp_path,),
                           check_image_ids=False)
    surfaces = lt.run(start_control_surfaces(engine, config))
    try:
        assert surfaces.osc is None and surfaces.web is not None
        url = f"ws://127.0.0.1:{surfaces.web.address[1]}/monitor/ws"
        with connect(url, open_timeout=10) as ws:
            assert _command(ws, 1, "/riff/tempo", 97.5)["ok"]
            assert "must be between" in _command(ws, 2, "/riff/tempo", 1e6)["errors"][0][
                "reason"]
        assert lt.call(lambda: engine.state.snapshot()["tempo"]) == 97.5
    finally:
        lt.run(surfaces.close())
        lt.close()
