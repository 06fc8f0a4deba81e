"""OSCQuery, mDNS advertising and the monitor page of ``riff run``, over real sockets.

The surfaces start as ``riff run`` starts them (``start_control_surfaces`` with OSC and the
web side on ephemeral ports); requests go over real HTTP (httpx), changes over real OSC UDP.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.live.control import Engine
from protocols.osc.server import OscConfig
from protocols.surfaces import ControlConfig, ControlSurfaces, start_control_surfaces
from protocols.web.advertise import OSCQUERY_TYPE, advertised_addresses, is_loopback
from protocols.web.server import WebConfig
from tests.control_surface_helpers import Client, EngineDouble, LoopThread
from tests.engine_fakes import FakeClock, FakeGenerator, FakeSink


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


def test_http_responder_edges(rig: Rig) -> None:
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
    assert "/monitor/status" in page.text and "<script>" in page.text
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


CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(n)), None)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed (apt-get install "
                    "chromium) for the headless browser check")
def test_monitor_page_in_headless_chromium(playing: tuple[Rig, Engine, FakeClock]) -> None:
    rig, engine, clock = playing
    rig.osc.send("/riff/play")
    rig.osc.messages_until_pong()
    rig.lt.run(clock.run_until(lambda: engine.scheduler.timeline()["playing"] is not None,
                               60, 0.05))
    assert CHROMIUM is not None
    try:
        dom = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
             "--virtual-time-budget=3000", "--dump-dom", rig.base + "/monitor"],
            capture_output=True, text=True, timeout=60).stdout
    except subprocess.TimeoutExpired:
        pytest.fail("chromium did not finish within 60 s")
    assert 'id="conn" class="ok">live' in dom
    assert "nothing yet" not in dom  # the playing clip was drawn
