"""Band envelopes made consistent with a scaled synthesis hop, so a stretched loop keeps its onsets.

Why: a loop is tempo-locked by synthesising its frames at a hop of ``hop * scale`` (see
:func:`engine.dsp.phase.mel_to_audio`). Each frame's magnitudes were measured with a 100 ms
window, so a hit 30 ms after a frame's centre is in that frame at the window's weight for
30 ms. Synthesised at a stretched hop (``scale`` > 1) the frame sits ``30 * scale`` ms before the
hit's new position, where the window's weight is lower: the frame holds more of the hit than a
hit at the new position can give it, and phase reconstruction can only match it by putting
the excess *earlier*: a pre-echo that starts up to half a window before the hit and moved the
measured onset 3.6 ms early at 1.56 times the seed's length (60 BPM from 93.75). Compressing
(``scale`` < 1) leaves those frames short of energy instead, which costs little timing, but
retimed frames still bring the result closer to the loop played at that tempo.

The fix is to give every frame the magnitudes a frame at its new position would measure. Each
mel band's magnitude over time is modelled as a non-negative source envelope ``e`` (on a grid
``oversample`` times finer than the frames, so a hit between two frames has a place) smeared by
the analysis window: ``A[m] = sum_i e[i] w(m - i / oversample)``, ``w`` the Hann window in frame
units. ``e`` is recovered by Richardson-Lucy deconvolution (multiplicative, so it stays
non-negative and sharp where the envelope rises steeply), then split into a stationary part
(a morphological opening over half a window: what lasts) and the transients (the rest). A
stationary sound is stretched: its envelope keeps its level over the longer time, so it is
re-smeared with the window as the scaled hop sees it, ``scale * w(scale * x)``. A transient is
moved, not stretched: it keeps its level and its shape at the new position, ``w(scale * x)``.
Sustained tones (a flat envelope) come out unchanged, hits come out as the window at the new
hop sees them, so the reconstruction has nothing to smear.

Runs on the tensor's device; the deconvolution, the costly part (30 passes, 200 for the
"quality" phase method), in a numba kernel on the CPU.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from engine.dsp import kernels

#: Fine grid: source envelope samples per frame (5 ms at Riffusion's 10 ms hop).
OVERSAMPLE = 2
#: Richardson-Lucy iterations (30 bring a hit's timing error at 1.56x under 1 ms with the
#: "fast" phase method; 15 do not; "quality", which fits the frames closer, takes 200).
ITERATIONS = 30


def _kernel(win_frames: float, scale: float, oversample: int, dtype: torch.dtype,
            device: torch.device) -> torch.Tensor:
    """Hann window of ``win_frames`` frames seen ``scale`` times closer, on the fine grid
    (``2 * reach + 1`` taps, symmetric; ``reach`` from the unscaled window)."""
    reach = math.ceil(oversample * win_frames / 2 / min(scale, 1.0))
    x = torch.arange(-reach, reach + 1, dtype=torch.float64, device=device) / oversample
    x = x * scale
    w = torch.where(x.abs() < win_frames / 2, torch.cos(math.pi * x / win_frames) ** 2,
                    torch.zeros_like(x))
    return w.to(dtype)


def _wrap_pad(x: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """``x`` (..., n) extended circularly (any amount, even past one period)."""
    n = x.shape[-1]
    index = torch.arange(-before, n + after, device=x.device) % n
    return x[..., index]


def _smear(e: torch.Tensor, kernel: torch.Tensor, oversample: int) -> torch.Tensor:
    """Frames (rows, frames) of fine envelopes (rows, frames * oversample), circularly:
    ``out[m] = sum_j e[m * oversample + j] * kernel[reach + j]``."""
    reach = (kernel.numel() - 1) // 2
    padded = _wrap_pad(e, reach, reach + oversample)
    frames = e.shape[-1] // oversample
    return padded.unfold(-1, kernel.numel(), oversample)[:, :frames] @ kernel


def _spread(r: torch.Tensor, kernel: torch.Tensor, oversample: int, n: int) -> torch.Tensor:
    """The adjoint of :func:`_smear`: frame values (rows, frames) back onto the fine grid."""
    reach = (kernel.numel() - 1) // 2
    frames = r.shape[-1]
    full = torch.zeros(r.shape[0], frames * oversample + 2 * reach, dtype=r.dtype,
                       device=r.device)
    for tap in range(kernel.numel()):
        if float(kernel[tap]) != 0.0:
            full[:, tap:tap + frames * oversample:oversample].add_(r, alpha=float(kernel[tap]))
    out = full[:, reach:reach + n].clone()
    index = (torch.arange(-reach, 0, device=r.device) % n)
    out.index_add_(1, index, full[:, :reach])
    index = (torch.arange(n, n + reach, device=r.device) % n)
    out.index_add_(1, index, full[:, reach + n:])
    return out


def _opening(x: torch.Tensor, size: int) -> torch.Tensor:
    """Grey opening along the last axis (circular): the largest envelope under ``x`` that
    holds every level for ``size`` samples, i.e. ``x`` without its peaks shorter than that."""
    half = size // 2
    eroded = -torch.nn.functional.max_pool1d(-_wrap_pad(x, half, half).unsqueeze(1), size, 1)
    return torch.nn.functional.max_pool1d(_wrap_pad(eroded[:, 0], half, half).unsqueeze(1),
                                          size, 1)[:, 0]


def retime(magnitudes: torch.Tensor, scale: float, win_frames: float, *,
           oversample: int = OVERSAMPLE, iterations: int = ITERATIONS,
           compiled: bool | None = None) -> torch.Tensor:
    """Magnitudes (..., frames), a loop, as frames synthesised ``scale`` times their hop
    apart would measure them (see the module docstring); ``win_frames``: the analysis window
    in hops. ``scale == 1`` returns the input. ``compiled``: the deconvolution in the numba
    kernel (the default on the CPU) or in torch operations (other devices; False tests it)."""
    if scale == 1.0:
        return magnitudes
    if not (math.isfinite(scale) and scale > 0 and win_frames > 0):
        raise ValueError(f"need a positive scale and window, not {scale!r}, {win_frames!r}")
    shape = magnitudes.shape
    frames = shape[-1]
    a = magnitudes.reshape(-1, frames).to(torch.float32)
    dev, n = a.device, frames * oversample
    analysis = _kernel(win_frames, 1.0, oversample, a.dtype, dev)
    synthesis = _kernel(win_frames, scale, oversample, a.dtype, dev)
    peak = float(a.max()) if a.numel() else 0.0
    if peak <= 0:
        return magnitudes
    floor = peak * 1e-9
    e = a.repeat_interleave(oversample, dim=-1) / float(analysis.sum() / oversample)
    if dev.type == "cpu" if compiled is None else compiled:
        fine = e.cpu().numpy().astype(np.float64)
        kernels.richardson_lucy(a.cpu().numpy().astype(np.float64),
                                analysis.cpu().numpy().astype(np.float64), oversample,
                                iterations, floor, fine)
        e = torch.from_numpy(fine.astype(np.float32)).to(dev)
    else:
        norm = _spread(torch.ones_like(a), analysis, oversample, n).clamp_min(1e-12)
        for _ in range(iterations):
            e = e * _spread(a / _smear(e, analysis, oversample).clamp_min(floor), analysis,
                            oversample, n) / norm
    steady = _opening(e, 2 * math.floor(oversample * win_frames / 4) + 1)
    out = _smear(e - steady, synthesis, oversample) + scale * _smear(steady, synthesis,
                                                                     oversample)
    return out.clamp_min_(0).reshape(shape).to(magnitudes.dtype)
