"""The codec commands as a user runs them: real files, a real subprocess, exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def riff(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "protocols.cli", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "error:" in lines[0], result.stderr


@pytest.fixture(scope="module")
def beat_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rate = 22050  # not 44.1 kHz on purpose: the command converts
    t = np.arange(rate) / rate
    audio = 0.3 * np.sin(2 * np.pi * 330 * t)
    for start in range(0, rate - 200, rate // 4):
        audio[start : start + 200] += np.hanning(200) * 0.6
    path = tmp_path_factory.mktemp("cli") / "beat.wav"
    sf.write(path, np.stack([audio, audio * 0.5], axis=1), rate)
    return path


def test_audio_to_image_to_audio(tmp_path: Path, beat_wav: Path) -> None:
    png = tmp_path / "beat.png"
    result = riff("audio-to-image", beat_wav, png)
    assert result.returncode == 0, result.stderr
    image = Image.open(png)
    assert image.size == (101, 512) and image.mode == "RGB"
    assert image.getexif()[11000] == 44100
    wav = tmp_path / "back.wav"
    result = riff("image-to-audio", png, wav)
    assert result.returncode == 0, result.stderr
    audio, rate = sf.read(wav)
    assert rate == 44100 and audio.shape == (100 * 441,)
    assert 0.5 < np.max(np.abs(audio)) <= 0.9


def test_stereo_clips_and_loop(tmp_path: Path, beat_wav: Path) -> None:
    out = tmp_path / "clip.png"
    result = riff("audio-to-image", beat_wav, out, "--clip-seconds", "0.4", "--stereo")
    assert result.returncode == 0, result.stderr
    clips = sorted(tmp_path.glob("clip-*.png"))
    assert [c.name for c in clips] == ["clip-000.png", "clip-001.png", "clip-002.png"]
    assert Image.open(clips[0]).size == (41, 512)
    assert np.all(np.asarray(Image.open(clips[0]))[..., 0] == 0)  # stereo: R = 0
    wav = tmp_path / "loop.flac"
    result = riff("image-to-audio", clips[0], wav, "--loop", "--method", "quality")
    assert result.returncode == 0, result.stderr
    audio, _ = sf.read(wav)
    assert audio.shape == (41 * 441, 2)


def test_info(beat_wav: Path, tmp_path: Path) -> None:
    png = tmp_path / "i.png"
    assert riff("audio-to-image", beat_wav, png).returncode == 0
    result = riff("info", png)
    assert result.returncode == 0, result.stderr
    assert "101x512" in result.stdout and "1.000 s" in result.stdout
    # 1.01 s as a loop: too short for 2 bars of 4/4, read as one bar of 2 beats
    assert "loop: 1 bar of 2 beats at 118.81 BPM" in result.stdout


def test_bundled_seed_decodes_to_the_expected_length(tmp_path: Path) -> None:
    wav = tmp_path / "og.wav"
    result = riff("image-to-audio", REPO / "seed_images" / "og_beat.png", wav)
    assert result.returncode == 0, result.stderr
    info = sf.info(wav)
    assert info.frames == 511 * 441  # 5.11 s
    result = riff("info", REPO / "seed_images" / "og_beat.png")
    assert "loop: 2 bars of 4 beats at 93.75 BPM" in result.stdout


def test_error_paths(tmp_path: Path, beat_wav: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    empty_wav = tmp_path / "empty.wav"
    sf.write(empty_wav, np.zeros((0, 1)), 44100)
    small = tmp_path / "small.png"
    Image.new("RGB", (64, 100)).save(small)
    truncated = tmp_path / "cut.png"
    Image.new("RGB", (64, 512), 7).save(tmp_path / "whole.png")
    truncated.write_bytes((tmp_path / "whole.png").read_bytes()[:200])
    cases = [
        ("audio-to-image", tmp_path / "missing.wav", tmp_path / "o.png"),
        ("audio-to-image", text, tmp_path / "o.png"),
        ("audio-to-image", empty_wav, tmp_path / "o.png"),
        ("audio-to-image", beat_wav, tmp_path / "o.png", "--clip-seconds", "0"),
        ("image-to-audio", text, tmp_path / "o.wav"),
        ("image-to-audio", small, tmp_path / "o.wav"),
        ("image-to-audio", truncated, tmp_path / "o.wav"),
        ("image-to-audio", tmp_path / "whole.png", tmp_path / "o.xyz"),
        ("info", truncated),
    ]
    for case in cases:
        assert_one_line_error(riff(*case))
    assert not (tmp_path / "o.png").exists() and not (tmp_path / "o.wav").exists()
