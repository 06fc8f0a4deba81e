"""Compiled CPU kernels for the Griffin-Lim inner loop (numba, cached on disk).

Why: in NumPy or torch every step of an iteration (gather, window, overlap-add, magnitude
projection, momentum) creates a frame-sized temporary; on a small CPU that allocation and the
extra passes over memory cost more than the FFTs. These kernels fuse them and write into
preallocated arrays. Each kernel has a torch twin in :mod:`engine.stft` / :mod:`engine.phase`
for other devices.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def frames_from_signal(
    signal: np.ndarray, index: np.ndarray, window: np.ndarray, out: np.ndarray
) -> None:
    """Windowed frames in the centred layout: out (C, F, n_fft) from signal (C, N).

    Writes only the window's samples (the first and last ``win / 2`` of each row); the rest
    of ``out`` must already be zero.
    """
    channels, frames, n_fft = out.shape
    win = window.shape[0]
    half = win // 2
    for cm in range(channels * frames):
        c = cm // frames
        m = cm % frames
        for j in range(half):
            out[c, m, j] = signal[c, index[m, half + j]] * window[half + j]
            out[c, m, n_fft - half + j] = signal[c, index[m, j]] * window[j]


@numba.njit(cache=True, nogil=True)
def overlap_add(
    frames_: np.ndarray,
    index: np.ndarray,
    window: np.ndarray,
    inv_envelope: np.ndarray,
    out: np.ndarray,
) -> None:
    """Least-squares overlap-add of centred-layout frames (C, F, n_fft) into out (C, N)."""
    channels, frames, n_fft = frames_.shape
    win = window.shape[0]
    half = win // 2
    out[:] = 0.0
    for c in range(channels):
        for m in range(frames):
            for j in range(half):
                out[c, index[m, j]] += frames_[c, m, n_fft - half + j] * window[j]
                out[c, index[m, half + j]] += frames_[c, m, j] * window[half + j]
        for n in range(out.shape[1]):
            out[c, n] *= inv_envelope[n]


@numba.njit(cache=True, nogil=True)
def project_with_momentum(
    rebuilt: np.ndarray, amp: np.ndarray, prev: np.ndarray, momentum: float
) -> None:
    """One fast Griffin-Lim update, in place, for complex (C, F, K) arrays.

    ``c = amp * rebuilt / |rebuilt|``; ``rebuilt <- c + momentum * (c - prev)``; ``prev <- c``.
    Bins beyond ``amp``'s last column are set to zero.
    """
    channels, frames, bins = rebuilt.shape
    used = amp.shape[2]
    for cm in range(channels * frames):
        c = cm // frames
        m = cm % frames
        for k in range(used):
            z = rebuilt[c, m, k]
            power = z.real * z.real + z.imag * z.imag
            scale = amp[c, m, k] / np.sqrt(power + np.float32(1e-30))
            cz = z * scale
            rebuilt[c, m, k] = cz + momentum * (cz - prev[c, m, k])
            prev[c, m, k] = cz
        for k in range(used, bins):
            rebuilt[c, m, k] = 0
            prev[c, m, k] = 0


@numba.njit(cache=True, nogil=True)
def magnitude(spec: np.ndarray, bins: int, out: np.ndarray) -> None:
    """out (C, F, bins) = |spec[..., :bins]|."""
    channels, frames, _ = spec.shape
    for cm in range(channels * frames):
        c = cm // frames
        m = cm % frames
        for k in range(bins):
            z = spec[c, m, k]
            out[c, m, k] = np.sqrt(z.real * z.real + z.imag * z.imag)
