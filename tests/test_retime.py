"""Band envelopes retimed for a scaled synthesis hop: hits moved, steady sounds kept."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.dsp.retime import retime

WIN = 10.0  # the analysis window in hops (100 ms at 10 ms)


def hann(x: np.ndarray) -> np.ndarray:
    return np.where(np.abs(x) < WIN / 2, np.cos(np.pi * x / WIN) ** 2, 0.0)


def hit_envelope(at: float, scale: float, frames: int = 80) -> np.ndarray:
    """One band's magnitudes over ``frames`` frames for a hit at frame ``at`` (a 5 ms
    exponential decay), measured by frames ``scale`` hops apart in the hit's own time (the
    window sees the hit ``scale`` times further away); scale 1 is the analysis."""
    tau = np.arange(0, 20, 0.05)
    decay = np.exp(-tau / 0.5)
    m = np.arange(frames)[:, None]
    return (decay * hann(scale * (m - at - tau))).sum(axis=1) * 0.05


@pytest.mark.parametrize("scale", [1.5625, 0.52])
def test_a_hit_gets_the_magnitudes_the_scaled_hop_measures(scale: float) -> None:
    measured = hit_envelope(40.3, 1.0)
    want = hit_envelope(40.3, scale)
    out = retime(torch.tensor(measured, dtype=torch.float32)[None], scale, WIN)[0].numpy()
    as_measured = np.abs(measured - want).max() / want.max()
    assert as_measured > 0.3  # what synthesising the frames as measured gets wrong
    assert np.abs(out - want).max() / want.max() < 0.1, (out, want)
    before = slice(0, 40)  # the frames before the hit: the pre-echo
    assert abs(out[before].sum() - want[before].sum()) < 0.15 * want[before].sum()


@pytest.mark.parametrize("scale", [1.5625, 0.52])
def test_a_steady_sound_keeps_its_level(scale: float) -> None:
    frames = np.arange(120)
    slow = 1.0 + 0.3 * np.sin(2 * np.pi * frames / 120)  # a swell over the whole loop
    out = retime(torch.tensor(slow, dtype=torch.float32)[None], scale, WIN)[0].numpy()
    np.testing.assert_allclose(out, slow, rtol=0.02)


def test_channels_and_bands_are_retimed_apart() -> None:
    rng = np.random.default_rng(0)
    mags = torch.tensor(rng.random((2, 3, 60)) ** 4, dtype=torch.float32)
    out = retime(mags, 1.3, WIN)
    assert out.shape == mags.shape and bool(torch.all(out >= 0))
    alone = retime(mags[1, 2][None], 1.3, WIN)[0]
    torch.testing.assert_close(out[1, 2], alone)


def test_scale_one_is_identity_and_bad_scales_are_refused() -> None:
    mags = torch.rand(1, 4, 20)
    assert retime(mags, 1.0, WIN) is mags
    assert bool(torch.all(retime(torch.zeros(1, 4, 20), 1.5, WIN) == 0))
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="positive scale"):
            retime(mags, bad, WIN)


def test_the_compiled_kernel_matches_its_torch_twin() -> None:
    rng = np.random.default_rng(1)
    mags = torch.tensor(rng.random((1, 5, 48)) ** 6, dtype=torch.float32)
    for scale in (1.7, 0.6):
        torch.testing.assert_close(retime(mags, scale, WIN, compiled=True),
                                   retime(mags, scale, WIN, compiled=False),
                                   rtol=1e-3, atol=1e-5 * float(mags.max()))
