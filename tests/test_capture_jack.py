"""Live input as seed end to end: `riff run --input` on a private dummy JACK server, a JACK
client in this process playing a known signal into the engine's input ports, `/riff/capture`
over real UDP OSC; the captured seed image, decoded by the engine's codec, is the bar of the
signal that began on the engine's bar line."""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path
from typing import Any

import jack
import numpy as np
import pytest

from engine.dsp.phase import mel_to_audio
from engine.dsp.spectrogram import image_to_mel, load_image, read_loop_meta
from tests.test_capture import envelope, lag_correlation, pattern
from tests.test_daemon_osc import Daemon

pytestmark = [pytest.mark.jack, pytest.mark.slow]

RATE = 48000
BAR = 48000  # 240 BPM, 4/4
CLIP_START = re.compile(r"clip (\d+) started at sample (\d+) \(bar (-?\d+), JACK frame (\d+)\)")
CAPTURED = re.compile(r"capture (\S+): 1 bar\(s\) at sample (\d+) \(bar (\d+), JACK frame "
                      r"(\d+), (\d+) frames lost\) saved to")


class SignalPlayer:
    """A JACK client playing ``signal`` (channels, period) as a function of the JACK frame
    time: frame ``f`` plays ``signal[:, f % period]``. It notes every cycle whose frame time
    does not follow the previous one (an xrun that skipped frames)."""

    def __init__(self, server: str, signal: np.ndarray) -> None:
        self.client = jack.Client(f"sig-{uuid.uuid4().hex[:6]}", no_start_server=True,
                                  servername=server)
        assert self.client.samplerate == RATE
        self.period = signal.shape[1]
        self.ext = np.concatenate([signal, signal[:, :8192]], axis=1)
        self.ports = [self.client.outports.register(n) for n in ("out_L", "out_R")]
        self.last = -1
        self.jumps: list[int] = []
        self.client.set_process_callback(self._process)

    def _process(self, frames: int) -> None:
        """Thread: JACK's process thread; copies from the prepared signal."""
        now = self.client.last_frame_time
        if self.last >= 0 and now != self.last + frames:
            self.jumps.append(now)
        self.last = now
        i = now % self.period
        for ch, port in enumerate(self.ports):
            port.get_array()[:] = self.ext[ch, i:i + frames]

    def start(self, targets: list[str]) -> None:
        self.client.activate()
        for port, target in zip(self.ports, targets, strict=True):
            self.client.connect(port, target)

    def close(self) -> None:
        self.client.deactivate()
        self.client.close()


def replies(daemon: Daemon, *messages: tuple[Any, ...]) -> list[tuple[str, list[Any]]]:
    """Send ``messages`` and collect every reply up to the pong after them."""
    for message in messages:
        daemon.osc.send(*message)
    return daemon.osc.messages_until_pong()


def wait_reply(daemon: Daemon, want: str, timeout: float = 40.0) -> list[Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in daemon.osc.recv():
            if m.address == want:
                return list(m.params)
            assert m.address != "/riff/error", m.params
    raise AssertionError(f"no {want}; log:\n" + daemon.text()[-3000:])


@pytest.mark.parametrize("ahead", ["2048", "0"], ids=["compiled-player", "python-callback"])
def test_capture_records_the_bar_played_into_the_input(jack_server: str, tmp_path: Path,
                                                       ahead: str) -> None:
    name = f"riff-cap-{uuid.uuid4().hex[:6]}"
    captures = tmp_path / "captures"
    signal = pattern(RATE)
    daemon = Daemon("--model", "test-tones", "--tempo", "240", "--bars", "1", "--steps", "2",
                    "--input", "--jack-server", jack_server, "--client-name", name,
                    "--no-connect", "--crossfade-ms", "10", "--capture-dir", str(captures),
                    "--record", str(tmp_path / "takes"), "--render-ahead", ahead)
    player = SignalPlayer(jack_server, signal)
    try:
        daemon.wait_for(lambda t: "audio input on" in t and "JACK: playing on" in t)
        assert ("compiled player (clips published" in daemon.text()) == (ahead != "0")
        player.start([f"{name}:in_L", f"{name}:in_R"])

        # Bad requests: each answered with /riff/error, nothing armed, no file written.
        errors = replies(daemon, ("/riff/capture", 0), ("/riff/capture", "two"),
                         ("/riff/capture", 17), ("/riff/capture", 1, "og_beat"),
                         ("/riff/capture", 1, "../x"), ("/riff/capture",))
        assert [e[0] for e in errors] == ["/riff/error"] * 6, errors
        reasons = [e[1][1] for e in errors]
        assert "between 1 and 16" in reasons[0] and "takes a number of bars" in reasons[1]
        assert "between 1 and 16" in reasons[2] and "'og_beat' exists" in reasons[3]
        assert "plain name" in reasons[4] and "takes 1 or 2 argument(s)" in reasons[5]
        assert not captures.exists()

        daemon.wait_for(lambda t: CLIP_START.search(t) is not None)
        # Again while an xrun skipped cycles during the capture (this test's signal or the
        # engine's): the capture then has a seam, which the engine reports as lost frames.
        for attempt in range(4):
            label = f"mine{attempt}"
            jumps = len(player.jumps)
            daemon.osc.send("/riff/capture", 1, label)
            started = wait_reply(daemon, "/riff/capture/started")
            assert started[0] == label
            assert wait_reply(daemon, "/riff/capture/done") == [label]
            # The log line may reach this process a moment after the reply.
            daemon.wait_for(lambda t, x=label: any(m.group(1) == x
                                                   for m in CAPTURED.finditer(t)), 20)
            found = [m for m in CAPTURED.finditer(daemon.text()) if m.group(1) == label]
            sample, bar, frame, lost = (int(x) for x in found[0].groups()[1:])
            if len(player.jumps) == jumps and lost == 0:
                break
        assert lost == 0, "every capture lost frames to xruns"
        assert bar == started[1]

        # On the bar grid: the same grid the clips start on, the bar the reply named.
        _, clip_sample, clip_bar, clip_frame = (int(x) for x in
                                                CLIP_START.search(daemon.text()).groups())
        assert (sample - clip_sample) == (bar - clip_bar) * BAR
        if not player.jumps:  # the JACK frame of that bar line, by the clips' own mapping
            assert frame - sample == clip_frame - clip_sample

        # The library holds it, it is the seed image, the take kept a copy.
        state = replies(daemon, ("/riff/state",))
        assert ("/riff/seed_image", [label]) in state
        image = load_image(captures / f"{label}.png")
        meta = read_loop_meta(image)
        assert (meta.bars, meta.beats_per_bar) == (1, 4) and abs(meta.bpm - 240) < 2.7
        kept = list((tmp_path / "takes").glob(f"*.seeds/{label}.png"))
        assert len(kept) == 1, list((tmp_path / "takes").iterdir())
    finally:
        player.close()
        code = daemon.finish()
    assert code == 0, daemon.text()[-3000:]

    # Decoded by the engine's codec, it is the bar of the signal from that JACK frame on
    # (10 ms envelope frames), and not the same bar a beat off.
    audio = mel_to_audio(image_to_mel(image), circular=True)[0]
    got = envelope(audio, 44100, 100)
    want = envelope(np.roll(signal, -(frame % BAR), axis=1)[0], RATE, 100)
    corr = [lag_correlation(got, want, lag) for lag in range(-40, 41)]
    print(f"capture {label}: JACK frame {frame}, {len(player.jumps)} skipped cycles seen; "
          f"envelope correlation {corr[40]:.3f} at the bar line, {corr[15]:.3f} and "
          f"{corr[65]:.3f} a beat off")
    assert abs(int(np.argmax(corr)) - 40) <= 2, (int(np.argmax(corr)) - 40, max(corr))
    assert lag_correlation(got, want, 0) > 0.8
    for beat in (-25, 25):
        assert lag_correlation(got, want, beat) < 0.4
