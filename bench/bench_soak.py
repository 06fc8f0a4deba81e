"""Soak: a long set with a take recorded throughout and OSC changes every 100 ms.

Runs the real daemon (``riff run``, real-time file output, ``--model test-tones`` by default,
so it runs anywhere; ``--model tiny`` for the tiny diffusion model) and, for ``--minutes``:

- sends a parameter change every ``--interval`` seconds (alpha, guidance, seed, now and then
  a prompt, over OSC from a subscribed client) and a ``/riff/ping`` with each, timing the pong;
- records one take from start to end (``/riff/record/start`` ... ``/riff/record/stop``);
- samples the daemon's and its worker's RSS and open file descriptors every second.

Then it checks the daemon's log and the take. Prints JSON: OSC errors received, ping round
trips, clips started and late, the take's length against the wall time between the start and
stop replies, RSS and fd growth after warm-up, and how long the stop reply took.

    python bench/bench_soak.py [--minutes 30] [--model test-tones]

``soak()`` is what ``tests/test_soak.py`` runs for 30 seconds in CI.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import soundfile as sf  # noqa: E402
from pythonosc.osc_packet import OscPacket  # noqa: E402

from protocols.osc.server import build_message  # noqa: E402

RATE = 48000
PROMPTS = ("lo-fi hip hop beat", "church bells", "acid bass line", "jazz piano")


class Daemon:
    """``riff run`` as a subprocess whose log lines are kept (reader thread)."""

    def __init__(self, args: list[str]) -> None:
        env = {**os.environ, "JACK_NO_START_SERVER": "1", "PYTHONUNBUFFERED": "1",
               "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "protocols.cli", "run", *args],
                                     cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def text(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def wait_for(self, needle: str, timeout: float = 120.0) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: needle in "\n".join(self.lines)
                                       or self.proc.poll() is not None, timeout) \
                    or needle not in "\n".join(self.lines):
                raise RuntimeError(f"{needle!r} not seen; log:\n" + "\n".join(self.lines[-30:]))

    def finish(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


class OscClient:
    """A UDP client that keeps every reply it receives (reader thread)."""

    def __init__(self, port: int) -> None:
        self.server = ("127.0.0.1", port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.errors: list[list[Any]] = []
        self.replies: dict[str, list[tuple[float, list[Any]]]] = {}
        self._cond = threading.Condition()
        self._closed = False
        threading.Thread(target=self._read, daemon=True).start()

    def send(self, address: str, *args: Any) -> None:
        self.sock.sendto(build_message(address, args), self.server)

    def _read(self) -> None:
        while not self._closed:
            try:
                data, _ = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            now = time.monotonic()
            for timed in OscPacket(data).messages:
                m = timed.message
                with self._cond:
                    if m.address == "/riff/error":
                        self.errors.append(list(m.params))
                    self.replies.setdefault(m.address, []).append((now, list(m.params)))
                    self._cond.notify_all()

    def wait_reply(self, address: str, count: int, timeout: float = 60.0
                   ) -> tuple[float, list[Any]]:
        """The ``count``-th reply at ``address`` (1-based) with its arrival time."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.replies.get(address, [])) >= count,
                                       timeout):
                raise RuntimeError(f"no {address} reply (errors: {self.errors[-3:]})")
            return self.replies[address][count - 1]

    def count(self, address: str) -> int:
        with self._cond:
            return len(self.replies.get(address, []))

    def close(self) -> None:
        self._closed = True
        self.sock.close()


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _rss_and_fds(pid: int) -> tuple[int, int, set[str]]:
    """(RSS in bytes, open fds, clip slot segments) of ``pid`` and its children together.

    The fds that map the daemon's clip slots in ``/dev/shm`` (:mod:`engine.live.shm`) are
    counted apart, as the set of segment names: the pool makes a second slot the first time
    two clips are in flight at once, which may happen minutes into a take and is bounded, not
    a leak. Every other fd must stay level."""
    rss = fds = 0
    slots: set[str] = set()
    for p in [pid, *_children(pid)]:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1]) * 1024
            for fd in os.listdir(f"/proc/{p}/fd"):
                try:
                    target = os.readlink(f"/proc/{p}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith("/dev/shm/riff-"):
                    slots.add(target)
                else:
                    fds += 1
    return rss, fds, slots


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def soak(seconds: float, workdir: Path, *, model: str = "test-tones", interval: float = 0.1,
         warmup_s: float = 5.0) -> dict[str, Any]:
    """Run the soak for ``seconds`` of recording in ``workdir``; returns the figures."""
    port = free_udp_port()
    takes = workdir / "takes"
    daemon = Daemon(["--model", model, "--device", "cpu", "--tempo", "240", "--bars", "1",
                     "--steps", "2", "--crossfade-ms", "5", "--output", str(workdir / "live.wav"),
                     "--takes-dir", str(takes), "--osc-host", "127.0.0.1",
                     "--osc-port", str(port)])
    client: OscClient | None = None
    samples: list[tuple[float, int, int]] = []
    slots: set[str] = set()
    max_slots = 0
    rtts: list[float] = []
    sent = 0
    try:
        daemon.wait_for("OSC listening")
        client = OscClient(port)
        client.send("/riff/subscribe")
        daemon.wait_for("clip 1 started", timeout=300)
        client.send("/riff/record/start", "soak")
        started_at, started = client.wait_reply("/riff/record/started", 1)
        assert started == ["soak.wav"], started
        t0 = time.monotonic()
        next_at = t0
        n = 0
        last_sample = 0.0
        while True:
            now = time.monotonic()
            if now - t0 >= seconds:
                break
            n += 1
            if n % 20 == 0:
                client.send("/riff/prompt", PROMPTS[(n // 20) % len(PROMPTS)])
            elif n % 3 == 0:
                client.send("/riff/guidance", 5.0 + (n % 7))
            elif n % 3 == 1:
                client.send("/riff/alpha", (n % 11) / 10.0)
            else:
                client.send("/riff/seed", 1000 + n)
            pings_before = client.count("/riff/pong")
            ping_at = time.monotonic()
            client.send("/riff/ping")
            sent += 2
            with contextlib.suppress(RuntimeError):
                got_at, _ = client.wait_reply("/riff/pong", pings_before + 1, timeout=interval)
                rtts.append((got_at - ping_at) * 1000)
            if now - last_sample >= 1.0:
                rss, fds, slots = _rss_and_fds(daemon.proc.pid)
                samples.append((now - t0, rss, fds))
                max_slots = max(max_slots, len(slots))
                last_sample = now
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))
        stop_sent = time.monotonic()
        client.send("/riff/record/stop")
        stopped_at, stopped = client.wait_reply("/riff/record/stopped", 1)
        assert stopped == ["soak.wav", "soak.jsonl"], stopped
        errors = list(client.errors)
    finally:
        if client is not None:
            client.close()
        rc = daemon.finish()
    log = daemon.text()
    info = sf.info(takes / "soak.wav")
    take_s = info.frames / info.samplerate
    wall_s = stopped_at - started_at - (stopped_at - stop_sent)  # start reply .. stop sent
    summary = re.findall(r"stopped: (\d+) clips started, (\d+) late, (\d+) xruns, "
                         r"(\d+) worker restarts", log)
    clips, _late, _xruns, restarts = (int(x) for x in summary[-1]) if summary else (0, -1, -1, -1)
    off_grid = re.findall(r"(\d+) started after their bar line", log)
    late = int(off_grid[-1]) if off_grid else -1
    warm = [s for s in samples if s[0] >= warmup_s] or samples
    late_lines = [int(x) for x in re.findall(r"\| late (\d+) \|", log)]
    return {
        "seconds": round(seconds, 1), "model": model, "exit_status": rc,
        "osc_sent": sent, "osc_errors": len(errors), "osc_error_examples": errors[:3],
        "status_errors": len(re.findall(r"status error:", log)),
        "ping_rtt_ms": {"p50": round(_pct(rtts, 0.5), 2), "p99": round(_pct(rtts, 0.99), 2),
                        "max": round(max(rtts, default=float("nan")), 2),
                        "answered": len(rtts)},
        # late_clips: clips that started after their bar line (the player's count; must be 0).
        # bars_waited: bar lines where the clip for the latest change was not ready yet, so
        # the current one played again (the scheduler's "late"; latest wins, never silence).
        "clips_started": clips, "late_clips": late,
        "bars_waited": max(late_lines, default=0), "worker_restarts": restarts,
        "take_s": round(take_s, 4), "wall_s": round(wall_s, 4),
        "take_minus_wall_ms": round((take_s - wall_s) * 1000, 1),
        "stop_reply_ms": round((stopped_at - stop_sent) * 1000, 1),
        "rss_mb": {"after_warmup": round(warm[0][1] / 2**20, 1),
                   "end": round(samples[-1][1] / 2**20, 1),
                   "max": round(max(s[1] for s in samples) / 2**20, 1),
                   "growth": round((samples[-1][1] - warm[0][1]) / 2**20, 1)},
        "fds": {"after_warmup": warm[0][2], "end": samples[-1][2],
                "max": max(s[2] for s in samples), "growth": samples[-1][2] - warm[0][2]},
        # Clip slot segments in /dev/shm (not counted in fds): bounded by the pool.
        "clip_slots": {"end": len(slots), "max": max_slots},
        "samples": len(samples),
        "log_tail": log.splitlines()[-3:],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--model", default="test-tones")
    parser.add_argument("--interval", type=float, default=0.1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="riff-soak-") as tmp:
        result = soak(args.minutes * 60, Path(tmp), model=args.model, interval=args.interval)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
