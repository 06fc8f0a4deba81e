"""The controller examples speak the engine's address table; the ones no tool here can run
(TouchOSC, systemd) are checked against their formats; the Python clients run.

The examples run in their real tools (Pd, sclang, Tidal, Sonic Pi) in test_examples_live.py."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from engine.live.state import ADDRESSES, PARAMETERS
from tests.control_surface_helpers import Client, Served, served

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


# -- TouchOSC Mk2 (.tosc) --------------------------------------------------------------------
# The format as TouchOSC's manual (scripting enumerations) and the files it writes document it:
# zlib-compressed XML, <lexml version='3'>, nodes with typed properties, values and messages.

NODE_TYPES = {"BOX", "BUTTON", "LABEL", "TEXT", "FADER", "XY", "RADIAL", "ENCODER", "RADAR",
              "RADIO", "GROUP", "PAGER", "GRID"}
PROPERTY_TYPES = {"b", "c", "f", "i", "r", "s"}
CONDITIONS = {"ANY", "RISE", "FALL"}
PARTIAL_TYPES = {"CONSTANT", "INDEX", "VALUE", "PROPERTY"}
CONVERSIONS = {"BOOLEAN", "INTEGER", "FLOAT", "STRING"}
VALUE_FIELDS = ["key", "locked", "lockedDefaultCurrent", "default", "defaultPull"]
OSC_FIELDS = ["enabled", "send", "receive", "feedback", "connections", "triggers", "path",
              "arguments"]


@dataclass
class Partial:
    kind: str
    conversion: str
    value: str
    lo: float
    hi: float


@dataclass
class Control:
    kind: str
    name: str
    frame: tuple[int, int, int, int]
    values: set[str]
    props: dict[str, str]
    osc: list[dict[str, Any]]


def _flag(text: str | None) -> bool:
    assert text in ("0", "1"), text
    return text == "1"


def _children(el: ET.Element, names: list[str]) -> list[ET.Element]:
    got = [c.tag for c in el]
    assert got == names, (el.tag, got)
    return list(el)


def _partials(el: ET.Element) -> list[Partial]:
    out = []
    for p in el:
        assert p.tag == "partial"
        kind, conversion, value, lo, hi = _children(
            p, ["type", "conversion", "value", "scaleMin", "scaleMax"])
        assert kind.text in PARTIAL_TYPES and conversion.text in CONVERSIONS
        out.append(Partial(kind.text or "", conversion.text or "", value.text or "",
                           float(lo.text or "nan"), float(hi.text or "nan")))
    return out


def parse_node(node: ET.Element, out: list[Control]) -> Control:
    """Check one node (and its children) against the schema; collect it into ``out``."""
    assert node.tag == "node" and node.get("type") in NODE_TYPES, node.attrib
    uuid.UUID(node.get("ID", ""))
    tags = [c.tag for c in node]
    assert tags[0] == "properties" and tags == sorted(
        tags, key=["properties", "values", "messages", "children"].index), tags
    props: dict[str, str] = {}
    frame = (0, 0, 0, 0)
    for prop in node.find("properties") or []:
        kind = prop.get("type", "")
        assert kind in PROPERTY_TYPES, prop.attrib
        key_el, value_el = _children(prop, ["key", "value"])
        key = key_el.text or ""
        assert key not in props, key
        if kind == "b":
            props[key] = str(int(_flag(value_el.text)))
        elif kind == "i":
            props[key] = str(int(value_el.text or ""))
        elif kind == "f":
            props[key] = str(float(value_el.text or ""))
        elif kind == "s":
            props[key] = value_el.text or ""
        elif kind == "c":
            rgba = [float(c.text or "nan") for c in _children(value_el, ["r", "g", "b", "a"])]
            assert all(0 <= v <= 1 for v in rgba), rgba
            props[key] = ",".join(map(str, rgba))
        else:
            x, y, w, h = (int(c.text or "") for c in _children(value_el, ["x", "y", "w", "h"]))
            assert w > 0 and h > 0
            frame = (x, y, w, h)
            props[key] = "frame"
    assert {"name", "frame"} <= set(props), props
    keys = list(props)
    assert keys == sorted(keys), "properties are sorted by key"
    values: set[str] = set()
    for value in node.find("values") or []:
        fields = _children(value, VALUE_FIELDS)
        values.add(fields[0].text or "")
        _flag(fields[1].text), _flag(fields[2].text), _flag(fields[4].text)
    assert "touch" in values
    messages: list[dict[str, Any]] = []
    for msgs in node.findall("messages"):
        for osc_el in msgs:
            assert osc_el.tag == "osc", "only OSC messages are used here"
            fields = dict(zip(OSC_FIELDS, _children(osc_el, OSC_FIELDS), strict=True))
            assert re.fullmatch(r"[01]{5}", fields["connections"].text or ""), "5 connections"
            triggers = []
            for trig in fields["triggers"]:
                var, cond = _children(trig, ["var", "condition"])
                assert var.text in values and cond.text in CONDITIONS, (var.text, cond.text)
                triggers.append((var.text, cond.text))
            messages.append({
                "enabled": _flag(fields["enabled"].text), "send": _flag(fields["send"].text),
                "receive": _flag(fields["receive"].text),
                "feedback": _flag(fields["feedback"].text), "triggers": triggers,
                "path": _partials(fields["path"]), "args": _partials(fields["arguments"]),
            })
    control = Control(node.get("type", ""), props["name"], frame, values, props, messages)
    out.append(control)
    for kids in node.findall("children"):
        for child in kids:
            parse_node(child, out)
    return control


def load_tosc(path: Path) -> tuple[Control, list[Control]]:
    root = ET.fromstring(zlib.decompress(path.read_bytes()).decode("utf-8"))
    assert root.tag == "lexml" and root.get("version") == "3"
    (top,) = list(root)
    controls: list[Control] = []
    return parse_node(top, controls), controls


def render(part: Partial, x: float) -> Any:
    """What one partial yields with the control's value at ``x`` (0..1)."""
    if part.kind == "CONSTANT":
        raw: Any = part.value
        return {"STRING": str, "INTEGER": int, "FLOAT": float,
                "BOOLEAN": lambda v: v not in ("0", "false")}[part.conversion](raw)
    assert part.kind == "VALUE" and part.value == "x", part
    scaled = part.lo + x * (part.hi - part.lo)
    return {"FLOAT": float, "INTEGER": lambda v: round(v), "BOOLEAN": bool,
            "STRING": str}[part.conversion](scaled)


def sends(msg: dict[str, Any]) -> list[tuple[str, tuple[Any, ...], float]]:
    """The messages a control sends as its x goes 0 -> 0.5 -> 1 -> 0 (press and release)."""
    (var, condition), = msg["triggers"]
    assert var == "x"
    address = "".join(render(p, 0) for p in msg["path"])
    out = []
    previous = 0.0
    for x in (0.0, 0.5, 1.0, 0.0):
        rising, falling = x > previous, x < previous
        previous = x
        if condition == "RISE" and not (rising and x == 1.0):
            continue
        if condition == "FALL" and not falling:
            continue
        out.append((address, tuple(render(p, x) for p in msg["args"]), x))
    return out


@pytest.fixture(scope="module")
def tosc(tmp_path_factory: pytest.TempPathFactory) -> tuple[Control, list[Control]]:
    out = tmp_path_factory.mktemp("tosc") / "riff.tosc"
    done = subprocess.run([sys.executable, str(EXAMPLES / "touchosc_layout.py"), str(out)],
                          check=True, capture_output=True, text=True)
    assert "wrote" in done.stdout
    return load_tosc(out)


def test_touchosc_file_matches_the_mk2_schema_as_a_tablet_layout(
        tosc: tuple[Control, list[Control]]) -> None:
    root, controls = tosc
    assert root.kind == "GROUP"
    x0, y0, width, height = root.frame
    assert (x0, y0) == (0, 0) and min(width, height) >= 768 and max(width, height) >= 1024
    for c in controls[1:]:
        x, y, w, h = c.frame
        assert 0 <= x and 0 <= y and x + w <= width and y + h <= height, (c.name, c.frame)
    wired = [c for c in controls if c.osc]
    assert len(wired) >= 10
    kinds = {c.kind for c in wired}
    assert {"FADER", "BUTTON"} <= kinds


def test_every_touchosc_control_sends_what_the_engine_accepts(
        tosc: tuple[Control, list[Control]], osc: Served) -> None:
    """Each control's messages, rendered as TouchOSC renders them, go to the real OSC server
    over UDP: no /riff/error, and the parameter takes the value the control shows."""
    _, controls = tosc
    client = osc.client()
    faders: dict[str, tuple[float, float]] = {}
    for c in controls:
        for msg in c.osc:
            assert msg["enabled"] and msg["send"]
            for address, args, _x in sends(msg):
                assert address in KNOWN, address
                client.send(address, *args)
                replies = client.messages_until_pong()
                assert not [r for r in replies if r[0] == "/riff/error"], (c.name, address, args,
                                                                           replies)
                if address in ADDRESSES:
                    name = ADDRESSES[address]
                    got = osc.lt.call(lambda n=name: osc.engine.state.get(n))  # type: ignore
                    want = args[0]
                    if PARAMETERS[name].kind == "bool":
                        want = bool(want)
                    assert got == pytest.approx(want), (c.name, address, args, got)
            if c.kind == "FADER":
                (arg,) = msg["args"]
                faders[c.name] = (arg.lo, arg.hi)
                spec = PARAMETERS[ADDRESSES["".join(p.value for p in msg["path"])]]
                # The whole range, so feedback (scaled back by the same partial) fits too.
                assert (arg.lo, arg.hi) == (spec.lo, spec.hi), c.name
                assert msg["receive"]
            elif msg["receive"]:
                address = "".join(p.value for p in msg["path"])
                assert address in ADDRESSES, f"{c.name}: feedback only comes for parameters"
            else:
                assert not msg["receive"]
    assert set(faders) >= {"alpha", "denoise", "guidance", "tempo"}
    pressed = {c.name for c in controls for m in c.osc if ("x", "RISE") in m["triggers"]}
    assert {"play", "stop", "state", "sync"} <= pressed
    # Bare messages for the buttons that take none; sync names the receive port.
    by_name = {c.name: c for c in controls}
    for name in ("play", "stop", "state"):
        assert by_name[name].osc[0]["args"] == []
    assert sends(by_name["sync"].osc[0]) == [("/riff/subscribe", (9001,), 1.0)]
    assert osc.lt.call(lambda: osc.engine.state.get("prompt")) != PARAMETERS["prompt"].default


# -- systemd unit ----------------------------------------------------------------------------

# User units that Debian 12 ships for the audio servers (pipewire, pipewire-pulse, wireplumber).
DEBIAN_USER_UNITS = {"pipewire.service", "pipewire.socket", "pipewire-pulse.service",
                     "pipewire-pulse.socket", "wireplumber.service"}


def _unit(text: str) -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for line in re.sub(r"\\\n\s*", " ", text).splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            keys.setdefault(key.strip(), []).append(value.strip())
    return keys


def test_systemd_unit_orders_after_a_shipped_audio_service_and_binds_loopback() -> None:
    keys = _unit((EXAMPLES / "riff-engine.service").read_text())
    deps = {u for k in ("After", "Wants", "Requires", "BindsTo") for v in keys.get(k, [])
            for u in v.split()}
    assert deps and deps <= DEBIAN_USER_UNITS, deps
    assert "jack.service" not in deps
    (exec_start,) = keys["ExecStart"]
    host = re.search(r"--osc-host\s+(\S+)", exec_start)
    assert host is not None and host.group(1) in ("127.0.0.1", "::1", "localhost"), exec_start
    assert keys["WantedBy"] == ["default.target"]
    shipped = Path("/usr/lib/systemd/user")
    for unit in deps:
        if (shipped / "pipewire.service").exists():
            assert (shipped / unit).exists(), unit


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed (Debian: systemd)")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    """`systemd-analyze verify` with %h pointing at a home that has the checkout's riff."""
    home = tmp_path / "home"
    riff = home / "riffusion-engine" / ".venv" / "bin" / "riff"
    riff.parent.mkdir(parents=True)
    riff.write_text("#!/bin/sh\n")
    riff.chmod(0o755)
    unit = tmp_path / "riff-engine.service"
    shutil.copy(EXAMPLES / "riff-engine.service", unit)
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "HOME": str(home)})
    assert done.returncode == 0, done.stderr
    # Unknown keys and bad values are warnings (exit 0): none may be printed about the unit.
    assert "riff-engine.service" not in done.stderr, done.stderr


# -- scripts and patches ---------------------------------------------------------------------

@pytest.mark.parametrize("name", ["riff.scd", "riff.tidal", "riff.pi", "riff.pd"])
def test_scripts_use_known_addresses(name: str) -> None:
    text = (EXAMPLES / name).read_text()
    if name == "riff.pd":
        found = {"/riff/" + m.replace(" ", "/")
                 for m in re.findall(r"oscformat riff ([a-z_ ]+);", text)}
    else:
        found = set(re.findall(r"/riff/[a-z_/]+[a-z_]", text))
    assert found and found <= KNOWN, found - KNOWN


def test_pd_patch_connections_point_at_boxes() -> None:
    lines = (EXAMPLES / "riff.pd").read_text().split(";\n")
    boxes = [ln for ln in lines if ln.startswith(("#X obj", "#X msg", "#X text"))]
    connects = [ln for ln in lines if ln.startswith("#X connect")]
    assert connects
    for ln in connects:
        src, outlet, dst, inlet = (int(x) for x in ln.split()[2:6])
        assert src < len(boxes) and dst < len(boxes), ln
        assert not boxes[src].startswith("#X text") and not boxes[dst].startswith("#X text")
        assert outlet >= 0 and inlet >= 0


def test_tidal_prompts_are_not_in_mini_notation() -> None:
    """Mini-notation words cannot hold spaces or quotes; prompts go in as Haskell strings."""
    text = (EXAMPLES / "riff.tidal").read_text()
    code = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("--"))
    for quoted in re.findall(r'"([^"]*)"', code):
        if " " in quoted or "'" in quoted:
            # Only inside `prompts [...]`/`pure "..."`, never a pattern string.
            assert not re.search(r"[<\[].*'", quoted), quoted
    assert "Pre BundleStamp" in code and '"/riff/alpha/auto"' in code
    assert '"/riff/tempo"' in code


# -- the Python clients ----------------------------------------------------------------------

def _client(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(EXAMPLES / "osc_client.py"), *args],
                          capture_output=True, text=True, timeout=30)


def test_python_client_against_the_server(osc: Served) -> None:
    port = str(osc.addr[1])
    ok = _client("/riff/alpha", "0.5", "--port", port)
    assert ok.returncode == 0, ok.stderr
    assert osc.lt.call(lambda: osc.engine.state.get("alpha")) == 0.5
    bad = _client("/riff/alpha", "5", "--port", port)
    assert bad.returncode == 1 and bad.stdout.startswith("/riff/error /riff/alpha")
    state = _client("/riff/state", "--port", port)
    assert "/riff/alpha 0.5" in state.stdout.splitlines()
    number = _client("-s", "/riff/prompt", "808", "--port", port)
    assert number.returncode == 0, number.stdout
    assert osc.lt.call(lambda: osc.engine.state.get("prompt")) == "808"
    assert _client("/riff/prompt", "808", "--port", port).returncode == 1
    pong = _client("/riff/ping", "--port", port)
    assert pong.returncode == 0 and pong.stdout.splitlines() == ["/riff/pong"]


def _riff(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "protocols.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_riff_osc_string_flag_ping_and_wait(osc: Served) -> None:
    port = str(osc.addr[1])
    as_number = _riff("osc", "/riff/prompt", "808", "--osc-port", port)
    assert as_number.returncode == 1 and "takes a string" in as_number.stderr
    as_string = _riff("osc", "-s", "/riff/prompt", "808", "--osc-port", port)
    assert as_string.returncode == 0, as_string.stderr
    assert osc.lt.call(lambda: osc.engine.state.get("prompt")) == "808"
    assert "--string" in _riff("osc", "--help").stdout
    pong = _riff("osc", "/riff/ping", "--osc-port", port)
    assert pong.returncode == 0 and pong.stdout.splitlines() == ["/riff/pong"], pong
    # --wait keeps printing after the pong: feedback to the subscription, as another client
    # moves alpha (the state burst before the pong holds one alpha value; feedback adds more).
    proc = subprocess.Popen([sys.executable, "-m", "protocols.cli", "osc", "/riff/subscribe",
                             "--wait", "4", "--osc-port", port], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    mover = Client(osc.addr)
    try:
        step = 0
        while proc.poll() is None and step < 400:
            step += 1
            mover.send("/riff/alpha", (step % 50) / 100 + 0.5)
            mover.messages_until_pong()
            time.sleep(0.05)
        out, err = proc.communicate(timeout=30)
    finally:
        mover.close()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    alphas = {ln for ln in out.splitlines() if ln.startswith("/riff/alpha ")}
    assert len(alphas) >= 3, out


def test_tosc_render_follows_the_scale() -> None:
    """The checker's own model of a partial: a fader's x maps onto its scale."""
    part = Partial("VALUE", "FLOAT", "x", 40.0, 240.0)
    assert [render(part, x) for x in (0.0, 0.5, 1.0)] == [40.0, 140.0, 240.0]
    assert render(Partial("VALUE", "INTEGER", "x", 1, 150), 0.5) == 76
    assert math.isclose(render(Partial("CONSTANT", "FLOAT", "0.7", 0, 1), 0.0), 0.7)
