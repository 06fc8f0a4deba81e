"""Sonic Pi's server (3.2, as Debian's sonic-pi-server ships it) headless, for the examples check.

The server boots its own scsynth, which needs a JACK server: a private `jackd -d dummy` is
started for it. Code runs as the GUI runs it (`/run-code <gui id> <code>` over OSC); what the
server tells the GUI (errors included) arrives on a socket of ours and is kept.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

from pythonosc.osc_packet import OscPacket

from protocols.osc.server import build_message


def _free_udp_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        socks.append(sock)
    ports = [int(s.getsockname()[1]) for s in socks]
    for s in socks:
        s.close()
    return ports


class SonicPi:
    """``with SonicPi(server_rb, tmp) as pi: pi.run_code(...)``."""

    def __init__(self, server_rb: Path, tmp: Path) -> None:
        self.server_rb = server_rb
        self.tmp = tmp
        self.gui = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.gui.bind(("127.0.0.1", 0))
        self.gui.settimeout(0.2)
        self.from_server: list[tuple[str, list[Any]]] = []
        self._stop = threading.Event()
        self._procs: list[subprocess.Popen[str]] = []
        self.log: list[str] = []

    def __enter__(self) -> SonicPi:
        jack_name = f"riff-sonic-pi-{uuid.uuid4().hex[:6]}"
        env = {**os.environ, "HOME": str(self.tmp), "JACK_DEFAULT_SERVER": jack_name,
               "JACK_NO_START_SERVER": "1"}
        self._procs.append(subprocess.Popen(
            ["jackd", "-n", jack_name, "-d", "dummy", "-r", "48000", "-p", "1024"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
            start_new_session=True))
        time.sleep(1.0)
        server_port, scsynth, cues, erlang, midi_out, midi_in, ws = _free_udp_ports(7)
        self.port = server_port
        gui_port = int(self.gui.getsockname()[1])
        proc = subprocess.Popen(
            ["ruby", str(self.server_rb), "-u", str(server_port), str(gui_port), str(scsynth),
             str(scsynth), str(cues), str(erlang), str(midi_out), str(midi_in), str(ws)],
            env=env, cwd=self.tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, start_new_session=True)
        self._procs.append(proc)
        threading.Thread(target=self._listen, daemon=True).start()
        booted = threading.Event()

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                self.log.append(line.rstrip("\n"))
                if "successfully booted" in line:
                    booted.set()

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + 120
        while not booted.wait(0.5):
            if proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise AssertionError("Sonic Pi's server did not boot:\n"
                                     + "\n".join(self.log[-30:]))
        return self

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                data, _ = self.gui.recvfrom(65536)
            except (TimeoutError, OSError):
                continue
            try:
                messages = OscPacket(data).messages
            except Exception:
                continue
            self.from_server.extend((m.message.address, list(m.message.params))
                                    for m in messages)

    def send(self, address: str, *args: Any) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(build_message(address, args), ("127.0.0.1", self.port))

    def run_code(self, code: str) -> None:
        """Run a buffer, as the GUI's Run button does."""
        self.send("/run-code", "riff-check", code)

    def stop(self) -> None:
        """Stop every running job, as the GUI's Stop button does."""
        self.send("/stop-all-jobs", "riff-check")

    def errors(self) -> list[tuple[str, list[Any]]]:
        return [m for m in self.from_server if "error" in m[0]]

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self.send("/exit", "riff-check")
        except OSError:
            pass
        time.sleep(2.0)
        # The server logs each helper it starts (scsynth, erlang, MIDI bridges) with its pid;
        # some leave the server's session, so they are stopped one by one.
        for line in self.log:
            m = re.match(r"Started \[(\d+)\]", line)
            if m:
                try:
                    os.kill(int(m.group(1)), signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for proc in reversed(self._procs):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        self._stop.set()
        self.gui.close()
