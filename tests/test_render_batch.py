"""Renderer.render_batch / render_clip_batch: what a Ray Serve replica runs for one batch.

The tiny model on the CPU: requests equal but for alpha share their UNet calls, every request
gets its own answer in order, and one bad request does not fail its batch-mates.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from engine.errors import Cancelled, UnknownId
from engine.live.jobs import ClipSpec, GenerationJob
from engine.live.wire import parse_request
from engine.model.request import InferenceRequest
from engine.takes.render import Rendered, Renderer
from tests.http_support import shared_renderer


def request(seed: int = 3, alpha: float = 0.5, **extra: Any) -> InferenceRequest:
    return parse_request({"alpha": alpha, "num_inference_steps": 3, "width": 64,
                          "seed_image_id": "og_beat", "start": {"prompt": "funk", "seed": seed},
                          "end": {"prompt": "jazz", "seed": seed + 1}, **extra})


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return shared_renderer()


def test_alphas_of_one_request_share_unet_calls(renderer: Renderer) -> None:
    generator = renderer.generator
    before = generator.unet_calls
    renderer.render(request(alpha=0.25))
    one = generator.unet_calls - before
    before = generator.unet_calls
    out = renderer.render_batch([request(alpha=0.25), request(alpha=0.75)])
    assert generator.unet_calls - before == one  # two alphas, one set of UNet calls
    assert all(isinstance(r, Rendered) for r in out)
    alone = renderer.render(request(alpha=0.75))
    assert isinstance(out[1], Rendered)
    a = np.asarray(out[1].image, dtype=np.int16)
    b = np.asarray(alone.image, dtype=np.int16)
    assert np.abs(a - b).max() <= 2  # the same image as rendered alone (float tolerance)


def test_different_requests_run_in_one_call_and_answer_in_order(renderer: Renderer) -> None:
    generator = renderer.generator
    before = generator.unet_calls
    renderer.render(request(seed=10))
    one = generator.unet_calls - before
    reqs = [request(seed=10), request(seed=20), request(seed=10, alpha=0.9)]
    before = generator.unet_calls
    out = renderer.render_batch(reqs)
    assert generator.unet_calls - before == 2 * one  # two groups: seeds 10 (x2) and 20
    assert [type(r) for r in out] == [Rendered] * 3
    first = out[0]
    assert isinstance(first, Rendered)
    a = np.asarray(first.image, dtype=np.int16)
    b = np.asarray(renderer.render(reqs[0]).image, dtype=np.int16)
    assert np.abs(a - b).max() <= 2  # batched with its alpha twin: float tolerance


def test_a_failing_request_does_not_fail_its_batch_mates(renderer: Renderer) -> None:
    out = renderer.render_batch([request(seed=1, seed_image_id="no_such_seed"), request(seed=2)])
    assert isinstance(out[0], UnknownId)
    assert isinstance(out[1], Rendered)


def test_a_group_stops_only_when_all_its_members_are_cancelled(renderer: Renderer) -> None:
    out = renderer.render_batch(
        [request(seed=1), request(seed=1, alpha=0.7), request(seed=2)],
        [lambda: True, lambda: True, lambda: False])
    assert isinstance(out[0], Cancelled) and isinstance(out[1], Cancelled)
    assert isinstance(out[2], Rendered)
    out = renderer.render_batch([request(seed=1), request(seed=1, alpha=0.7)],
                                [lambda: True, lambda: False])
    assert all(isinstance(r, Rendered) for r in out)  # one member still wants it


def test_clip_batch_answers_each_job(renderer: Renderer) -> None:
    spec = ClipSpec(tempo=120.0, bars=1, beats_per_bar=4, sample_rate=48000, num_samples=96000)
    jobs = [GenerationJob(job_id=i, request=request(seed=5, alpha=a, width=192), spec=spec,
                          start_bar=0, created=0.0) for i, a in ((1, 0.25), (2, 0.75))]
    try:
        out = renderer.render_clip_batch(jobs)
    except ImportError:
        pytest.skip("engine.live.clip.conform_image is not available")
    assert [getattr(c, "job_id", None) for c in out] == [1, 2]
    for clip in out:
        assert not isinstance(clip, Exception)
        assert clip.audio.shape == (96000, 2) and np.abs(clip.audio).max() > 0
