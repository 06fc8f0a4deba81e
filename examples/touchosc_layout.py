"""Write a TouchOSC (mk1 format, ``.touchosc``) layout wired to the engine's ``/riff`` table.

    python examples/touchosc_layout.py riff.touchosc

Load it with TouchOSC's layout sync or the TouchOSC Editor; in TouchOSC set the OSC host to
the engine's machine, outgoing port 9000, incoming port 9001, and start the engine with
``--osc-host 0.0.0.0``. The layout's "sync" button sends ``/riff/subscribe 9001`` so every
fader follows the engine (feedback uses the same addresses).

Faders cover the float parameters (alpha, denoising, guidance, tempo) with their ranges; a
toggle switches auto alpha; push buttons play, stop, subscribe and ask for ``/riff/state``.
Integer and text parameters (steps, seeds, prompts) need a MIDI map or another client:
TouchOSC mk1 faders send floats and cannot send strings.
"""

from __future__ import annotations

import base64
import sys
import zipfile
from pathlib import Path
from xml.sax.saxutils import quoteattr

WIDTH, HEIGHT = 768, 1024

# (type, label, OSC address, from, to)
FADERS = [
    ("/riff/alpha", "alpha", 0.0, 1.0, "yellow"),
    ("/riff/denoising", "denoise", 0.0, 1.0, "orange"),
    ("/riff/guidance", "guidance", 0.0, 20.0, "red"),
    ("/riff/tempo", "tempo", 40.0, 240.0, "blue"),
]
# Buttons send scalet on press and (with sr) scalef on release; the engine ignores 0.
BUTTONS = [
    ("/riff/play", "play", "green"),
    ("/riff/stop", "stop", "red"),
    ("/riff/state", "state", "gray"),
]


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def control(kind: str, name: str, x: int, y: int, w: int, h: int, color: str,
            **attrs: str) -> str:
    base = {"type": kind, "name": b64(name), "x": str(x), "y": str(y), "w": str(w),
            "h": str(h), "color": color, **attrs}
    return "<control " + " ".join(f"{k}={quoteattr(v)}" for k, v in base.items()) + "/>"


def layout() -> str:
    controls = []
    col = WIDTH // len(FADERS)
    for i, (address, label, lo, hi, color) in enumerate(FADERS):
        x = i * col + 10
        controls.append(control("labelh", f"l_{label}", x, 20, col - 20, 40, color,
                                text=b64(label), size="20", background="false",
                                outline="false"))
        controls.append(control("faderv", label, x, 70, col - 20, 600, color,
                                osc_cs=b64(address), scalef=str(lo), scalet=str(hi),
                                response="absolute", inverted="false", centered="false"))
    controls.append(control("toggle", "auto", 10, 700, 140, 80, "purple",
                            osc_cs=b64("/riff/alpha/auto"), scalef="0.0", scalet="1.0",
                            local_off="false"))
    controls.append(control("labelh", "l_auto", 160, 720, 180, 40, "purple",
                            text=b64("auto alpha"), size="20", background="false",
                            outline="false"))
    for i, (address, label, color) in enumerate(BUTTONS):
        x = 10 + i * 190
        controls.append(control("push", label, x, 820, 170, 120, color, osc_cs=b64(address),
                                scalef="0.0", scalet="1.0", sp="true", sr="false",
                                local_off="false"))
    controls.append(control("push", "sync", 580, 820, 170, 120, "gray",
                            osc_cs=b64("/riff/subscribe"), scalef="9001", scalet="9001",
                            sp="true", sr="false", local_off="false"))
    body = "\n".join(controls)
    return ('<?xml version="1.0" encoding="UTF-8"?>'
            f'<layout version="17" mode="0" orientation="vertical" w="{WIDTH}" h="{HEIGHT}">'
            f'<tabpage name="{b64("riff")}" scalef="0.0" scalet="1.0">{body}</tabpage>'
            "</layout>")


def write(path: Path) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("index.xml", layout())


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "riff.touchosc")
    write(out)
    print(f"wrote {out}")
