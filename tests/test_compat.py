"""The seed documents' APIs as written: the diffusers-style RiffusionPipeline and Replicate's
riffusion request (Python, HTTP /predictions and the CLI), with the tiny model."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from engine.errors import InvalidRequest
from engine.model.compat import (
    RiffusionPipeline,
    replicate_request,
    spectrogram_to_audio,
    wav_bytes_from_spectrogram_image,
)
from engine.model.request import InferenceRequest, PromptInput
from engine.takes.render import Renderer
from protocols.http.app import create_app
from tests.http_support import serving, shared_renderer

ROOT = Path(__file__).resolve().parent.parent

#: The guide's Python usage (seed document), with the tiny model for the hub's weights.
GUIDE_SNIPPET = '''
from engine import RiffusionPipeline

pipe = RiffusionPipeline.from_pretrained("tiny")

# Generate spectrogram
image = pipe(
    prompt="funky bass line with slap technique",
    num_inference_steps=50,
    guidance_scale=7
).images[0]
'''

#: The guide's Replicate inputs (seed document), as sent to Cog's HTTP API.
REPLICATE_INPUT = {"prompt_a": "jazzy piano solo", "prompt_b": "electronic beat drop",
                   "alpha": 0.5, "num_inference_steps": 50}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pipe() -> RiffusionPipeline:
    return RiffusionPipeline.from_pretrained("tiny", device="cpu")


@pytest.mark.slow
def test_the_guide_snippet_runs_as_written() -> None:
    scope: dict[str, Any] = {}
    exec(GUIDE_SNIPPET, scope)
    image = scope["image"]
    assert isinstance(image, Image.Image)
    assert image.size == (512, 512) and image.mode == "RGB"
    assert image.getexif()[11000] == 44100  # Riffusion's spectrogram tags
    audio, rate = spectrogram_to_audio(image)
    assert rate == 44100 and audio.shape == (1, 511 * 441)


def test_pipeline_seeds_img2img_and_riffuse(pipe: RiffusionPipeline) -> None:
    def call(**kw: Any) -> Any:
        return pipe(prompt="jazz", num_inference_steps=2, width=64, **kw)

    a = call(generator=torch.Generator().manual_seed(7))
    b = call(seed=7)
    assert a.seeds == [7] and a.images[0].tobytes() == b.images[0].tobytes()
    assert a[0][0].tobytes() == a.images[0].tobytes()  # diffusers' tuple-style access
    assert call(seed=8).images[0].tobytes() != a.images[0].tobytes()
    two = pipe(prompt=["jazz", "rock"], num_inference_steps=2, width=64, seed=7)
    assert two.seeds == [7, 8] and two.images[0].tobytes() == a.images[0].tobytes()
    # img2img with `image` (or `init_image`) and `strength` is Riffusion's seed-image path.
    init = a.images[0]
    img2img = pipe(prompt="rock", image=init, strength=0.5, num_inference_steps=4, seed=3)
    request = InferenceRequest(start=PromptInput("rock", seed=3, denoising=0.5),
                               num_inference_steps=4, seed_image_id=None)
    assert pipe.riffuse(request, init_image=init).tobytes() == img2img.images[0].tobytes()
    assert pipe(prompt="rock", init_image=init, strength=0.5, num_inference_steps=4,
                seed=3).images[0].tobytes() == img2img.images[0].tobytes()
    with pytest.raises(InvalidRequest, match="height"):
        pipe(prompt="x", height=256)
    with pytest.raises(TypeError, match="nonsense"):
        RiffusionPipeline.from_pretrained("tiny", nonsense=1)
    wav, seconds = wav_bytes_from_spectrogram_image(img2img.images[0])
    data, rate = sf.read(wav)
    assert rate == 44100 and len(data) == 63 * 441 and seconds == pytest.approx(63 * 441 / 44100)


def test_replicate_request_matches_replicates_model() -> None:
    req = replicate_request({"input": {**REPLICATE_INPUT, "seed": 5}})
    assert (req.start.prompt, req.end_or_start.prompt, req.alpha) == (
        "jazzy piano solo", "electronic beat drop", 0.5)
    assert req.num_inference_steps == 50 and req.seed_image_id == "vibes"
    assert req.start.denoising == 0.75 and req.start.seed == req.end_or_start.seed == 5
    solo = replicate_request({"prompt_a": "folk", "prompt_b": "", "alpha": 0.3})
    assert solo.alpha == 0.0 and solo.end_or_start.prompt == "folk"  # blank prompt_b
    typo = replicate_request({"seed_image_id": "mask_graident_top_fifth_75"})
    assert typo.seed_image_id == "mask_gradient_top_fifth_75" and typo.start.prompt == (
        "funky synth solo")
    with pytest.raises(InvalidRequest, match="unknown field"):
        replicate_request({"prompt": "x"})
    with pytest.raises(InvalidRequest, match="alpha"):
        replicate_request({"alpha": 2})


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return shared_renderer()


def test_predictions_answers_the_guides_example(renderer: Renderer) -> None:
    with serving(create_app(renderer)) as url:
        assert httpx.get(f"{url}/health-check").json()["status"] == "READY"
        r = httpx.post(f"{url}/predictions", json={"input": REPLICATE_INPUT}, timeout=300)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["status"] == "succeeded" and answer["error"] is None
    assert answer["input"] == REPLICATE_INPUT
    audio_uri, image_uri = answer["output"]["audio"], answer["output"]["spectrogram"]
    assert audio_uri.startswith("data:audio/wav;base64,")
    data, rate = sf.read(io.BytesIO(base64.b64decode(audio_uri.split(",", 1)[1])))
    assert rate == 44100 and len(data) == 511 * 441  # vibes: 512 px
    assert np.abs(data).max() > 0
    assert image_uri.startswith("data:image/jpeg;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(image_uri.split(",", 1)[1])))
    assert image.size == (512, 512)


def test_predictions_rejects_bad_input(renderer: Renderer) -> None:
    with serving(create_app(renderer)) as url, httpx.Client(base_url=url, timeout=60) as c:
        for body, status, words in [
            ({"input": {"alpha": 2}}, 422, "alpha"),
            ({"input": {"prompt": "x"}}, 422, "unknown field"),
            ({"input": {"seed_image_id": "../etc/passwd"}}, 422, "plain name"),
            ({"input": {"seed_image_id": "nope"}}, 400, "unknown seed image"),
            ({"input": {"num_inference_steps": 500}}, 422, "num_inference_steps"),
            ({"input": "text"}, 422, "input"),
            ([1, 2], 422, "input"),
        ]:
            r = c.post("/predictions", json=body)
            assert r.status_code == status, (body, r.text)
            assert words in r.json()["detail"], (body, r.text)
        assert c.post("/predictions", content=b"{", headers={
            "content-type": "application/json"}).status_code == 400


def test_cli_renders_a_replicate_input(tmp_path: Path) -> None:
    (tmp_path / "r.json").write_text(json.dumps({"input": {
        "prompt_a": "acoustic folk guitar", "prompt_b": "heavy metal distortion",
        "alpha": 0.3, "seed": 1}}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "protocols.cli", "render", "--model", "tiny",
                          "--request", str(tmp_path / "r.json"), "--steps", "2", "--width",
                          "64", "--out", str(tmp_path / "o.wav"), "--image",
                          str(tmp_path / "o.png")], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert sf.info(tmp_path / "o.wav").frames == 63 * 441
    assert Image.open(tmp_path / "o.png").size == (64, 512)
