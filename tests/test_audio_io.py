"""Audio files: formats, resampling, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.dsp.audio_io import read_audio, resample, write_audio
from engine.errors import InvalidAudio


def tone(hz: float, rate: int, seconds: float, channels: int = 1) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return np.tile((0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32), (channels, 1))


def peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size), n=4 * x.size))
    return float(np.argmax(spectrum) * rate / (4 * x.size))


@pytest.mark.parametrize("ext", [".wav", ".flac", ".ogg", ".mp3"])
def test_write_read_round_trip(tmp_path: Path, ext: str) -> None:
    audio = tone(440, 44100, 0.5, channels=2)
    path = tmp_path / f"x{ext}"
    write_audio(path, audio, 44100)
    back, rate = read_audio(path)
    assert rate == 44100 and back.shape[0] == 2 and back.dtype == np.float32
    assert abs(back.shape[1] - audio.shape[1]) < 4096  # lossy codecs pad a little
    assert abs(peak_hz(back[0], rate) - 440) < 3


def test_read_resamples_to_the_asked_rate(tmp_path: Path) -> None:
    path = tmp_path / "low.wav"
    write_audio(path, tone(1000, 22050, 0.5), 22050)
    audio, rate = read_audio(path, sample_rate=44100)
    assert rate == 44100 and audio.shape == (1, 22050)
    assert abs(peak_hz(audio[0], 44100) - 1000) < 3


def test_resample_keeps_pitch_and_duration() -> None:
    out = resample(tone(3000, 48000, 0.25), 48000, 44100)
    assert out.shape == (1, 11025)
    assert abs(peak_hz(out[0], 44100) - 3000) < 10


def test_empty_and_broken_files_are_invalid(tmp_path: Path) -> None:
    empty = tmp_path / "empty.wav"
    write_audio(empty, np.zeros((1, 1), dtype=np.float32), 44100)
    import soundfile as sf

    sf.write(empty, np.zeros((0, 1), dtype=np.float32), 44100)
    with pytest.raises(InvalidAudio, match="no samples"):
        read_audio(empty)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF0000WAVEnonsense")
    with pytest.raises(InvalidAudio):
        read_audio(junk)
    with pytest.raises(InvalidAudio, match="no such file"):
        read_audio(tmp_path / "missing.wav")


def test_unknown_extension_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidAudio):
        write_audio(tmp_path / "x.xyz", tone(440, 44100, 0.1), 44100)
    assert not (tmp_path / "x.xyz").exists()
