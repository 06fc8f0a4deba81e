"""Helpers for the control-surface tests: an engine double, a served loop, a UDP client.

The engine double holds a real EngineState; only play/stop/status are stand-ins for the
engine facade (they record calls and report a settable status).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

from pythonosc.osc_message import OscMessage
from pythonosc.osc_packet import OscPacket

from engine.live.state import EngineState
from engine.presets import PresetLibrary
from protocols.control_target import Commands, ImageIdCheck
from protocols.osc.server import OscConfig, OscServer, build_message

T = TypeVar("T")


class EngineDouble:
    """Real parameter state; play/stop counted; status from a dict the test sets."""

    def __init__(self) -> None:
        self.state = EngineState()
        self.plays = 0
        self.stops = 0
        self.status_values: dict[str, int | float | str] = {
            "bar": 0, "queue": 0, "late": 0, "progress": 0.0, "clip": "", "jobs_done": 0}

    def play(self) -> None:
        self.plays += 1

    def stop(self) -> None:
        self.stops += 1

    def status(self) -> dict[str, int | float | str]:
        return dict(self.status_values)


class LoopThread:
    """An asyncio loop in a thread, so tests can use blocking sockets against it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[], T], timeout: float = 30) -> T:
        async def wrapper() -> T:
            return fn()
        return self.run(wrapper(), timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Client:
    """A UDP OSC client bound to its own port, so replies come back to it."""

    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(10)

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def send(self, address: str, *args: Any) -> None:
        self.sock.sendto(build_message(address, args), self.server)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendto(data, self.server)

    def recv(self) -> list[OscMessage]:
        data, _ = self.sock.recvfrom(65536)
        return [m.message for m in OscPacket(data).messages]

    def messages_until_pong(self) -> list[tuple[str, list[Any]]]:
        """Send /riff/ping and collect everything received up to the pong."""
        self.send("/riff/ping")
        out: list[tuple[str, list[Any]]] = []
        while True:
            for m in self.recv():
                if m.address == "/riff/pong":
                    return out
                out.append((m.address, list(m.params)))

    def close(self) -> None:
        self.sock.close()


class Served:
    """A running OSC server with an engine double, on an ephemeral port.

    ``image_ids``: the seed image id check (``protocols.control_target.library_id_check``);
    without it only the ids' form is checked.
    """

    def __init__(self, preset_dir: Path, config: OscConfig | None = None,
                 image_ids: ImageIdCheck | None = None) -> None:
        self.lt = LoopThread()
        self.engine = EngineDouble()
        self.commands = Commands(self.engine, PresetLibrary([preset_dir]), image_ids=image_ids)

        async def start() -> OscServer:
            return await OscServer.start(self.commands, config or OscConfig(port=0))

        self.server = self.lt.run(start())
        self.addr = self.server.address
        self.clients: list[Client] = []

    def client(self) -> Client:
        c = Client(self.addr)
        self.clients.append(c)
        return c

    def close(self) -> None:
        for c in self.clients:
            c.close()
        self.lt.run(self.server.close())
        self.lt.close()


def served(preset_dir: Path, config: OscConfig | None = None,
           image_ids: ImageIdCheck | None = None) -> Iterator[Served]:
    s = Served(preset_dir, config, image_ids)
    try:
        yield s
    finally:
        s.close()
