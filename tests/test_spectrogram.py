"""Spectrogram image format: pixels, EXIF, loop metadata, sizes, stereo, broken images."""

from __future__ import annotations

import dataclasses
import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.dsp.spectrogram import (
    LoopMeta,
    SpectrogramParams,
    audio_to_mel,
    image_to_mel,
    load_image,
    mel_to_image,
    params_from_image,
    read_loop_meta,
    save_image,
    write_loop_meta,
)
from engine.errors import InvalidAudio, InvalidImage, InvalidRequest

P = SpectrogramParams()
SR = 44100


def sine(hz: float, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * hz * t)).astype(np.float32)[None]


def mel_bin_of(hz: float) -> float:
    """Fractional mel bin index whose filter peaks at ``hz`` (HTK, 0..10 kHz, 512 bins)."""
    mel = 2595 * np.log10(1 + hz / 700)
    top = 2595 * np.log10(1 + 10000 / 700)
    return mel / (top / 513) - 1


def test_derived_sample_counts() -> None:
    assert (P.hop_length, P.win_length, P.n_fft) == (441, 4410, 17640)
    assert P.samples_for_width(512) == 511 * 441
    assert P.width_for_samples(511 * 441) == 512
    assert round(P.samples_for_width(512) / SR, 2) == 5.11


@pytest.mark.parametrize("width", [2, 17, 100])
def test_width_matches_samples(width: int) -> None:
    audio = np.random.default_rng(width).standard_normal((1, (width - 1) * 441)) * 0.1
    mel = audio_to_mel(audio.astype(np.float32), P)
    assert mel.shape == (1, 512, width)
    assert mel_to_image(mel, P).size == (width, 512)


def test_circular_analysis_has_one_frame_per_hop() -> None:
    mel = audio_to_mel(sine(440, 0.5), P, circular=True)
    assert mel.shape == (1, 512, 50)


def test_sine_lands_on_its_mel_bin_and_low_frequencies_at_the_bottom() -> None:
    mel = audio_to_mel(sine(1000, 0.5), P)
    peak = int(np.argmax(mel[0, :, 25]))
    assert abs(peak - mel_bin_of(1000)) <= 1
    image = np.asarray(mel_to_image(mel, P))
    darkest_row = int(np.argmin(image[:, 25, 0]))
    assert darkest_row == 511 - peak  # flipped: row 0 is the top (10 kHz)


def test_known_spectrogram_gives_exact_pixels() -> None:
    # magnitudes chosen so 255 * (m / max) ** 0.25 = level + 0.5 exactly: no rounding doubt
    levels = np.arange(256, dtype=np.float64)[::-1][:200]  # 255 .. 56
    frac = np.minimum(levels + 0.5, 255.0) / 255.0
    frac[0] = 1.0  # the peak itself
    mel = np.zeros((1, 512, 3), dtype=np.float32)
    mel[0, :200, 1] = (frac**4 * 1e6).astype(np.float32)
    image = np.asarray(mel_to_image(mel, P))
    assert image.shape == (512, 3, 3)
    column = image[::-1, 1, 0].astype(int)  # back to bin order
    expected = np.concatenate([[0], (254 - levels[1:]).astype(int), np.full(312, 255)])
    np.testing.assert_array_equal(column, expected)
    assert np.all(image[:, 0] == 255) and np.all(image[:, 2] == 255)
    assert np.all(image[..., 0] == image[..., 1]) and np.all(image[..., 1] == image[..., 2])


def test_pixels_decode_with_the_fixed_max_value() -> None:
    values = np.array([0, 1, 64, 128, 254, 255], dtype=np.uint8)
    grey = np.tile(values[:, None], (512 // values.size + 1, 4))[:512]
    image = Image.fromarray(grey, mode="L")
    mel = image_to_mel(image, P)
    assert mel.shape == (1, 512, 4)
    expected = ((255.0 - grey[::-1].astype(np.float64)) / 255.0) ** 4 * 30e6
    np.testing.assert_allclose(mel[0], expected, rtol=1e-5)


def test_audio_to_image_round_trip_is_within_one_grey_level() -> None:
    rng = np.random.default_rng(1)
    audio = (rng.standard_normal((1, 44100)) * 0.2).astype(np.float32)
    mel = audio_to_mel(audio, P)
    image = mel_to_image(mel, P)
    again = mel_to_image(image_to_mel(image, params_from_image(image)), P)
    diff = np.abs(np.asarray(image, dtype=int) - np.asarray(again, dtype=int))
    assert diff.max() <= 1


def test_silence_gives_a_white_image() -> None:
    image = mel_to_image(np.zeros((1, 512, 5), dtype=np.float32), P)
    assert np.all(np.asarray(image) == 255)


def test_stereo_layout_and_decoding() -> None:
    left, right = sine(300, 0.5), sine(2000, 0.5)
    params = dataclasses.replace(P, stereo=True)
    mel = audio_to_mel(np.concatenate([left, right]), params)
    assert mel.shape == (2, 512, 51)
    image = mel_to_image(mel, params)
    rgb = np.asarray(image)
    assert np.all(rgb[..., 0] == 0)
    assert int(np.argmin(rgb[:, 25, 1])) == 511 - int(np.argmax(mel[0, :, 25]))
    assert int(np.argmin(rgb[:, 25, 2])) == 511 - int(np.argmax(mel[1, :, 25]))
    decoded = params_from_image(image)
    assert decoded.stereo
    back = image_to_mel(image, decoded)
    assert back.shape == (2, 512, 51)
    assert abs(int(np.argmax(back[0, :, 25])) - mel_bin_of(300)) <= 1
    assert abs(int(np.argmax(back[1, :, 25])) - mel_bin_of(2000)) <= 1


def test_mono_params_average_stereo_audio() -> None:
    both = np.concatenate([sine(500, 0.3), -sine(500, 0.3)])
    mel = audio_to_mel(both, P)  # opposite channels cancel in the mono mix
    assert mel.shape[0] == 1
    assert float(mel.max()) < 1e-3 * float(audio_to_mel(sine(500, 0.3), P).max())


def test_exif_round_trip(tmp_path: Path) -> None:
    params = SpectrogramParams(stereo=True, max_value=1234.5)
    assert SpectrogramParams.from_exif(params.to_exif()) == params
    assert set(params.to_exif()) == {
        11000, 11005, 11010, 11020, 11030, 11040, 11050, 11060, 11070, 11080,
    }
    mel = audio_to_mel(sine(440, 0.3), P)
    image = mel_to_image(mel, P)
    write_loop_meta(image, LoopMeta(bars=4, beats_per_bar=3, bpm=128.5))
    path = tmp_path / "x.png"
    save_image(image, path)
    loaded = load_image(path)
    exif = loaded.getexif()
    assert exif[11000] == 44100 and exif[11040] == 512 and exif[11060] == 10000
    assert exif[11070] == pytest.approx(0.25)
    assert exif[11080] == pytest.approx(float(mel.max()), rel=1e-6)
    assert params_from_image(loaded) == P  # decoding keeps the fixed 30e6 scale
    assert read_loop_meta(loaded) == LoopMeta(bars=4, beats_per_bar=3, bpm=128.5)


def test_loop_meta_falls_back_to_two_bars_over_the_width() -> None:
    image = Image.new("L", (512, 512), 255)
    meta = read_loop_meta(image)
    assert (meta.bars, meta.beats_per_bar) == (2, 4)
    assert meta.bpm == pytest.approx(93.75)
    assert meta.seconds == pytest.approx(5.12)


def test_loop_meta_is_validated() -> None:
    with pytest.raises(InvalidRequest):
        LoopMeta(bars=0)
    with pytest.raises(InvalidRequest):
        LoopMeta(bpm=float("nan"))


def test_bad_exif_is_an_invalid_image() -> None:
    with pytest.raises(InvalidImage):
        SpectrogramParams.from_exif({11000: "fast"})
    with pytest.raises(InvalidImage):
        SpectrogramParams.from_exif({11060: 40000})  # above Nyquist
    with pytest.raises(InvalidImage):
        SpectrogramParams.from_exif({11007: 1})  # triple-resolution mono


def test_bad_audio_is_rejected() -> None:
    with pytest.raises(InvalidAudio):
        audio_to_mel(np.zeros((1, 0), dtype=np.float32), P)
    with pytest.raises(InvalidAudio):
        audio_to_mel(np.full((1, 1000), np.nan, dtype=np.float32), P)


def test_very_short_audio_still_gives_its_frames() -> None:
    assert audio_to_mel(sine(440, 0.05), P).shape == (1, 512, 6)


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _with_ihdr_size(png: bytes, width: int, height: int) -> bytes:
    """The same PNG with its header claiming another size (CRC fixed)."""
    start = 8
    length = struct.unpack(">I", png[start : start + 4])[0]
    data = bytearray(png[start + 8 : start + 8 + length])
    data[0:8] = struct.pack(">II", width, height)
    chunk = b"IHDR" + bytes(data)
    crc = struct.pack(">I", zlib.crc32(chunk) & 0xFFFFFFFF)
    return png[:start] + struct.pack(">I", length) + chunk + crc + png[start + 12 + length :]


def test_load_image_accepts_riffusion_modes(tmp_path: Path) -> None:
    for mode in ("L", "P", "RGB", "RGBA"):
        path = tmp_path / f"{mode}.png"
        Image.new("RGB", (8, 512), (10, 10, 10)).convert(mode).save(path)
        assert image_to_mel(load_image(path), P).shape == (1, 512, 8)


@pytest.mark.parametrize(
    "name,content",
    [
        ("truncated.png", lambda: _png_bytes(Image.new("RGB", (64, 512), 3))[:300]),
        ("text.png", lambda: b"this is not an image"),
        ("empty.png", lambda: b""),
        ("huge.png", lambda: _with_ihdr_size(_png_bytes(Image.new("L", (8, 8))), 20000, 512)),
        ("sixteen.png", lambda: _png_bytes(Image.new("I;16", (8, 512)))),
        ("cmyk.jpg", lambda: _jpeg_cmyk()),
        ("picture.gif", lambda: _gif()),
    ],
)
def test_broken_images_are_invalid(
    tmp_path: Path, name: str, content: Callable[[], bytes]
) -> None:
    path = tmp_path / name
    path.write_bytes(content())
    with pytest.raises(InvalidImage):
        load_image(path)


def _jpeg_cmyk() -> bytes:
    buf = io.BytesIO()
    Image.new("CMYK", (8, 512)).save(buf, format="JPEG")
    return buf.getvalue()


def _gif() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (8, 512)).save(buf, format="GIF")
    return buf.getvalue()


def test_missing_file_is_invalid(tmp_path: Path) -> None:
    with pytest.raises(InvalidImage, match="no such file"):
        load_image(tmp_path / "nope.png")


def test_wrong_height_is_invalid() -> None:
    with pytest.raises(InvalidImage, match="rows"):
        image_to_mel(Image.new("RGB", (64, 256)), P)


def test_pixels_match_riffusions_torchaudio_chain() -> None:
    """Riffusion's converter: torchaudio Spectrogram (power None) -> abs -> MelScale."""
    import torch
    import torchaudio

    rng = np.random.default_rng(7)
    audio = (rng.standard_normal((1, 30000)) * 0.1).astype(np.float32)
    audio[0, 5000:9000] += sine(880, 4000 / SR)[0]
    spectrogram = torchaudio.transforms.Spectrogram(
        n_fft=17640,
        hop_length=441,
        win_length=4410,
        window_fn=torch.hann_window,
        power=None,
        center=True,
        pad_mode="reflect",
    )
    mel_scale = torchaudio.transforms.MelScale(
        n_mels=512, sample_rate=44100, f_min=0, f_max=10000, n_stft=8821, norm=None,
        mel_scale="htk",
    )
    pcm = torch.from_numpy(np.round(audio * 32767))  # Riffusion reads 16-bit samples
    reference = mel_scale(spectrogram(pcm).abs()).numpy()
    data = 255 - (np.power(reference / reference.max(), 0.25) * 255)
    expected = data.astype(np.uint8)[0][::-1]
    ours = np.asarray(mel_to_image(audio_to_mel(audio, P), P))[..., 0]
    assert ours.shape == expected.shape
    assert np.abs(ours.astype(int) - expected.astype(int)).max() <= 1
    image = mel_to_image(audio_to_mel(audio, P), P)
    assert image.getexif()[11080] == pytest.approx(float(reference.max()), rel=1e-3)
