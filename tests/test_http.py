"""The HTTP API over loopback with a real client and the tiny model.

One model is loaded per module; each test starts its own uvicorn server on a free port.
"""

from __future__ import annotations

import base64
import concurrent.futures
import io
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from engine.takes.render import Renderer
from protocols.http.app import ServeConfig, create_app
from tests.http_support import GatedBackend, serving, shared_renderer, wait_for

#: What the riffusion web app sends for one clip (DESIGN.md).
WEB_APP_BODY: dict[str, Any] = {
    "alpha": 0.25, "num_inference_steps": 50, "seed_image_id": "og_beat", "mask_image_id": None,
    "start": {"prompt": "jazzy rapping", "seed": 42, "denoising": 0.75, "guidance": 7.0},
    "end": {"prompt": "jazzy rapping", "seed": 43, "denoising": 0.75, "guidance": 7.0},
}


def small(seed: int = 1, **extra: Any) -> dict[str, Any]:
    """A cheap valid request: 2 steps, 64 px wide."""
    return {"alpha": 0.5, "num_inference_steps": 2, "width": 64, "seed_image_id": "og_beat",
            "start": {"prompt": "funk", "seed": seed}, "end": {"prompt": "jazz", "seed": seed + 1},
            **extra}


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return shared_renderer()


@pytest.fixture()
def gated(renderer: Renderer) -> GatedBackend:
    return GatedBackend(renderer)


@pytest.fixture()
def url(renderer: Renderer) -> Iterator[str]:
    with serving(create_app(GatedBackend(renderer, gated=False), ServeConfig())) as base:
        yield base


def decode_data_uri(uri: str, mime: str) -> bytes:
    prefix = f"data:{mime};base64,"
    assert uri.startswith(prefix), uri[:40]
    return base64.b64decode(uri[len(prefix):], validate=True)


def test_riffusion_web_app_request_gets_inference_output(url: str) -> None:
    # The web app's body as sent, but 4 steps instead of 50: the tiny model on a CPU takes
    # seconds per step at 512 px, and the step count changes nothing about the HTTP answer.
    body = {**WEB_APP_BODY, "num_inference_steps": 4}
    resp = httpx.post(f"{url}/run_inference/", json=body, timeout=300)
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert set(out) == {"image", "audio", "duration_s"}
    image = Image.open(io.BytesIO(decode_data_uri(out["image"], "image/jpeg")))
    assert image.format == "JPEG" and image.height == 512 and image.width == 512
    audio, rate = sf.read(io.BytesIO(decode_data_uri(out["audio"], "audio/mpeg")),
                          always_2d=True)
    assert rate == 44100
    # 512 px -> 511 hops of 441 samples = 5.11 s; MP3 framing may add a few ms.
    assert out["duration_s"] == pytest.approx(511 * 441 / 44100, abs=0.02)
    assert audio.shape[0] / rate == pytest.approx(out["duration_s"], abs=0.1)
    assert np.abs(audio).max() > 0.0


def test_native_render_json_and_raw(url: str) -> None:
    resp = httpx.post(f"{url}/v1/render", json=small(), timeout=120)
    assert resp.status_code == 200, resp.text
    out = resp.json()
    png = Image.open(io.BytesIO(base64.b64decode(out["image_png"])))
    assert png.format == "PNG" and png.size == (64, 512)
    assert 11000 in png.getexif()  # the spectrogram parameters travel with the image
    audio, rate = sf.read(io.BytesIO(base64.b64decode(out["audio_wav"])), dtype="float32",
                          always_2d=True)
    assert rate == out["sample_rate"] == 44100
    assert audio.shape == (out["num_samples"], out["channels"])
    assert out["request"]["width"] == 64 and out["request"]["start"]["seed"] == 1
    raw = httpx.post(f"{url}/v1/render", json=small(), headers={"Accept": "audio/wav"},
                     timeout=120)
    assert raw.headers["content-type"] == "audio/wav"
    again, _ = sf.read(io.BytesIO(raw.content), dtype="float32", always_2d=True)
    np.testing.assert_array_equal(again, audio)  # same request, same audio
    img = httpx.post(f"{url}/v1/render", json=small(), headers={"Accept": "image/png"},
                     timeout=120)
    assert Image.open(io.BytesIO(img.content)).size == (64, 512)


INVALID: list[tuple[str, Any]] = [
    ("alpha", {"alpha": -0.1}), ("alpha", {"alpha": 1.5}), ("alpha", {"alpha": "half"}),
    ("alpha", {"alpha": True}),
    ("num_inference_steps", {"num_inference_steps": 0}),
    ("num_inference_steps", {"num_inference_steps": 151}),
    ("num_inference_steps", {"num_inference_steps": 2.5}),
    ("seed", {"start": {"prompt": "a", "seed": -1}}),
    ("seed", {"start": {"prompt": "a", "seed": 2**32}}),
    ("seed", {"start": {"prompt": "a", "seed": "42"}}),
    ("denoising", {"start": {"prompt": "a", "denoising": 1.5}}),
    ("guidance", {"end": {"prompt": "a", "guidance": -1}}),
    ("prompt", {"start": {"prompt": 5}}),
    ("prompt", {"start": {"prompt": "x" * 2001}}),
    ("negative_prompt", {"start": {"prompt": "a", "negative_prompt": 3}}),
    ("unknown", {"start": {"prompt": "a", "sed": 1}}),
    ("unknown", {"banana": 1}),
    ("start", {"start": None}),
    ("end", {"end": "b"}),
    ("width", {"width": 7}), ("width", {"width": 100}), ("width", {"width": 4096}),
    ("scheduler", {"scheduler": "../x"}),
    ("seed_image_id", {"seed_image_id": 3}),
]


@pytest.mark.parametrize("field, change", INVALID)
def test_every_invalid_field_is_422_naming_it(url: str, field: str, change: dict) -> None:
    body = {**small(), **change}
    resp = httpx.post(f"{url}/run_inference/", json=body)
    assert resp.status_code == 422, resp.text
    assert field in resp.json()["detail"]


def test_missing_start_and_non_object(url: str) -> None:
    body = small()
    del body["start"]
    resp = httpx.post(f"{url}/run_inference/", json=body)
    assert resp.status_code == 422 and "start" in resp.json()["detail"]
    resp = httpx.post(f"{url}/run_inference/", json=[1, 2])
    assert resp.status_code == 422 and "object" in resp.json()["detail"]
    resp = httpx.post(f"{url}/run_inference/", content=b"{not json")
    assert resp.status_code == 400 and "JSON" in resp.json()["detail"]


@pytest.mark.parametrize("field", ["seed_image_id", "mask_image_id"])
@pytest.mark.parametrize("value", ["../x", "/etc/passwd", "..", "a/b", "..\\x", "seed_images/og",
                                   "does_not_exist"])
def test_traversal_and_unknown_ids_never_reach_the_model(renderer: Renderer, field: str,
                                                         value: str) -> None:
    backend = GatedBackend(renderer, gated=False)
    with serving(create_app(backend, ServeConfig())) as base:
        resp = httpx.post(f"{base}/run_inference/", json=small(**{field: value}))
        assert 400 <= resp.status_code < 500, resp.text
        assert field in resp.json()["detail"] or value in resp.json()["detail"]
    assert backend.calls == 0


def test_oversized_body_is_413(url: str) -> None:
    big = small(padding="x" * 70_000)
    resp = httpx.post(f"{url}/run_inference/", json=big)
    assert resp.status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while reading
        for _ in range(100):
            yield b" " * 1024

    resp = httpx.post(f"{url}/run_inference/", content=chunks())
    assert resp.status_code == 413


def _post(base: str, body: dict, **kw: Any) -> httpx.Response:
    return httpx.post(f"{base}/run_inference/", json=body, timeout=120, **kw)


def test_concurrent_requests_are_served_in_order(gated: GatedBackend) -> None:
    with serving(create_app(gated, ServeConfig(queue=8))) as base, \
            concurrent.futures.ThreadPoolExecutor(4) as pool:
        first = pool.submit(_post, base, small(seed=100))
        wait_for(lambda: gated.started == [100], what="the first generation to start")
        later = []
        for seed in (200, 300, 400):
            later.append(pool.submit(_post, base, small(seed=seed)))
            n = len(later)
            wait_for(lambda n=n: httpx.get(f"{base}/health").json()["queue_depth"] == n,
                     what="the request to be queued")
        gated.release(4)
        answers = [f.result() for f in [first, *later]]
    assert [a.status_code for a in answers] == [200] * 4
    assert gated.started == [100, 200, 300, 400]


def test_full_queue_answers_503_with_retry_after(gated: GatedBackend) -> None:
    with serving(create_app(gated, ServeConfig(queue=1))) as base, \
            concurrent.futures.ThreadPoolExecutor(2) as pool:
        running = pool.submit(_post, base, small(seed=1))
        wait_for(lambda: gated.started == [1], what="the first generation to start")
        waiting = pool.submit(_post, base, small(seed=2))
        wait_for(lambda: httpx.get(f"{base}/health").json()["queue_depth"] == 1,
                 what="the second request to be queued")
        refused = _post(base, small(seed=3))
        assert refused.status_code == 503
        assert int(refused.headers["retry-after"]) >= 1
        gated.release(2)
        assert running.result().status_code == 200
        assert waiting.result().status_code == 200
        metrics = httpx.get(f"{base}/metrics").text
    assert gated.started == [1, 2]
    assert parse_metrics(metrics)[("riff_http_rejected_queue_full_total", "")] == 1


def test_token_required_when_set(renderer: Renderer) -> None:
    backend = GatedBackend(renderer, gated=False)
    with serving(create_app(backend, ServeConfig(token="s3cret-token"))) as base:
        assert httpx.get(f"{base}/health").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong-token"},
                        {"Authorization": "Basic czNjcmV0LXRva2Vu"}):
            resp = httpx.post(f"{base}/run_inference/", json=small(), headers=headers)
            assert resp.status_code == 401
            assert resp.headers["www-authenticate"] == "Bearer"
            assert httpx.get(f"{base}/metrics", headers=headers).status_code == 401
        good = {"Authorization": "Bearer s3cret-token"}
        assert httpx.post(f"{base}/run_inference/", json=small(), headers=good,
                          timeout=120).status_code == 200
    assert backend.calls == 1


def test_cors_off_by_default_and_on_when_asked(renderer: Renderer) -> None:
    backend = GatedBackend(renderer, gated=False)
    pre = {"Origin": "http://app.example", "Access-Control-Request-Method": "POST"}
    with serving(create_app(backend, ServeConfig())) as base:
        resp = httpx.options(f"{base}/run_inference/", headers=pre)
        assert "access-control-allow-origin" not in resp.headers
    with serving(create_app(backend, ServeConfig(cors_origins=("http://app.example",)))) as base:
        resp = httpx.options(f"{base}/run_inference/", headers=pre)
        assert resp.headers["access-control-allow-origin"] == "http://app.example"
        other = httpx.options(f"{base}/run_inference/",
                              headers={**pre, "Origin": "http://evil.example"})
        assert other.headers.get("access-control-allow-origin") != "http://evil.example"


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (-?[0-9.e+]+|\+Inf|NaN)$')


def parse_metrics(text: str) -> dict[tuple[str, str], float]:
    """Parse Prometheus text format strictly enough to fail on malformed lines."""
    out: dict[tuple[str, str], float] = {}
    typed: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            typed.add(line.split()[2])
            continue
        if line.startswith("# HELP ") or not line:
            continue
        match = _SAMPLE.match(line)
        assert match, f"bad metrics line: {line!r}"
        name, labels, value = match.groups()
        base = re.sub(r"_(bucket|sum|count|total)$", "", name)
        assert name in typed or base in typed, f"untyped metric {name}"
        out[(name, labels or "")] = float(value)
    return out


def test_metrics_parse_and_count(url: str) -> None:
    assert httpx.post(f"{url}/run_inference/", json=small(), timeout=120).status_code == 200
    assert httpx.post(f"{url}/run_inference/", json={"alpha": 3}).status_code == 422
    resp = httpx.get(f"{url}/metrics")
    assert resp.headers["content-type"].startswith("text/plain")
    m = parse_metrics(resp.text)
    assert m[("riff_http_requests_total", '{route="/run_inference/",status="200"}')] == 1
    assert m[("riff_http_requests_total", '{route="/run_inference/",status="422"}')] == 1
    assert m[("riff_generation_seconds_count", "")] == 1
    assert m[("riff_generation_seconds_sum", "")] > 0
    assert m[("riff_queue_depth", "")] == 0


def test_health_and_openapi(url: str) -> None:
    health = httpx.get(f"{url}/health").json()
    assert health == {"status": "ok", "model": "tiny", "queue_depth": 0, "queue_limit": 4,
                      "busy": 0}
    schema = httpx.get(f"{url}/openapi.json").json()
    assert {"/run_inference/", "/v1/render", "/v1/clip", "/health", "/metrics"} <= set(
        schema["paths"])
    body = schema["paths"]["/run_inference/"]["post"]["requestBody"]["content"]
    assert body["application/json"]["schema"]["$ref"].endswith("/InferenceInput")
    assert "InferenceOutput" in json.dumps(schema["paths"]["/run_inference/"]["post"])


def test_the_web_apps_seed_ids_work_and_each_request_is_logged(
        url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="protocols.http.guard")
    for seed_id in ("agile", "marim", "motorway", "vibes"):
        resp = httpx.post(f"{url}/run_inference/", json=small(seed_image_id=seed_id),
                          timeout=300)
        assert resp.status_code == 200, (seed_id, resp.text)
    bad = httpx.post(f"{url}/run_inference/", json=small(seed_image_id="nosuchseed"))
    assert bad.status_code == 400 and "nosuchseed" in bad.text
    httpx.get(f"{url}/health")
    lines = [r.getMessage() for r in caplog.records if r.name == "protocols.http.guard"
             and r.levelno == logging.INFO]
    assert sum(re.fullmatch(r"POST /run_inference/ -> 200 in \d+\.\d{3} s \(queue \d+\)", line)
               is not None for line in lines) == 4, lines
    assert any(re.fullmatch(r"POST /run_inference/ -> 400 in .*", line) for line in lines), lines
    assert not any("/health" in line for line in lines)  # monitors' polls stay at debug


def _leave_after(base: str, body: dict, seconds: float, path: str = "/run_inference/") -> None:
    """A client that gives up: posts ``body`` and hangs up after ``seconds``."""
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{base}{path}", json=body, timeout=httpx.Timeout(30, read=seconds))


@pytest.mark.parametrize("path", ["/run_inference/", "/v1/render"])
def test_clients_that_leave_cost_no_generation(gated: GatedBackend, path: str) -> None:
    with serving(create_app(gated, ServeConfig(queue=8))) as base, \
            concurrent.futures.ThreadPoolExecutor(4) as pool:
        # The running request's client leaves: its generation is cancelled between steps.
        _leave_after(base, small(seed=1), 0.3, path)
        wait_for(lambda: gated.cancelled == [1], what="the running generation to be cancelled")
        stayer = pool.submit(httpx.post, f"{base}{path}", json=small(seed=2), timeout=120)
        wait_for(lambda: gated.started == [1, 2], what="the second generation to start")
        # Three clients queue behind it and leave: none of them is ever generated.
        for seed in (3, 4, 5):
            _leave_after(base, small(seed=seed), 0.3, path)
        wait_for(lambda: httpx.get(f"{base}/health").json()["queue_depth"] == 0,
                 what="the departed requests to leave the queue")
        last = pool.submit(httpx.post, f"{base}{path}", json=small(seed=6), timeout=120)
        gated.release(2)
        assert stayer.result().status_code == 200
        assert last.result().status_code == 200
    assert gated.started == [1, 2, 6]


@pytest.mark.parametrize("body", ["[" * 100_000 + "]" * 100_000,
                                  '{"start": ' * 40 + "1" + "}" * 40,
                                  "[" * 2000 + "]" * 2000])
def test_deeply_nested_json_is_a_400(url: str, body: str) -> None:
    for path in ("/run_inference/", "/v1/render", "/v1/clip"):
        resp = httpx.post(f"{url}{path}", content=body[:60_000],
                          headers={"Content-Type": "application/json"})
        assert resp.status_code in (400, 413), (path, resp.status_code, resp.text[:200])
        assert "nested" in resp.text or "not JSON" in resp.text or resp.status_code == 413
