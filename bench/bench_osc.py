"""Control-surface latency: OSC message -> state applied, MIDI CC -> state applied.

Prints JSON. Each path is measured next to a baseline taken in the same run:

- OSC: a sender process sends ``/riff/seed i`` at 1000 messages/s; latency is from its send
  to the engine state holding ``i`` (a state listener timestamps it). Baseline: python-osc's own
  ``AsyncIOOSCUDPServer`` with a bare handler (no validation, no state), on the same loop.
- MIDI over JACK: a JACK client in another process sends CC at 100/s from its process
  callback; latency is from that callback to the state holding the value. Baseline: a bare
  JACK client timestamping the event in its own process callback (what JACK alone costs).
  ``lost`` counts CCs that never reached the state; ``xruns`` are periods the engine's JACK
  client missed (its Python callback waits for the GIL while the loop runs), which lose that
  period's events.
- rtmidi over JACK: the same CCs through mido/rtmidi's JACK API.

Clocks: ``time.monotonic_ns`` everywhere (one clock across processes on Linux).

    python bench/bench_osc.py [--messages 3000] [--rate 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.live.state import EngineState
from engine.presets import PresetLibrary
from protocols.control_target import Commands
from protocols.midi.map import CcBinding, MidiMap
from protocols.midi.router import MidiRouter
from protocols.osc.server import OscConfig, OscServer

SENDER = r"""
import json, socket, sys, time
from pythonosc.osc_message_builder import OscMessageBuilder
host, port, n, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
msgs = []
for i in range(n):
    b = OscMessageBuilder("/riff/seed"); b.add_arg(i); msgs.append(b.build().dgram)
sent = []
start = time.monotonic() + 0.2
for i, d in enumerate(msgs):
    due = start + i / rate
    while (left := due - time.monotonic()) > 0:
        time.sleep(min(left, 0.0005))
    sent.append(time.monotonic_ns())
    sock.sendto(d, (host, port))
print(json.dumps(sent))
"""


class Engine:
    """Real state; the transport calls are not part of this measurement."""

    def __init__(self) -> None:
        self.state = EngineState()

    def play(self) -> None: ...

    def stop(self) -> None: ...

    def status(self) -> dict[str, Any]:
        return {}


def summary(latencies_ns: list[int], expected: int) -> dict[str, Any]:
    ms = sorted(x / 1e6 for x in latencies_ns)
    if not ms:
        return {"n": 0, "lost": expected}
    return {"n": len(ms), "lost": expected - len(ms),
            "p50_ms": round(statistics.median(ms), 3),
            "p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 3),
            "max_ms": round(ms[-1], 3)}


async def run_sender(port: int, n: int, rate: float) -> list[int]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SENDER, "127.0.0.1", str(port), str(n), str(rate),
        stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    return list(json.loads(out))


async def bench_osc(n: int, rate: float) -> dict[str, Any]:
    engine = Engine()
    applied: dict[int, int] = {}
    engine.state.add_listener(lambda name, value: applied.__setitem__(value, time.monotonic_ns())
                              if name == "seed" else None)
    commands = Commands(engine, PresetLibrary())
    server = await OscServer.start(commands, OscConfig(port=0))
    sent = await run_sender(server.address[1], n, rate)
    await asyncio.sleep(0.2)
    await server.close()
    return summary([applied[i] - t for i, t in enumerate(sent) if i in applied], n)


async def bench_python_osc(n: int, rate: float) -> dict[str, Any]:
    from pythonosc.dispatcher import Dispatcher
    from pythonosc.osc_server import AsyncIOOSCUDPServer

    seen: dict[int, int] = {}
    dispatcher = Dispatcher(strict_timing=False)
    dispatcher.map("/riff/seed", lambda _a, v: seen.__setitem__(v, time.monotonic_ns()))
    server = AsyncIOOSCUDPServer(("127.0.0.1", 0), dispatcher, asyncio.get_running_loop())
    transport, _ = await server.create_serve_endpoint()
    port = transport.get_extra_info("sockname")[1]
    sent = await run_sender(port, n, rate)
    await asyncio.sleep(0.2)
    transport.close()
    return summary([seen[i] - t for i, t in enumerate(sent) if i in seen], n)


def _cc_map() -> MidiMap:
    return MidiMap(cc=(CcBinding(cc=1, address="/riff/seed", min=0, max=127),))


MIDI_SENDER = r"""
import json, sys, time, jack
server, target, n, every = sys.argv[1] or None, sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
client = jack.Client("bench-send", no_start_server=True, servername=server)
port = client.midi_outports.register("out")
sent = []
state = {"due": 0.0}
def process(frames):
    port.clear_buffer()
    now = time.monotonic()
    if len(sent) < n and now >= state["due"]:
        value = len(sent) % 128
        port.write_midi_event(0, bytes([0xB0, 1, value]))
        sent.append((value, time.monotonic_ns()))
        state["due"] = now + every
state["due"] = time.monotonic() + 0.5  # after the connection below is made
client.set_process_callback(process)
client.activate()
client.connect(port, target)
while len(sent) < n:
    time.sleep(0.05)
time.sleep(0.2)
client.deactivate()
client.close()
print(json.dumps(sent))
"""


async def send_cc_from_process(server: str | None, target: str, n: int, every_s: float
                               ) -> list[tuple[int, int]]:
    """A separate process (its own GIL) sends CC 1 from its JACK process callback."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", MIDI_SENDER, server or "", target, str(n), str(every_s),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    out, _ = await proc.communicate()
    return [(int(v), int(t)) for v, t in json.loads(out)]


async def _collect_cc(sent: list[tuple[int, int]], applied: list[tuple[int, int]],
                      timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while len(applied) < len(sent) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    # Values repeat every 128 messages (1.28 s): pair each send with the first apply of its
    # value after it and within half that period; a send with none was lost.
    latencies = []
    j = 0
    for value, t in sent:
        k = j
        while k < len(applied) and applied[k][1] - t < 640_000_000:
            if applied[k][0] == value and applied[k][1] >= t:
                latencies.append(applied[k][1] - t)
                j = k + 1
                break
            k += 1
    return summary(latencies, len(sent))


async def bench_jack_midi(server: str | None, n: int) -> dict[str, Any]:
    from protocols.midi.jack_input import JackMidiInput

    engine = Engine()
    applied: list[tuple[int, int]] = []
    engine.state.add_listener(lambda name, value: applied.append((int(value), time.monotonic_ns()))
                              if name == "seed" else None)
    router = MidiRouter(Commands(engine, PresetLibrary()), _cc_map())
    inp = JackMidiInput(router.handle, client_name=f"bench-in-{uuid.uuid4().hex[:6]}",
                        servername=server)
    inp.start()
    sent = await send_cc_from_process(server, inp.port_name, n, 0.01)
    result = await _collect_cc(sent, applied, 5)
    result["xruns"] = inp.xruns
    inp.close()
    return result


async def bench_jack_baseline(server: str | None, n: int) -> dict[str, Any]:
    import jack

    client = jack.Client(f"bench-bare-{uuid.uuid4().hex[:6]}", no_start_server=True,
                         servername=server)
    port = client.midi_inports.register("in")
    seen: list[tuple[int, int]] = []

    def process(frames: int) -> None:
        for _offset, data in port.incoming_midi_events():
            seen.append((bytes(data)[2], time.monotonic_ns()))

    client.set_process_callback(process)
    client.activate()
    sent = await send_cc_from_process(server, port.name, n, 0.01)
    result = await _collect_cc(sent, seen, 5)
    client.deactivate()
    client.close()
    return result


async def bench_rtmidi(server: str | None, n: int) -> dict[str, Any]:
    import jack
    import mido

    from protocols.midi.rtmidi_input import RtMidiInput

    if server:
        os.environ["JACK_DEFAULT_SERVER"] = server
    engine = Engine()
    applied: list[tuple[int, int]] = []
    engine.state.add_listener(lambda name, value: applied.append((int(value), time.monotonic_ns()))
                              if name == "seed" else None)
    router = MidiRouter(Commands(engine, PresetLibrary()), _cc_map())
    name = f"bench-rt-{uuid.uuid4().hex[:6]}"
    inp = RtMidiInput(router.handle, name="in", client_name=name)
    inp.start()
    backend = mido.Backend("mido.backends.rtmidi/UNIX_JACK", load=True)
    out = backend.open_output("out", virtual=True, client_name=f"{name}-send")
    patch = jack.Client(f"{name}-patch", no_start_server=True, servername=server)
    patch.connect(f"{name}-send:out", f"{name}:in")
    sent: list[tuple[int, int]] = []

    def blast() -> None:
        time.sleep(0.3)
        for i in range(n):
            t = time.monotonic_ns()
            out.send(mido.Message("control_change", control=1, value=i % 128))
            sent.append((i % 128, t))
            time.sleep(0.01)

    thread = threading.Thread(target=blast)
    thread.start()
    while thread.is_alive():
        await asyncio.sleep(0.05)
    result = await _collect_cc(sent, applied, 5)
    out.close()
    patch.close()
    inp.close()
    return result


def start_jackd() -> tuple[str | None, subprocess.Popen[bytes] | None]:
    name = os.environ.get("JACK_DEFAULT_SERVER")
    if name:
        return name, None
    if shutil.which("jackd") is None:
        return None, None
    name = f"riff-bench-{uuid.uuid4().hex[:8]}"
    proc = subprocess.Popen(["jackd", "-n", name, "-d", "dummy", "-r", "48000", "-p", "256"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import jack

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            jack.Client("bench-probe", no_start_server=True, servername=name).close()
            return name, proc
        except jack.JackOpenError:
            time.sleep(0.05)
    proc.terminate()
    return None, None


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"rate_msgs_per_s": args.rate, "messages": args.messages}
    result["osc"] = await bench_osc(args.messages, args.rate)
    result["osc_baseline_python_osc_bare"] = await bench_python_osc(args.messages, args.rate)
    os.environ["JACK_NO_START_SERVER"] = "1"
    server, proc = start_jackd()
    try:
        if server is None and proc is None and not os.environ.get("JACK_DEFAULT_SERVER"):
            result["midi"] = "skipped: jackd not available"
        else:
            result["midi_jack"] = await bench_jack_midi(server, args.midi_messages)
            result["midi_jack_baseline_bare_client"] = await bench_jack_baseline(
                server, args.midi_messages)
            result["midi_rtmidi_jack"] = await bench_rtmidi(server, args.midi_messages)
            result["jack_period_ms"] = round(256 / 48000 * 1000, 3) if proc else None
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000, help="OSC messages per run")
    parser.add_argument("--rate", type=float, default=1000.0, help="OSC messages per second")
    parser.add_argument("--midi-messages", type=int, default=300, help="MIDI CCs per run")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main_async(args)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
