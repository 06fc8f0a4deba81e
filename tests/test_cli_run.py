"""`riff run` from the command line: bad input, no JACK server, offline rendering to a file."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import soundfile as sf

from engine.live.jobs import ClipSpec
from engine.live.worker import tone_clip_audio

ROOT = Path(__file__).resolve().parents[1]


def riff(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "JACK_NO_START_SERVER": "1"}
    off = ["--osc-port", "0"] if args[0] == "run" else []
    return subprocess.run([sys.executable, "-m", "protocols.cli", *args, *off], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


def test_bad_options_are_one_line_errors(tmp_path: Path) -> None:
    for args, words in ((["--offline"], "--output"),
                        (["--tempo", "500", "--output", str(tmp_path / "a.wav")], "tempo"),
                        (["--duration-bars", "0", "--output", str(tmp_path / "b.wav")], "bar"),
                        (["--generator", "ftp://gpu-box", "--output", str(tmp_path / "c.wav")],
                         "generator URL"),
                        (["--render-ahead", "-1", "--output", str(tmp_path / "d.wav")],
                         "--render-ahead"),
                        (["--input", "--output", str(tmp_path / "e.wav")], "--input needs JACK"),
                        (["--input", "--generator", "http://127.0.0.1:9"],
                         "--input does not go with --generator"),
                        (["--lattice", "1", "--output", str(tmp_path / "e.wav")],
                         "--lattice")):
        r = riff("run", *args)
        assert r.returncode == 1, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0] and "Traceback" not in r.stderr
    assert not list(tmp_path.iterdir())  # nothing was written


def test_bad_config_file_is_a_one_line_error(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[run]\nmodle = "tiny"\n')
    r = riff("run", "--config", str(config), "--output", str(tmp_path / "x.wav"))
    assert r.returncode == 1 and "modle" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_on_master_stop_option_and_config(tmp_path: Path) -> None:
    from protocols.cli.main import build_parser
    from protocols.cli.run import _options

    parser = build_parser()
    args = parser.parse_args(["run", "--on-master-stop", "play", "--output", "x.wav"])
    assert _options(args)[1]["on_master_stop"] == "play"
    assert _options(parser.parse_args(["run", "--output", "x.wav"]))[1]["on_master_stop"] \
        == "stop"
    config = tmp_path / "c.toml"
    config.write_text('[run]\non_master_stop = "pause"\n')
    r = riff("run", "--config", str(config), "--output", str(tmp_path / "x.wav"))
    assert r.returncode == 1 and "on_stop" in r.stderr and "pause" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_the_lattice_is_on_by_default_on_cuda_only() -> None:
    from protocols.cli.main import build_parser
    from protocols.cli.run import LATTICE_CUDA, _lattice_points, _options

    parser = build_parser()
    default = _options(parser.parse_args(["run", "--output", "x.wav"]))[1]
    assert _lattice_points(default, "cuda:0") == LATTICE_CUDA == 9
    assert _lattice_points(default, "cpu") == 0
    assert _lattice_points(default, "remote http://gpu-box:8000") == 0
    chosen = _options(parser.parse_args(["run", "--lattice", "5", "--output", "x.wav"]))[1]
    assert _lattice_points(chosen, "cpu") == 5
    off = _options(parser.parse_args(["run", "--lattice", "0", "--output", "x.wav"]))[1]
    assert _lattice_points(off, "cuda") == 0


def test_no_jack_server_says_how_to_start_one() -> None:
    r = riff("run", "--model", "test-tones", "--jack-server", f"absent-{uuid.uuid4().hex[:8]}")
    assert r.returncode == 1
    assert "jackd -d" in r.stderr and "--output" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_offline_render_puts_every_clip_on_its_bar(tmp_path: Path) -> None:
    out = tmp_path / "jam.wav"
    config = tmp_path / "jam.toml"
    config.write_text('tempo = 240.0\nbars = 1\nsteps = 3\n'
                      '[run]\nmodel = "test-tones"\ncrossfade_ms = 0.0\n')
    r = riff("run", "--config", str(config), "--output", str(out), "--offline",
             "--duration-bars", "5")
    assert r.returncode == 0, r.stderr[-2000:]
    audio, rate = sf.read(out, dtype="float32")
    assert rate == 48000 and audio.shape == (5 * 48000, 2)
    assert np.all(audio[:48000] == 0.0)  # bar 0: before the first clip
    spec = ClipSpec(tempo=240.0, bars=1, beats_per_bar=4, sample_rate=48000, num_samples=48000)
    starts = [(int(j), int(s)) for j, s in
              re.findall(r"clip (\d+) started at sample (\d+)", r.stderr)]
    assert [s for _, s in starts][:4] == [48000, 96000, 144000, 192000], r.stderr
    for job, start in starts[:4]:  # each clip exactly, from its first sample
        np.testing.assert_array_equal(audio[start:start + 48000], tone_clip_audio(job, spec))
    assert len({job for job, _ in starts}) == len(starts)  # a new clip every bar, no repeats
    assert re.search(r"stopped: \d+ clips started, 0 late", r.stderr)


def test_a_render_with_the_lattice_in_manual_mode(tmp_path: Path) -> None:
    """``--lattice 3`` wires the lattice through the recording taps to the worker's batched
    calls: the still knob's clip plays on every bar as before."""
    out = tmp_path / "lattice.wav"
    config = tmp_path / "jam.toml"
    config.write_text('tempo = 240.0\nbars = 1\nsteps = 3\nalpha_auto = false\n'
                      '[run]\nmodel = "test-tones"\ncrossfade_ms = 0.0\n')
    # In real time (3 s): the idle worker has long finished the lattice (two 60 ms jobs).
    r = riff("run", "--config", str(config), "--output", str(out), "--duration-bars", "6",
             "--lattice", "3")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "lattice: 3 alphas" in r.stderr
    rendered = re.search(r"lattice: (\d+) clips rendered", r.stderr)
    assert rendered and int(rendered.group(1)) == 2, r.stderr[-2000:]  # 0.5, 1.0 (0 played)
    audio, _ = sf.read(out, dtype="float32")
    assert audio.shape == (6 * 48000, 2) and np.any(audio[48000:] != 0.0)
    assert re.search(r"stopped: \d+ clips started, 0 late", r.stderr)


def test_the_daemon_side_never_imports_torch() -> None:
    code = ("import sys, protocols.cli.main, protocols.cli.run, engine.live.control, "
            "engine.live.worker, engine.live.player, protocols.audio.jack_output, "
            "protocols.audio.file_output, protocols.audio.jack_input, engine.live.capture; "
            "protocols.cli.main.build_parser(); print('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_jack_transport_positions_drive_the_engines_transport() -> None:
    from engine.live.sync import MasterSync
    from engine.live.transport import Transport
    from protocols.audio.jack_transport import JackTransportFollower

    transport = Transport(lambda: 0, 48000, 120.0, 4)
    sync = MasterSync(transport, play=lambda: None, stop=lambda: None, playing=lambda: True,
                      adopt=lambda tempo, meter: None)
    follower = JackTransportFollower(sync)
    follower.poll("rolling", (96000, 2, 1.0, 150.0, 3))  # bar 2, beat 1 at 150 BPM in 3/4
    assert transport.external and transport.tempo == 150.0 and transport.beats_per_bar == 3
    assert transport.bar_start(2) == 96000 - 19200  # one beat (19200 samples) earlier
    follower.poll("rolling", (0, 0, 9.0, 150.0, 3))  # a beat outside the bar: ignored, logged
    assert transport.tempo == 150.0 and follower.errors == 1


def test_a_generator_server_that_does_not_answer_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    r = riff("run", "--generator", f"http://127.0.0.1:{port}", "--output",
             str(tmp_path / "x.wav"), "--offline")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "is not answering" in r.stderr.strip().splitlines()[-1]
    assert not list(tmp_path.iterdir())


def test_the_exit_summary_counts_late_as_the_status_lines_do(tmp_path: Path) -> None:
    """Real time with a generator slower than the clips: clips miss their bar lines. The exit
    summary's "late" is the status lines' (it used to be the player's own count, 0 here), and
    the silence before the first clip is not counted as underruns."""
    out = tmp_path / "late.wav"
    r = riff("run", "--model", "test-tones", "--tempo", "240", "--bars", "1", "--steps", "80",
             "--output", str(out), "--duration-bars", "7")
    assert r.returncode == 0, r.stderr[-2000:]
    lines = re.findall(r"bar \d+ \| .*\| late (\d+) \|", r.stderr)
    summary = re.search(r"stopped: \d+ clips started, (\d+) late, \d+ xruns, \d+ worker "
                        r"restarts, (\d+) underruns, (\d+) silent blocks", r.stderr)
    assert lines and summary, r.stderr[-3000:]
    late, underruns, silent = (int(g) for g in summary.groups())
    assert late >= 1 and late >= int(lines[-1])  # 1.6 s jobs for 1 s bars
    assert underruns == 0 and silent >= 1
