"""The controller examples speak the engine's address table (and the runnable ones run)."""

from __future__ import annotations

import base64
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.live.state import ADDRESSES, PARAMETERS
from tests.control_surface_helpers import Served, served

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
COMMANDS = {"/riff/play", "/riff/stop", "/riff/state", "/riff/ping", "/riff/subscribe",
            "/riff/unsubscribe", "/riff/preset/load", "/riff/preset/save", "/riff/midi/learn",
            "/riff/error", "/riff/pong"}
STATUS = {f"/riff/status/{k}" for k in ("bar", "queue", "late", "progress", "clip")}
KNOWN = set(ADDRESSES) | COMMANDS | STATUS


@pytest.fixture
def osc(tmp_path: Path) -> Iterator[Served]:
    yield from served(tmp_path)


def test_touchosc_layout_addresses_and_ranges(tmp_path: Path) -> None:
    out = tmp_path / "riff.touchosc"
    subprocess.run([sys.executable, str(EXAMPLES / "touchosc_layout.py"), str(out)],
                   check=True, capture_output=True)
    with zipfile.ZipFile(out) as zf:
        root = ET.fromstring(zf.read("index.xml"))
    controls = root.findall(".//control")
    wired = [c for c in controls if c.get("osc_cs")]
    assert len(wired) >= 8
    for c in wired:
        address = base64.b64decode(c.get("osc_cs", "")).decode()
        assert address in KNOWN, address
        if c.get("type") == "faderv":
            spec = PARAMETERS[ADDRESSES[address]]
            assert (float(c.get("scalef", "nan")), float(c.get("scalet", "nan"))) == (
                spec.lo, spec.hi)


@pytest.mark.parametrize("name", ["riff.scd", "riff.tidal", "riff.pi", "riff.pd"])
def test_scripts_use_known_addresses(name: str) -> None:
    text = (EXAMPLES / name).read_text()
    if name == "riff.pd":
        found = {f"/riff/{m}" for m in re.findall(r"oscformat riff (\S+?);", text)}
    else:
        found = set(re.findall(r"/riff/[a-z_/]+[a-z_]", text))
    assert found and found <= KNOWN, found - KNOWN


def test_pd_patch_connections_point_at_objects() -> None:
    lines = (EXAMPLES / "riff.pd").read_text().splitlines()
    objects = [ln for ln in lines if ln.startswith(("#X obj", "#X msg", "#X text"))]
    for ln in lines:
        if ln.startswith("#X connect"):
            src, _, dst, _ = (int(x) for x in ln.rstrip(";").split()[2:])
            assert src < len(objects) and dst < len(objects)
            assert "netsend" in objects[dst] or "oscformat" in objects[dst] or "list" in \
                objects[dst]


def test_python_client_against_the_server(osc: Served) -> None:
    port = str(osc.addr[1])
    script = str(EXAMPLES / "osc_client.py")
    ok = subprocess.run([sys.executable, script, "/riff/alpha", "0.5", "--port", port],
                        capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    assert osc.lt.call(lambda: osc.engine.state.get("alpha")) == 0.5
    bad = subprocess.run([sys.executable, script, "/riff/alpha", "5", "--port", port],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 1 and bad.stdout.startswith("/riff/error /riff/alpha")
    state = subprocess.run([sys.executable, script, "/riff/state", "--port", port],
                           capture_output=True, text=True, timeout=30)
    assert "/riff/alpha 0.5" in state.stdout.splitlines()
