"""Write a TouchOSC (Mk2, ``.tosc``) tablet layout wired to the engine's ``/riff`` table.

    python examples/touchosc_layout.py riff.tosc

Open the file in TouchOSC (or its editor) on the tablet. In TouchOSC's connections set OSC
connection 1 to UDP, host = the engine's machine, send port 9000, receive port 9001, and start
the engine with ``--osc-host 0.0.0.0`` (or the machine's LAN address). Press "sync": it sends
``/riff/subscribe 9001`` and every fader and the auto toggle follow the engine (feedback uses
the same addresses).

The page is 1024 x 768 (an iPad in landscape; TouchOSC scales it to other tablets):

- vertical faders for the float parameters (alpha, denoising, guidance, tempo), each scaled to
  the parameter's range, and one for steps (sent as an integer);
- a toggle for auto alpha (1: the engine's jam planner drives alpha; 0: the alpha fader does);
- buttons that send bare messages on press: play, stop, state (the engine answers with every
  parameter), and sync;
- prompt buttons, each sending ``/riff/prompt`` with its text (edit them in ``PROMPTS``).

A ``.tosc`` file is zlib-compressed XML: ``<lexml version='3'>`` holding one root ``node``
(a GROUP) whose ``children`` are the controls; each node has ``properties`` (typed key/value),
``values`` (x, touch, ...) and ``messages`` (``osc``: triggers, an address built from partials,
arguments built from partials with their conversion and scale).
"""

from __future__ import annotations

import sys
import uuid
import zlib
from pathlib import Path

WIDTH, HEIGHT = 1024, 768
CONNECTION = "00001"  # OSC connection 1 of 5
SUBSCRIBE_PORT = 9001

# (OSC address, label, lowest, highest, argument conversion, colour as r, g, b)
FADERS: list[tuple[str, str, float, float, str, tuple[float, float, float]]] = [
    ("/riff/alpha", "alpha", 0.0, 1.0, "FLOAT", (1.0, 0.85, 0.2)),
    ("/riff/denoising", "denoise", 0.0, 1.0, "FLOAT", (1.0, 0.55, 0.1)),
    ("/riff/guidance", "guidance", 0.0, 20.0, "FLOAT", (0.95, 0.3, 0.3)),
    ("/riff/tempo", "tempo", 40.0, 240.0, "FLOAT", (0.3, 0.55, 1.0)),
    ("/riff/steps", "steps", 1.0, 150.0, "INTEGER", (0.6, 0.6, 0.6)),
]
# (OSC address, label, colour): momentary buttons that send the bare address on press.
BUTTONS: list[tuple[str, str, tuple[float, float, float]]] = [
    ("/riff/play", "play", (0.2, 0.8, 0.3)),
    ("/riff/stop", "stop", (0.9, 0.25, 0.25)),
    ("/riff/state", "state", (0.5, 0.5, 0.5)),
]
PROMPTS = ["lo-fi hip hop beat", "dub techno chords", "bossa nova guitar",
           "acid techno with squelchy 303"]


def _cdata(text: str) -> str:
    if "]]>" in text:
        raise ValueError(f"text cannot hold ']]>': {text!r}")
    return f"<![CDATA[{text}]]>"


def _id() -> str:
    return str(uuid.uuid4())


def _prop(kind: str, key: str, value: str) -> str:
    return (f"<property type='{kind}'><key><![CDATA[{key}]]></key>"
            f"<value>{value}</value></property>")


def _frame(x: int, y: int, w: int, h: int) -> str:
    return _prop("r", "frame", f"<x>{x}</x><y>{y}</y><w>{w}</w><h>{h}</h>")


def _color_prop(key: str, rgb: tuple[float, float, float], alpha: float = 1.0) -> str:
    r, g, b = rgb
    return _prop("c", key, f"<r>{r:g}</r><g>{g:g}</g><b>{b:g}</b><a>{alpha:g}</a>")


def _color(rgb: tuple[float, float, float]) -> str:
    return _color_prop("color", rgb)


def _props(name: str, frame: tuple[int, int, int, int], rgb: tuple[float, float, float],
           *extra: str, interactive: bool = True, background: bool = True) -> str:
    common = [
        _prop("b", "background", "1" if background else "0"), _color(rgb),
        _prop("f", "cornerRadius", "1"), _frame(*frame), _prop("b", "grabFocus", "1"),
        _prop("b", "interactive", "1" if interactive else "0"), _prop("b", "locked", "0"),
        _prop("s", "name", f"<![CDATA[{name}]]>"), _prop("b", "outline", "1"),
        _prop("i", "outlineStyle", "0"), _prop("i", "pointerPriority", "0"),
        _prop("i", "shape", "1"), _prop("b", "visible", "1"),
    ]
    # TouchOSC writes properties sorted by key.
    ordered = sorted([*common, *extra], key=lambda p: p.split("CDATA[", 1)[1].split("]]>", 1)[0])
    return "<properties>" + "".join(ordered) + "</properties>"


def _value(key: str, default: str) -> str:
    return (f"<value><key><![CDATA[{key}]]></key><locked>0</locked>"
            f"<lockedDefaultCurrent>0</lockedDefaultCurrent>"
            f"<default>{_cdata(default)}</default><defaultPull>0</defaultPull></value>")


def _partial(kind: str, conversion: str, value: str, lo: float = 0.0, hi: float = 1.0) -> str:
    return (f"<partial><type>{kind}</type><conversion>{conversion}</conversion>"
            f"<value>{_cdata(value)}</value><scaleMin>{lo:g}</scaleMin>"
            f"<scaleMax>{hi:g}</scaleMax></partial>")


def _osc(address: str, arguments: list[str], *, condition: str, receive: bool) -> str:
    return ("<messages><osc><enabled>1</enabled><send>1</send>"
            f"<receive>{int(receive)}</receive><feedback>0</feedback>"
            f"<connections>{CONNECTION}</connections>"
            f"<triggers><trigger><var><![CDATA[x]]></var><condition>{condition}</condition>"
            "</trigger></triggers>"
            f"<path>{_partial('CONSTANT', 'STRING', address)}</path>"
            f"<arguments>{''.join(arguments)}</arguments></osc></messages>")


def _node(kind: str, props: str, values: str, messages: str = "", children: str = "") -> str:
    return (f"<node ID='{_id()}' type='{kind}'>{props}<values>{values}</values>{messages}"
            f"{children}</node>")


def _label(text: str, frame: tuple[int, int, int, int]) -> str:
    props = _props(f"label {text}", frame, (1.0, 1.0, 1.0), _prop("i", "textSize", "20"),
                   _color_prop("textColor", (1.0, 1.0, 1.0)), interactive=False,
                   background=False)
    return _node("LABEL", props, _value("text", text) + _value("touch", "false"))


def _button(name: str, frame: tuple[int, int, int, int], rgb: tuple[float, float, float],
            address: str, arguments: list[str], *, toggle: bool = False) -> str:
    # buttonType 0: momentary (x is 1 while pressed), 1: toggle (flips on release).
    props = _props(name, frame, rgb, _prop("i", "buttonType", "1" if toggle else "0"),
                   _prop("b", "press", "1"), _prop("b", "release", "1"))
    # A momentary button sends on the rising edge only (press, not release); a toggle sends
    # both states and follows the engine's feedback.
    messages = _osc(address, arguments, condition="ANY" if toggle else "RISE",
                    receive=toggle)
    return _node("BUTTON", props, _value("x", "0") + _value("touch", "false"), messages)


def controls() -> list[str]:
    """Every control of the page, as XML nodes."""
    out: list[str] = []
    col = 110
    for i, (address, label, lo, hi, conversion, rgb) in enumerate(FADERS):
        x = 20 + i * col
        out.append(_label(label, (x, 20, col - 20, 40)))
        props = _props(label, (x, 70, col - 20, 560), rgb, _prop("i", "orientation", "0"),
                       _prop("i", "response", "0"), _prop("b", "bar", "1"),
                       _prop("b", "cursor", "1"))
        # The fader's x runs 0..1; the argument partial scales it to the parameter's range
        # (and feedback at the same address is scaled back).
        messages = _osc(address, [_partial("VALUE", conversion, "x", lo, hi)],
                        condition="ANY", receive=True)
        out.append(_node("FADER", props, _value("x", "0")
                         + _value("touch", "false"), messages))
    right = 20 + len(FADERS) * col + 10
    out.append(_button("auto", (right, 70, 140, 80), (0.6, 0.35, 0.9), "/riff/alpha/auto",
                       [_partial("VALUE", "INTEGER", "x")], toggle=True))
    out.append(_label("auto alpha", (right + 150, 90, 200, 40)))
    step = (WIDTH - 20 - right + 10) // (len(BUTTONS) + 1)  # the buttons and sync in a row
    for i, (address, label, rgb) in enumerate(BUTTONS):
        frame = (right + i * step, 180, step - 10, 100)
        out.append(_button(label, frame, rgb, address, []))
        out.append(_label(label, (frame[0], 290, step - 10, 30)))
    sync = (right + len(BUTTONS) * step, 180, step - 10, 100)
    out.append(_button("sync", sync, (0.5, 0.5, 0.5), "/riff/subscribe",
                       [_partial("CONSTANT", "INTEGER", str(SUBSCRIBE_PORT))]))
    out.append(_label("sync", (sync[0], 290, step - 10, 30)))
    for i, prompt in enumerate(PROMPTS):
        frame = (right, 340 + i * 95, WIDTH - right - 20, 85)
        out.append(_button(f"prompt {i + 1}", frame, (0.25, 0.45, 0.45), "/riff/prompt",
                           [_partial("CONSTANT", "STRING", prompt)]))
        out.append(_label(prompt, (frame[0] + 10, frame[1] + 22, frame[2] - 20, 40)))
    return out


def layout() -> str:
    """The whole layout as XML text (what ``write`` compresses)."""
    props = _props("riff", (0, 0, WIDTH, HEIGHT), (0.08, 0.08, 0.1), interactive=False)
    root = _node("GROUP", props, _value("touch", "false"),
                 children="<children>" + "".join(controls()) + "</children>")
    return f"<?xml version='1.0' encoding='UTF-8'?><lexml version='3'>{root}</lexml>"


def write(path: Path) -> None:
    """Write the layout to ``path`` (a ``.tosc`` file: zlib-compressed XML)."""
    path.write_bytes(zlib.compress(layout().encode("utf-8")))


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "riff.tosc")
    write(out)
    print(f"wrote {out}")
