"""``riff render --init-audio`` end to end, as a subprocess, with the tiny model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def _riff(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(home / "hf"), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "protocols.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_render_init_audio_keeps_length_rate_and_channels(tmp_path: Path) -> None:
    rate, n = 48000, 48000 * 3 + 7
    t = np.arange(n) / rate
    stereo = np.stack([0.2 * np.sin(2 * np.pi * 330 * t), 0.1 * np.sin(2 * np.pi * 550 * t)])
    sf.write(tmp_path / "in.flac", stereo.T, rate)
    out = _riff("render", "--model", "tiny", "--init-audio", str(tmp_path / "in.flac"),
                "--prompt", "church organ", "--to-prompt", "jazz", "--denoising", "0.4",
                "--steps", "2", "--window-px", "128", "--bpm", "150", "--beats-per-bar", "2",
                "--out", str(tmp_path / "out.wav"), "--image", str(tmp_path / "out.png"),
                home=tmp_path)
    assert out.returncode == 0, out.stderr
    info = sf.info(tmp_path / "out.wav")
    assert (info.frames, info.samplerate, info.channels) == (n, rate, 2)
    assert "window" in out.stderr  # the progress bar
    image = Image.open(tmp_path / "out.png")
    assert image.height == 512 and image.getexif()[11005]  # stereo spectrogram
    assert "transformed" in out.stdout


def test_render_init_audio_refuses_bad_input(tmp_path: Path) -> None:
    (tmp_path / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage")
    out = _riff("render", "--model", "tiny", "--init-audio", str(tmp_path / "broken.wav"),
                "--out", str(tmp_path / "o.wav"), home=tmp_path)
    assert out.returncode == 1
    assert "not a readable audio file" in out.stderr and len(out.stderr.splitlines()) == 1
    sf.write(tmp_path / "ok.wav", np.zeros(1000), 44100)
    out = _riff("render", "--model", "tiny", "--init-audio", str(tmp_path / "ok.wav"),
                "--seed-image", "og_beat", "--out", str(tmp_path / "o.wav"), home=tmp_path)
    assert out.returncode == 1 and "--seed-image does not go with --init-audio" in out.stderr
    assert not (tmp_path / "o.wav").exists()
