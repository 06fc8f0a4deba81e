"""Compiled CPU kernels for the Griffin-Lim inner loop (numba, cached on disk).

Why: in NumPy or torch every step of an iteration (gather, window, overlap-add, magnitude
projection, momentum) creates a frame-sized temporary; on a small CPU that allocation and the
extra passes over memory cost more than the FFTs. These kernels fuse them and write into
preallocated arrays. Each kernel has a torch twin in :mod:`engine.dsp.stft` /
:mod:`engine.dsp.phase` for other devices.
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
    # single precision throughout: a float64 momentum would promote every update to complex128
    mom = np.float32(momentum)
    ahead = np.float32(1.0) + mom
    for cm in range(channels * frames):
        c = cm // frames
        m = cm % frames
        for k in range(used):
            z = rebuilt[c, m, k]
            re = z.real
            im = z.imag
            scale = amp[c, m, k] / np.sqrt(re * re + im * im + np.float32(1e-30))
            cre = re * scale
            cim = im * scale
            p = prev[c, m, k]
            rebuilt[c, m, k] = complex(ahead * cre - mom * p.real, ahead * cim - mom * p.imag)
            prev[c, m, k] = complex(cre, cim)
        for k in range(used, bins):
            rebuilt[c, m, k] = 0
            prev[c, m, k] = 0


@numba.njit(cache=True, nogil=True)
def set_magnitude(spec: np.ndarray, amp: np.ndarray) -> None:
    """In place: ``spec = amp * spec / |spec|`` for complex spec (C, F, K), amp (C, F, K)."""
    channels, frames, bins = spec.shape
    for cm in range(channels * frames):
        c = cm // frames
        m = cm % frames
        for k in range(bins):
            z = spec[c, m, k]
            power = z.real * z.real + z.imag * z.imag
            spec[c, m, k] = z * (amp[c, m, k] / np.sqrt(power + np.float32(1e-30)))


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


@numba.njit(cache=True, nogil=True)
def mel_of(
    linear: np.ndarray, lo: np.ndarray, w_lo: np.ndarray, w_hi: np.ndarray, out: np.ndarray
) -> None:
    """out (C, F, mels) = mel of linear (C, F, >= len(lo)); bin k feeds filters lo, lo + 1."""
    channels, frames, mels = out.shape
    bins = lo.shape[0]
    out[:] = 0.0
    for c in range(channels):
        for m in range(frames):
            for k in range(bins):
                v = linear[c, m, k]
                i = lo[k]
                out[c, m, i] += v * w_lo[k]
                if i + 1 < mels:
                    out[c, m, i + 1] += v * w_hi[k]


@numba.njit(cache=True, nogil=True)
def add_linear_clamped(
    base: np.ndarray,
    y: np.ndarray,
    lo: np.ndarray,
    w_lo: np.ndarray,
    w_hi: np.ndarray,
    out: np.ndarray,
) -> None:
    """out (C, F, len(lo)) = max(0, base + F y) for mel-domain y (C, F, mels)."""
    channels, frames, mels = y.shape
    bins = lo.shape[0]
    for c in range(channels):
        for m in range(frames):
            for k in range(bins):
                i = lo[k]
                v = base[c, m, k] + y[c, m, i] * w_lo[k]
                if i + 1 < mels:
                    v += y[c, m, i + 1] * w_hi[k]
                out[c, m, k] = v if v > 0 else 0.0


@numba.njit(cache=True, nogil=True)
def solve_tridiagonal(
    rhs: np.ndarray, lower: np.ndarray, cprime: np.ndarray, denom: np.ndarray
) -> None:
    """In place: rhs (C, F, n) <- G^-1 rhs for a tridiagonal G (Thomas algorithm).

    ``lower[i] = G[i, i - 1]``; ``cprime`` and ``denom`` come from
    :func:`tridiagonal_factors`.
    """
    channels, frames, n = rhs.shape
    d = np.empty(n)
    for c in range(channels):
        for m in range(frames):
            d[0] = rhs[c, m, 0] / denom[0]
            for i in range(1, n):
                d[i] = (rhs[c, m, i] - lower[i] * d[i - 1]) / denom[i]
            for i in range(n - 2, -1, -1):
                d[i] -= cprime[i] * d[i + 1]
            for i in range(n):
                rhs[c, m, i] = d[i]


@numba.njit(cache=True, nogil=True)
def richardson_lucy(
    observed: np.ndarray,
    kernel: np.ndarray,
    oversample: int,
    iterations: int,
    floor: float,
    envelope: np.ndarray,
) -> None:
    """In place: ``envelope`` (rows, frames * oversample) refined by Richardson-Lucy towards
    ``observed`` (rows, frames) = each frame ``m`` the sum of ``envelope[m * oversample + j] *
    kernel[reach + j]``, circularly. Torch twin: :func:`engine.dsp.retime.retime`'s loop."""
    rows, frames = observed.shape
    n = frames * oversample
    taps = kernel.shape[0]
    reach = (taps - 1) // 2
    padded = np.empty(n + taps + oversample)
    spread = np.empty(n + taps + oversample)
    norm = np.zeros(n)
    for m in range(frames):
        for t in range(taps):
            norm[(m * oversample + t - reach) % n] += kernel[t]
    ratio = np.empty(frames)
    total = np.empty(n)
    for r in range(rows):
        for _ in range(iterations):
            for i in range(padded.shape[0]):
                padded[i] = envelope[r, (i - reach) % n]
            for m in range(frames):
                acc = 0.0
                base = m * oversample
                for t in range(taps):
                    acc += padded[base + t] * kernel[t]
                ratio[m] = observed[r, m] / max(acc, floor)
            spread[:] = 0.0
            for m in range(frames):
                base = m * oversample
                v = ratio[m]
                for t in range(taps):
                    spread[base + t] += v * kernel[t]
            total[:] = 0.0
            for j in range(spread.shape[0]):  # the margins wrap around the loop
                total[(j - reach) % n] += spread[j]
            for i in range(n):
                envelope[r, i] *= total[i] / norm[i] if norm[i] > 0 else 0.0


def tridiagonal_factors(gram: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lower, cprime, denom) of a symmetric tridiagonal matrix for solve_tridiagonal."""
    n = gram.shape[0]
    diag = np.diag(gram).astype(np.float64)
    off = np.concatenate([[0.0], np.diag(gram, -1)]).astype(np.float64)
    cprime = np.zeros(n)
    denom = np.zeros(n)
    denom[0] = diag[0]
    for i in range(n):
        if i:
            denom[i] = diag[i] - off[i] * cprime[i - 1]
        if i + 1 < n:
            cprime[i] = off[i + 1] / denom[i]
    return off, cprime, denom
