"""Circular time padding: the diffusion generates loops whose right edge continues into the left."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from engine.errors import InvalidRequest
from engine.model.pipeline import RiffusionGenerator
from engine.model.request import InferenceRequest
from engine.model.seamless import TimeCircularPadding


def test_a_patched_convolution_is_shift_equivariant_in_time_only_when_enabled() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, padding=1)
    switch = TimeCircularPadding(conv)
    assert switch.convs == [conv]
    x = torch.randn(1, 2, 8, 16)
    shifted = torch.roll(x, 5, dims=-1)
    plain = conv(x)
    switch.enabled = True
    looped = conv(x)
    # Rolling the input in time rolls the output exactly: the edges are neighbours.
    torch.testing.assert_close(conv(shifted), torch.roll(looped, 5, dims=-1))
    # The frequency axis keeps zero padding: the interior is unchanged, only the time edges.
    torch.testing.assert_close(looped[..., 1:-1], plain[..., 1:-1])
    assert not torch.allclose(looped[..., 0], plain[..., 0])
    switch.enabled = False
    torch.testing.assert_close(conv(x), plain)
    assert not torch.allclose(conv(shifted), torch.roll(plain, 5, dims=-1))


def test_the_request_field_is_a_strict_boolean() -> None:
    req = InferenceRequest.from_dict({"start": {"prompt": "x", "seed": 1}, "seamless": True})
    assert req.seamless and req.to_dict()["seamless"] is True
    assert not InferenceRequest.from_dict({"start": {"prompt": "x", "seed": 1}}).seamless
    with pytest.raises(InvalidRequest, match="seamless"):
        InferenceRequest.from_dict({"start": {"prompt": "x", "seed": 1}, "seamless": 1})


def _seam_ratio(image: Image.Image) -> float:
    """Mean column difference across the wrap (last -> first) over the median one inside."""
    x = np.asarray(image.convert("L"), np.float32)
    inside = float(np.median(np.abs(np.diff(x, axis=1)).mean(axis=0)))
    return float(np.abs(x[:, -1] - x[:, 0]).mean()) / inside


@pytest.mark.slow
def test_seamless_generation_closes_the_seam_of_the_tiny_model() -> None:
    gen = RiffusionGenerator.load("tiny")
    ratios: dict[bool, list[float]] = {False: [], True: []}
    for seed in range(6):
        for seamless in (False, True):
            req = InferenceRequest.from_dict({
                "start": {"prompt": "held pad", "seed": seed, "denoising": 0.9},
                "num_inference_steps": 8, "seed_image_id": None if seed % 2 else "og_beat",
                "seamless": seamless})
            ratios[seamless].append(_seam_ratio(gen.generate(req).image))
    plain, looped = np.mean(ratios[False]), np.mean(ratios[True])
    assert looped < plain, ratios
    assert looped < 1.1, ratios  # the wrap is no rougher than any step inside the image
