"""The engine's OSC address space as OSCQuery JSON (Vidvox' OSCQuery proposal).

Every parameter comes from the one table, :data:`engine.live.state.PARAMETERS` (address,
type, range, help text), with its current value read from the engine's state at each request,
so a change from any surface is visible in the next GET. Beside the parameters: the action
addresses the OSC server answers (:data:`ACTIONS`, write-only) and the status it sends
(``/riff/status/*``, read-only, from ``engine.status()``).

Routes (``GET``): ``/`` or any container or method path returns its node (``FULL_PATH``,
``CONTENTS`` for containers; ``TYPE``, ``ACCESS``, ``VALUE``, ``RANGE``, ``DESCRIPTION`` for
methods); ``/path?ATTRIBUTE`` returns ``{"ATTRIBUTE": ...}`` alone (204 when the node has no
such attribute, 400 for an unknown attribute name); ``/?HOST_INFO`` describes the server
(name, OSC host, port and transport, supported extensions). Unknown paths: 404.

Types: ``f`` float, ``i`` int (``h`` when its range passes int32), ``s`` string, ``T`` bool
(OSCQuery clients send ``T``/``F``; the OSC server also takes 0/1). Strings naming a seed image
or mask carry no range: the library is checked when the value arrives.

Thread: :meth:`OscQuery.handle` runs on the asyncio loop (a route of the web app).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from engine.live.state import PARAMETERS, ParamSpec, Value

ACCESS_NONE, ACCESS_READ, ACCESS_WRITE, ACCESS_READ_WRITE = 0, 1, 2, 3
INT32_MAX = 2**31 - 1

#: Write-only actions the OSC server handles: address -> (OSC type tag string, description).
ACTIONS: Mapping[str, tuple[str, str]] = {
    "/riff/play": ("", "start the transport"),
    "/riff/stop": ("", "stop the transport"),
    "/riff/state": ("", "reply every parameter at its own address"),
    "/riff/ping": ("", "reply /riff/pong"),
    "/riff/preset/load": ("s", "load a preset by name"),
    "/riff/preset/save": ("s", "save every parameter as a preset in the user's folder"),
    "/riff/midi/learn": ("s", "bind the next moved MIDI CC to this address"),
    "/riff/subscribe": ("i", "send feedback to the sender (or to this port on its host)"),
    "/riff/unsubscribe": ("i", "stop feedback"),
    "/riff/record/start": ("s", "start a take (optional name)"),
    "/riff/record/stop": ("", "stop the take"),
    "/riff/capture": ("is", "capture the next N bars of the audio input as the seed image "
                            "(optional name)"),
}

#: Read-only status addresses (what OSC feedback sends): status key -> (type, description).
STATUS: Mapping[str, tuple[str, str]] = {
    "bar": ("i", "bar playing now (-1 when stopped)"),
    "queue": ("i", "planned clips not yet playing"),
    "late": ("i", "clips that missed their bar line"),
    "progress": ("f", "progress 0..1 of the next clip being generated"),
    "clip": ("i", "job id of the clip playing (-1 before the first)"),
    "repeated": ("i", "bar lines where the playing clip played again"),
    "failed": ("i", "failed generation attempts"),
    "xruns": ("i", "JACK xruns"),
    "underruns": ("i", "player underruns"),
    "error": ("s", "why the last clip (or take, or capture) was given up"),
    "capturing": ("s", "the capture armed or encoding (--input; empty when none)"),
}

#: OSCQuery attributes a client may ask for one at a time (``?VALUE``).
ATTRIBUTES = ("FULL_PATH", "CONTENTS", "TYPE", "ACCESS", "VALUE", "RANGE", "DESCRIPTION",
              "HOST_INFO")
EXTENSIONS = {"ACCESS": True, "VALUE": True, "RANGE": True, "DESCRIPTION": True,
              "TAGS": False, "EXTENDED_TYPE": False, "UNIT": False, "CRITICAL": False,
              "CLIPMODE": False, "LISTEN": False, "PATH_CHANGED": False}


@dataclasses.dataclass(frozen=True)
class HostInfo:
    """What ``/?HOST_INFO`` says: the service name and where OSC messages go."""

    name: str
    osc_ip: str
    osc_port: int
    osc_transport: str = "UDP"

    def as_json(self) -> dict[str, Any]:
        """The HOST_INFO object. A wildcard OSC host (``0.0.0.0``) leaves ``OSC_IP`` out:
        clients then send to the address they reached this server on, as the proposal
        says."""
        info: dict[str, Any] = {"NAME": self.name, "OSC_PORT": self.osc_port,
                                "OSC_TRANSPORT": self.osc_transport,
                                "EXTENSIONS": dict(EXTENSIONS)}
        if self.osc_ip not in ("0.0.0.0", "::", ""):
            info["OSC_IP"] = self.osc_ip
        return info


def osc_type(spec: ParamSpec) -> str:
    """The OSC type tag of a parameter (see the module docstring)."""
    if spec.kind in ("str", "id"):
        return "s"
    if spec.kind == "bool":
        return "T"
    if spec.kind == "int":
        return "h" if spec.hi is not None and spec.hi > INT32_MAX else "i"
    return "f"


def parameter_node(spec: ParamSpec, value: Value) -> dict[str, Any]:
    """The OSCQuery node of one parameter with its current ``value``."""
    node: dict[str, Any] = {"FULL_PATH": spec.address, "TYPE": osc_type(spec),
                            "ACCESS": ACCESS_READ_WRITE, "VALUE": [value],
                            "DESCRIPTION": spec.help or spec.name}
    if spec.kind in ("int", "float") and spec.lo is not None and spec.hi is not None:
        cast: Callable[[float], int | float] = int if spec.kind == "int" else float
        node["RANGE"] = [{"MIN": cast(spec.lo), "MAX": cast(spec.hi)}]
    elif spec.kind == "bool":
        node["RANGE"] = [{"VALS": [False, True]}]
    return node


def _leaf(path: str, type_tag: str, access: int, description: str,
          value: Any = None) -> dict[str, Any]:
    node: dict[str, Any] = {"FULL_PATH": path, "ACCESS": access, "DESCRIPTION": description}
    if type_tag:
        node["TYPE"] = type_tag
    if value is not None:
        node["VALUE"] = [value]
    return node


def build_tree(values: Mapping[str, Value], status: Mapping[str, Any]) -> dict[str, Any]:
    """The whole namespace as nested nodes (root ``/``)."""
    leaves: dict[str, dict[str, Any]] = {}
    for name, spec in PARAMETERS.items():
        leaves[spec.address] = parameter_node(spec, values.get(name, spec.default))
    for address, (tag, text) in ACTIONS.items():
        leaves[address] = _leaf(address, tag, ACCESS_WRITE, text)
    for key, (tag, text) in STATUS.items():
        if key in status:
            leaves[f"/riff/status/{key}"] = _leaf(f"/riff/status/{key}", tag, ACCESS_READ,
                                                  text, status[key])
    root: dict[str, Any] = {"FULL_PATH": "/", "ACCESS": ACCESS_NONE, "CONTENTS": {},
                            "DESCRIPTION": "riffusion-engine"}
    for address in sorted(leaves):
        node = root
        parts = address.strip("/").split("/")
        for depth, part in enumerate(parts):
            contents = node.setdefault("CONTENTS", {})
            path = "/" + "/".join(parts[:depth + 1])
            child = contents.get(part)
            if child is None:
                child = contents[part] = {"FULL_PATH": path, "ACCESS": ACCESS_NONE}
            node = child
        # A method may also be a container (/riff/alpha holds /riff/alpha/auto).
        contents = node.get("CONTENTS")
        node.clear()
        node.update(leaves[address])
        if contents:
            node["CONTENTS"] = contents
    return root


def find(tree: dict[str, Any], path: str) -> dict[str, Any] | None:
    """The node at ``path`` (``/`` is the root), or None."""
    node = tree
    for part in (p for p in path.split("/") if p):
        node = node.get("CONTENTS", {}).get(part)
        if node is None:
            return None
    return node


class OscQuery:
    """Answers OSCQuery requests from the engine's current state (see the module docstring).

    ``values`` and ``status`` are called per request (the engine's state snapshot and
    ``engine.status()``); ``host_info`` says where OSC goes."""

    def __init__(self, values: Callable[[], Mapping[str, Value]],
                 status: Callable[[], Mapping[str, Any]], host_info: HostInfo) -> None:
        self.values = values
        self.status = status
        self.host_info = host_info

    def tree(self) -> dict[str, Any]:
        """The namespace now."""
        try:
            status = self.status()
        except Exception:
            status = {}
        return build_tree(self.values(), status)

    def handle(self, path: str, query: str) -> tuple[int, dict[str, Any] | None]:
        """One GET: ``path`` and the raw ``query`` (bare attribute names: ``?VALUE``).
        Returns the status and the JSON to answer (None: no body, 204). Thread: the loop."""
        attribute = query.split("&", 1)[0].split("=", 1)[0].upper()
        if attribute == "HOST_INFO":
            return 200, self.host_info.as_json()
        node = find(self.tree(), path)
        if node is None:
            return 404, {"error": f"no OSC address {path}"}
        if not attribute:
            return 200, node
        if attribute not in ATTRIBUTES:
            return 400, {"error": f"unknown attribute {attribute}"}
        if attribute not in node:
            return 204, None
        return 200, {attribute: node[attribute]}
