"""``POST /v1/audio_to_audio`` over loopback with a real client, real files and the tiny model."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from engine.takes.render import Renderer
from protocols.http.app import ServeConfig, create_app
from tests.http_support import serving, shared_renderer

REQUEST: dict[str, Any] = {"start": {"prompt": "funk", "seed": 3, "denoising": 0.5},
                           "num_inference_steps": 2, "window_px": 128, "overlap_s": 0.1}


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return shared_renderer()


def _flac(rate: int, samples: int, channels: int = 2) -> bytes:
    t = np.arange(samples) / rate
    x = np.stack([0.2 * np.sin(2 * np.pi * (220 + 110 * c) * t) for c in range(channels)])
    buf = io.BytesIO()
    sf.write(buf, x.T, rate, format="FLAC")
    return buf.getvalue()


def _wav_of(answer: dict[str, Any]) -> tuple[np.ndarray, int]:
    data, rate = sf.read(io.BytesIO(base64.b64decode(answer["audio_wav"])), always_2d=True)
    return data.T, rate


def test_multipart_round_trip_keeps_length_rate_and_channels(renderer: Renderer) -> None:
    upload = _flac(22050, 33_333)
    with serving(create_app(renderer)) as url:
        r = httpx.post(f"{url}/v1/audio_to_audio", timeout=120, files={
            "audio": ("in.flac", upload, "audio/flac"),
            "request": (None, json.dumps(REQUEST), "application/json"),
            "spectrogram": (None, "true")})
    assert r.status_code == 200, r.text
    answer = r.json()
    audio, rate = _wav_of(answer)
    assert audio.shape == (2, 33_333) and rate == 22050
    assert (answer["channels"], answer["num_samples"]) == (2, 33_333)
    assert np.all(np.isfinite(audio)) and np.abs(audio).max() > 0
    image = Image.open(io.BytesIO(base64.b64decode(answer["image_png"])))
    assert image.height == 512 and image.getexif()[11005]
    assert answer["request"]["window_px"] == 128


def test_base64_json_answers_raw_wav(renderer: Renderer) -> None:
    upload = _flac(48000, 48_001, channels=1)
    body = {**REQUEST, "audio": "data:audio/flac;base64," + base64.b64encode(upload).decode()}
    with serving(create_app(renderer)) as url:
        r = httpx.post(f"{url}/v1/audio_to_audio", json=body, timeout=120,
                       headers={"Accept": "audio/wav"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "audio/wav"
    data, rate = sf.read(io.BytesIO(r.content), always_2d=True)
    assert data.shape == (48_001, 1) and rate == 48000


def test_bad_uploads_get_clear_4xx(renderer: Renderer) -> None:
    config = ServeConfig(max_audio_seconds=1.0, max_upload_bytes=200_000)
    post = "/v1/audio_to_audio"
    with serving(create_app(renderer, config)) as url, httpx.Client(base_url=url,
                                                                    timeout=60) as client:
        def multipart(audio: bytes, request: Any = REQUEST) -> httpx.Response:
            return client.post(post, files={"audio": ("x.wav", audio, "audio/wav"),
                                            "request": (None, json.dumps(request))})

        broken = multipart(b"RIFF\x10\x00\x00\x00WAVEfmt garbage")
        assert broken.status_code == 422
        assert "not a readable audio file" in broken.json()["detail"]
        assert broken.json()["kind"] == "InvalidAudio"
        long = multipart(_flac(8000, 8000 * 3, channels=1))
        assert long.status_code == 422 and "longer than the 1 s" in long.json()["detail"]
        fast = multipart(_flac(8000, 4000), {**REQUEST, "num_inference_steps": 151})
        assert fast.status_code == 422 and "num_inference_steps" in fast.json()["detail"]
        unknown = multipart(_flac(8000, 4000), {**REQUEST, "tempo": 3})
        assert unknown.status_code == 422 and "tempo" in unknown.json()["detail"]
        big = multipart(bytes(300_000))
        assert big.status_code == 413
        missing = client.post(post, json=REQUEST)
        assert missing.status_code == 422 and "'audio' is missing" in missing.json()["detail"]
        not_b64 = client.post(post, json={**REQUEST, "audio": "***"})
        assert not_b64.status_code == 422 and "base64" in not_b64.json()["detail"]
        text = client.post(post, content=b"hello", headers={"content-type": "text/plain"})
        assert text.status_code == 415
        bad_part = client.post(post, files={"audio": ("x.flac", _flac(8000, 4000)),
                                            "request": (None, "{nope")})
        assert bad_part.status_code == 400 and "not JSON" in bad_part.json()["detail"]


def test_bpm_auto_finds_the_tempo_of_the_upload(renderer: Renderer) -> None:
    from tests.test_tempo import clicks

    buf = io.BytesIO()
    sf.write(buf, clicks(120.0, 0.3, 44100, seconds=9.0).T, 44100, format="WAV")
    request = {"start": {"prompt": "x", "denoising": 0.0}, "bpm": "auto"}
    with serving(create_app(renderer)) as url:
        r = httpx.post(f"{url}/v1/audio_to_audio", timeout=120, files={
            "audio": ("in.wav", buf.getvalue()), "request": (None, json.dumps(request))})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["request"]["bpm"] == pytest.approx(120.0, rel=0.005)
    assert answer["windows_s"][1] == pytest.approx(0.3, abs=0.03)  # the first beat
    assert answer["num_samples"] == 9 * 44100
