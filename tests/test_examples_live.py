"""Each controller example runs in its real tool against a real daemon, over real UDP.

A `riff run` daemon (test-tones generator, real-time file output, 1-bar clips) listens on a
free loopback port; the example file, with only its port changed, runs in its tool: Pure Data
(`pd -nogui`, the patch's boxes clicked with the canvas's own mouse messages), SuperCollider
(`sclang`, the file's blocks evaluated in order), TidalCycles (`ghci` with the Tidal library,
the file fed as an editor would) and Sonic Pi (its headless server, the buffer run over OSC).
A relay between tool and daemon keeps every datagram the tool sends (bundles are seen as
bundles). The checks read the engine's state (`/riff/state`), its feedback to a subscriber and
its log: the prompt changed, clips rendered at the alpha the tool sent between the tool's
prompts A and B, bundles applied, and no message refused.

A tool that is not installed skips its test and says which Debian packages bring it;
`scripts/check_examples` installs them all and runs this file.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pythonosc.osc_packet import OscPacket

from protocols.osc.server import build_message
from tests.control_surface_helpers import Client
from tests.riff_process import RiffProcess

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
CLIP = re.compile(r"bar \d+: clip \d+ \(alpha ([\d.]+), (.*) -> (.*)\)$", re.M)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Relay:
    """A UDP relay on its own loopback port: keeps what the tool sends and forwards it to the
    daemon; replies go back to the tool's socket. Messages under ``/riff-check/`` are the test
    harness's own: kept in ``marks``, not forwarded."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.packets: list[bytes] = []
        self.marks: list[str] = []
        self._peer: Any = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65536)
            except (TimeoutError, OSError):
                continue
            if addr == self.target:
                if self._peer is not None:
                    self.sock.sendto(data, self._peer)
            elif data.startswith(b"/riff-check/"):
                self._peer = addr
                self.marks.append(data.split(b"\0", 1)[0].decode())
            else:
                self._peer = addr
                self.packets.append(data)
                self.sock.sendto(data, self.target)

    def wait_mark(self, mark: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while mark not in self.marks:
            assert time.monotonic() < deadline, f"no {mark} from the tool"
            time.sleep(0.05)

    def settle(self, quiet: float = 0.5, timeout: float = 30) -> None:
        """Wait until nothing has arrived for ``quiet`` seconds (all forwarded)."""
        deadline = time.monotonic() + timeout
        count = -1
        while count != len(self.packets) + len(self.marks):
            assert time.monotonic() < deadline, "the tool keeps sending"
            count = len(self.packets) + len(self.marks)
            time.sleep(quiet)

    def reply(self, address: str) -> None:
        """Send a bare message to the tool's socket."""
        self.sock.sendto(build_message(address, ()), self._peer)

    def messages(self) -> list[tuple[str, list[Any]]]:
        return [(m.message.address, list(m.message.params))
                for p in list(self.packets) for m in OscPacket(p).messages]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


class Watcher:
    """A subscribed client that keeps every feedback message."""

    def __init__(self, server: tuple[str, int]) -> None:
        self.client = Client(server)
        self.client.sock.settimeout(0.2)
        self.seen: list[tuple[str, list[Any]]] = []
        self._stop = threading.Event()
        self.client.send("/riff/subscribe")
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                messages = self.client.recv()
            except (TimeoutError, OSError):
                continue
            self.seen.extend((m.address, list(m.params)) for m in messages)

    def values(self, address: str) -> list[Any]:
        return [args[0] for a, args in list(self.seen) if a == address and args]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.client.close()


class Engine(RiffProcess):
    """`riff run` (test-tones, real-time file output) on a free port, a relay in front of it
    for the tool and a subscribed watcher."""

    def __init__(self, tmp: Path) -> None:
        self.port = _free_port()
        super().__init__("run", "--model", "test-tones", "--tempo", "240", "--bars", "1",
                         "--steps", "2", "--crossfade-ms", "0",
                         "--output", str(tmp / "live.wav"), "--takes-dir", str(tmp / "takes"),
                         "--osc-host", "127.0.0.1", "--osc-port", str(self.port))
        self.wait_for(lambda t: "OSC listening" in t)
        self.addr = ("127.0.0.1", self.port)
        self.relay = Relay(self.addr)
        self.watcher = Watcher(self.addr)

    def state(self) -> dict[str, Any]:
        """Every parameter, by address, as the engine answers /riff/state."""
        client = Client(self.addr)
        try:
            client.send("/riff/state")
            return {a: args[0] for a, args in client.messages_until_pong() if args}
        finally:
            client.close()

    def clips(self) -> list[tuple[str, str, str]]:
        """(alpha as logged, prompt A, prompt B) of every clip the scheduler started."""
        return CLIP.findall(self.text())

    def wait_for_clip(self, alpha: float, a: str, b: str, timeout: float = 60) -> None:
        want = (f"{alpha:.2f}", a, b)
        self.wait_for(lambda _: want in self.clips(), timeout)

    def assert_nothing_refused(self) -> None:
        refused = [ln for ln in self.text().splitlines() if "refused" in ln]
        assert not refused, refused
        assert "/riff/error" not in [a for a, _ in self.watcher.seen]

    def close(self) -> None:
        self.relay.close()
        self.watcher.close()
        assert self.finish() == 0, self.text()[-3000:]


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = Engine(tmp_path)
    try:
        yield eng
    finally:
        eng.close()


def _missing(why: str) -> None:
    """Skip (fail under scripts/check_examples, which sets RIFF_EXAMPLES_STRICT)."""
    message = f"{why}; scripts/check_examples installs every tool"
    if os.environ.get("RIFF_EXAMPLES_STRICT"):
        pytest.fail(message)
    pytest.skip(message)


def _need(tool: str, packages: str) -> str:
    path = shutil.which(tool)
    if path is None:
        _missing(f"{tool} is not installed (Debian: apt-get install {packages})")
    assert path is not None
    return path


def _run(cmd: list[str], timeout: float, **kw: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    return done


def _alpha_followed(engine: Engine, a: str, b: str) -> None:
    """Clips between the tool's prompts rendered at alphas the tool set (as fed back)."""
    state = engine.state()
    assert state["/riff/alpha/auto"] in (0, False)
    assert (state["/riff/prompt/a"], state["/riff/prompt/b"]) == (a, b)
    engine.wait_for_clip(state["/riff/alpha"], a, b)
    sent = {f"{v:.2f}" for v in engine.watcher.values("/riff/alpha")}
    heard = {alpha for alpha, pa, pb in engine.clips() if (pa, pb) == (a, b)}
    assert heard and heard <= sent | {"0.00"}, (heard, sent)


# -- Pure Data ---------------------------------------------------------------------------

PD_BOX = re.compile(r"^#X (obj|msg) (\d+) (\d+) (.*)$")


def _pd_boxes(text: str) -> list[tuple[str, int, int, str]]:
    out = []
    for entry in text.split(";\n"):
        m = PD_BOX.match(entry)
        if m:
            out.append((m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)))
    return out


def _pd_click(text: str, match: str, frac: float | None = None) -> str:
    """The canvas mouse messages of a click on the first box whose text matches ``match``;
    for a horizontal slider, at ``frac`` of its width."""
    found = [b for b in _pd_boxes(text) if re.search(match, b[3])]
    assert found, match
    _, x, y, body = found[0]
    if body.startswith("hsl"):
        assert frac is not None
        width, height = (int(v) for v in body.split()[1:3])
        cx, cy = x + round(frac * (width - 1)), y + height // 2
    else:
        cx, cy = x + 6, y + 6
    return f"pd-riff.pd mouse {cx} {cy} 1 0; pd-riff.pd mouseup {cx} {cy} 1"


def _pd(engine: Engine, tmp: Path, clicks: list[str]) -> None:
    text = (EXAMPLES / "riff.pd").read_text()
    assert "connect localhost 9000" in text
    patch = tmp / "riff.pd"
    patch.write_text(text.replace("connect localhost 9000",
                                  f"connect localhost {engine.relay.port}"))
    sends = "; ".join([*clicks, "pd quit"])
    done = _run(["pd", "-nogui", "-noaudio", "-nomidi", "-stderr", "-send", sends, str(patch)],
                60)
    assert done.returncode == 0, done.stderr
    assert "error" not in done.stderr.lower(), done.stderr
    engine.relay.settle()


def test_pd_patch(engine: Engine, tmp_path: Path) -> None:
    _need("pd", "puredata-core")
    text = (EXAMPLES / "riff.pd").read_text()
    _pd(engine, tmp_path, [
        _pd_click(text, r"empty stop "), _pd_click(text, r"empty play "),
        _pd_click(text, r"denoising", 0.3),
        _pd_click(text, r"empty empty alpha ", 0.6),
        _pd_click(text, r"^symbol dub\\ techno"),  # the /riff/prompt box (auto mode's)
    ])
    sent = engine.relay.messages()
    assert ("/riff/play", []) in sent and ("/riff/stop", []) in sent  # bare messages
    engine.wait_for(lambda t: re.search(r"INFO engine.live.control: stop\n(.*\n)*.*play: ", t)
                    is not None, 30)
    state = engine.state()
    assert state["/riff/prompt"] == "dub techno chords"
    assert state["/riff/denoising"] == pytest.approx(0.3, abs=0.01)
    assert state["/riff/alpha"] == pytest.approx(0.6, abs=0.01)
    _alpha_followed(engine, "lo-fi hip hop beat", "dub techno chords")
    # The knob again (no second A/B), then auto alpha back on.
    # A fresh patch: its first alpha move sets A/B and manual mode, the next only alpha.
    before = len(engine.relay.messages())
    _pd(engine, tmp_path, [_pd_click(text, r"empty empty alpha ", 0.45),
                           _pd_click(text, r"empty empty alpha ", 0.35)])
    second = [a for a, _ in engine.relay.messages()[before:]]
    assert second.count("/riff/prompt/a") == 1 and second.count("/riff/alpha") == 2, second
    engine.wait_for_clip(engine.state()["/riff/alpha"], "lo-fi hip hop beat",
                         "dub techno chords")
    _pd(engine, tmp_path, [_pd_click(text, r"auto\\ alpha")])
    assert engine.state()["/riff/alpha/auto"] in (1, True)
    engine.assert_nothing_refused()


# -- SuperCollider -----------------------------------------------------------------------

def _scd_blocks(text: str) -> list[str]:
    """The file's top-level pieces as a user evaluates them: `( ... )` blocks and lines."""
    blocks: list[str] = []
    current: list[str] | None = None
    for line in text.splitlines():
        if current is not None:
            current.append(line)
            if line == ")":
                blocks.append("\n".join(current))
                current = None
        elif line == "(":
            current = [line]
        elif line.strip() and not line.lstrip().startswith("//"):
            blocks.append(line)
    assert current is None
    return blocks


def test_supercollider_file(engine: Engine, tmp_path: Path) -> None:
    sclang = _need("sclang", "supercollider-language")
    text = (EXAMPLES / "riff.scd").read_text()
    assert 'NetAddr("127.0.0.1", 9000)' in text
    text = text.replace('NetAddr("127.0.0.1", 9000)',
                        f'NetAddr("127.0.0.1", {engine.relay.port})')
    subscribe, scene, sweep, bundle, stop = _scd_blocks(text)
    assert "sendBundle" in bundle
    harness = tmp_path / "harness.scd"
    # The blocks in order; after the sweep starts, the harness tells the test and waits for
    # its go (once clips have rendered at the sweep's alphas), then sends the bundle and stops.
    wait_for_go = ('~go = Condition.new; OSCFunc({ ~go.unhang }, "/riff-check/go"); '
                   '~riff.sendMsg("/riff-check/sweeping"); ~go.hang')
    harness.write_text("fork {\n" + ";\n".join(b.rstrip().rstrip(";") for b in [
        subscribe, "1.wait", scene, "1.wait", sweep, wait_for_go, bundle, "2.wait",
        "\"RIFF CHECK: stopping\".postln", stop, "1.wait", "0.exit"]) + ";\n};\n")
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "QTWEBENGINE_DISABLE_SANDBOX": "1"}
    a, b = "lo-fi hip hop beat, dusty vinyl", "dub techno chords"
    with subprocess.Popen([sclang, str(harness)], env=env, cwd=tmp_path, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
        try:
            engine.relay.wait_mark("/riff-check/sweeping", 60)
            engine.wait_for(lambda _: len({al for al, pa, pb in engine.clips()
                                           if (pa, pb) == (a, b)}) >= 2, 90)
            engine.relay.reply("/riff-check/go")
            out, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, "")
    engine.relay.settle()
    assert "RIFF CHECK: stopping" in done.stdout, done.stdout[-3000:]
    assert "riff error" not in done.stdout and "ERROR" not in done.stdout, done.stdout[-3000:]
    # Feedback reached sclang's own port (OSCdef on /riff/status/bar).
    assert re.search(r"^bar \d+$", done.stdout, re.M), done.stdout[-3000:]
    # The bundle went as a bundle and was applied.
    assert any(p.startswith(b"#bundle") for p in engine.relay.packets)
    state = engine.state()
    assert state["/riff/prompt"] == "acid techno with squelchy 303"
    assert state["/riff/denoising"] == pytest.approx(0.7)
    assert state["/riff/tempo"] == 90 and state["/riff/alpha/auto"] in (1, True)
    heard = {alpha for alpha, pa, pb in engine.clips() if (pa, pb) == (a, b)}
    sent = {f"{v:.2f}" for v in engine.watcher.values("/riff/alpha")}
    assert len(heard) >= 2 and heard <= sent, (heard, sent, engine.text()[-4000:])
    assert ("/riff/stop", []) in engine.relay.messages()
    engine.assert_nothing_refused()


# -- TidalCycles -------------------------------------------------------------------------

def _tidal_missing() -> str | None:
    if shutil.which("ghci") is None:
        return "ghci is not installed"
    done = _run(["ghc-pkg", "list", "--simple-output", "tidal"], 60)
    return None if "tidal-" in done.stdout else "the tidal library is not installed"


def test_tidal_file(engine: Engine, tmp_path: Path) -> None:
    missing = _tidal_missing()
    if missing:
        _missing(f"{missing} (Debian: apt-get install ghc libghc-tidal-dev)")
    text = (EXAMPLES / "riff.tidal").read_text()
    assert "oPort = 9000" in text
    text = text.replace("oPort = 9000", f"oPort = {engine.relay.port}")
    script = (":set -XOverloadedStrings\nimport Sound.Tidal.Context\n"
              "import Control.Concurrent (threadDelay)\n" + text
              + "\nthreadDelay 14000000\n:quit\n")
    done = _run(["ghci", "-v0"], 180, input=script, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    engine.relay.settle()
    assert "error" not in (done.stdout + done.stderr).lower(), done.stdout + done.stderr
    # Pre BundleStamp: every datagram is a timestamped bundle.
    assert engine.relay.packets and all(p.startswith(b"#bundle") for p in engine.relay.packets)
    state = engine.state()
    assert state["/riff/tempo"] == 90
    assert state["/riff/prompt"] in ("lo-fi hip hop beat", "dub techno chords",
                                     "bossa nova guitar")
    assert 42 <= state["/riff/seed"] <= 45
    _alpha_followed(engine, "lo-fi hip hop beat", "dub techno chords")
    engine.assert_nothing_refused()


# -- Sonic Pi ----------------------------------------------------------------------------

SONIC_PI_SERVER = Path("/usr/lib/sonic-pi/app/server/ruby/bin/sonic-pi-server.rb")


def test_sonic_pi_buffer(engine: Engine, tmp_path: Path) -> None:
    if not SONIC_PI_SERVER.exists() or shutil.which("ruby") is None:
        _missing("sonic-pi-server is not installed (Debian: apt-get install sonic-pi-server)")
    _need("jackd", "jackd2")
    from tests.sonic_pi import SonicPi

    text = (EXAMPLES / "riff.pi").read_text()
    assert 'use_osc "127.0.0.1", 9000' in text
    code = text.replace('use_osc "127.0.0.1", 9000', f'use_osc "127.0.0.1", {engine.relay.port}')
    a, b = "funk bassline with a jazzy saxophone solo", "reggae dub with heavy bass"
    with SonicPi(SONIC_PI_SERVER, tmp_path) as pi:
        pi.run_code(code)
        engine.wait_for(lambda _: len({al for al, pa, pb in engine.clips()
                                       if (pa, pb) == (a, b)}) >= 2, 120)
        state = engine.state()
        pi.stop()
        errors = pi.errors()
    assert not errors, errors
    sent = engine.relay.messages()
    # Sonic Pi sends each message at its scheduled time from its own thread: no fixed order.
    assert {("/riff/tempo", (90.0,)), ("/riff/alpha/auto", (0,)), ("/riff/play", ())} <= {
        (addr, tuple(args)) for addr, args in sent}
    assert state["/riff/tempo"] == 90 and state["/riff/alpha/auto"] in (0, False)
    # tick starts at 0: the first pair is the ring's first two prompts.
    assert ("/riff/prompt/a", [a]) in sent and ("/riff/prompt/b", [b]) in sent
    assert "/riff/prompt" not in [addr for addr, _ in sent]
    heard = {al for al, pa, pb in engine.clips() if (pa, pb) == (a, b)}
    alphas = {f"{v:.2f}" for v in engine.watcher.values("/riff/alpha")}
    assert heard <= alphas, (heard, alphas)
    engine.assert_nothing_refused()
