"""Phase-gradient heap integration (PGHI): a phase estimate from STFT magnitudes alone.

Why: Griffin-Lim from random phase needs many iterations; PGHI (Prusa, Balazs, Sondergaard,
"A noniterative method for reconstruction of phase from STFT magnitude", 2017) gives a start
that a few Griffin-Lim iterations polish. For a Gaussian window the log-magnitude determines
the phase gradient; a Hann window of ``L`` samples behaves like a Gaussian with
``lambda = 0.25645 * L**2`` (samples squared). In the centred phase convention:

    dphi/dn   = 2 pi k / M + (1 / lambda) d log s / dnu     (per sample; nu in cycles/sample)
    dphi/dnu  = -lambda d log s / dn

The heap integration follows the largest magnitudes first, so the phase of strong
components is integrated along ridges. It runs in numba (compiled once, cached on disk).
"""

from __future__ import annotations

import math

import numba
import numpy as np

HANN_LAMBDA = 0.25645


@numba.njit(cache=True, nogil=True)
def _heap_push(vals: np.ndarray, idx: np.ndarray, size: int, v: float, i: int) -> int:
    pos = size
    vals[pos] = v
    idx[pos] = i
    while pos > 0:
        parent = (pos - 1) >> 1
        if vals[parent] >= vals[pos]:
            break
        vals[parent], vals[pos] = vals[pos], vals[parent]
        idx[parent], idx[pos] = idx[pos], idx[parent]
        pos = parent
    return size + 1


@numba.njit(cache=True, nogil=True)
def _heap_pop(vals: np.ndarray, idx: np.ndarray, size: int) -> int:
    """Remove the root (caller reads it first); returns the new size."""
    size -= 1
    vals[0] = vals[size]
    idx[0] = idx[size]
    pos = 0
    while True:
        left = 2 * pos + 1
        if left >= size:
            break
        child = left
        if left + 1 < size and vals[left + 1] > vals[left]:
            child = left + 1
        if vals[pos] >= vals[child]:
            break
        vals[child], vals[pos] = vals[pos], vals[child]
        idx[child], idx[pos] = idx[pos], idx[child]
        pos = child
    return size


@numba.njit(cache=True, nogil=True)
def _integrate(
    logs: np.ndarray,
    tgrad: np.ndarray,
    fgrad: np.ndarray,
    order: np.ndarray,
    floor: float,
    circular: bool,
    phase: np.ndarray,
) -> None:
    frames, bins = logs.shape
    done = logs <= floor  # cells too weak to matter keep the phase they came with
    vals = np.empty(frames * bins, dtype=np.float32)
    idx = np.empty(frames * bins, dtype=np.int64)
    for start in order:
        m0 = start // bins
        k0 = start % bins
        if done[m0, k0]:
            continue
        done[m0, k0] = True
        phase[m0, k0] = 0.0
        size = _heap_push(vals, idx, 0, logs[m0, k0], start)
        while size > 0:
            cell = idx[0]
            size = _heap_pop(vals, idx, size)
            m = cell // bins
            k = cell % bins
            # neighbours in time (phase advance tgrad) and frequency (fgrad)
            for step in (-1, 1):
                mm = m + step
                if circular:
                    mm %= frames
                if 0 <= mm < frames and not done[mm, k]:
                    phase[mm, k] = phase[m, k] + step * 0.5 * (tgrad[m, k] + tgrad[mm, k])
                    done[mm, k] = True
                    size = _heap_push(vals, idx, size, logs[mm, k], mm * bins + k)
                kk = k + step
                if 0 <= kk < bins and not done[m, kk]:
                    phase[m, kk] = phase[m, k] + step * 0.5 * (fgrad[m, k] + fgrad[m, kk])
                    done[m, kk] = True
                    size = _heap_push(vals, idx, size, logs[m, kk], m * bins + kk)


def pghi(
    magnitude: np.ndarray,
    *,
    win: int,
    hop: int,
    n_fft: int,
    circular: bool = False,
    tolerance: float = 1e-4,
    seed: int = 0,
) -> np.ndarray:
    """Phase (frames, bins) float32 in the centred convention for magnitudes (frames, bins).

    Cells below ``tolerance`` times the peak get a random phase. ``circular`` wraps the time
    neighbours so the estimate is consistent across a loop's seam.
    """
    s = np.ascontiguousarray(magnitude, dtype=np.float32)
    frames, bins = s.shape
    lam = HANN_LAMBDA * win * win
    peak = float(s.max()) if s.size else 0.0
    rng = np.random.default_rng(seed)
    phase = rng.uniform(-math.pi, math.pi, size=s.shape).astype(np.float32)
    if peak <= 0:
        return phase
    logs = np.log(np.maximum(s, np.float32(peak * 1e-10)))
    # d log s / d nu with nu in cycles/sample: centred differences over bins (1/M apart)
    dlog_dk = np.empty_like(logs)
    dlog_dk[:, 1:-1] = (logs[:, 2:] - logs[:, :-2]) * 0.5
    dlog_dk[:, 0] = 0.0
    dlog_dk[:, -1] = 0.0
    k = np.arange(bins, dtype=np.float32)
    tgrad = (2 * math.pi * hop / n_fft) * k[None, :] + (hop * n_fft / lam) * dlog_dk
    # d log s / d n: centred differences over frames (hop samples apart)
    if circular:
        dlog_dm = (np.roll(logs, -1, axis=0) - np.roll(logs, 1, axis=0)) * 0.5
    else:
        dlog_dm = np.zeros_like(logs)
        dlog_dm[1:-1] = (logs[2:] - logs[:-2]) * 0.5
    fgrad = (-lam / (hop * n_fft)) * dlog_dm
    floor = float(np.log(peak * tolerance))
    strong = np.flatnonzero(logs.reshape(-1) > floor)
    order = strong[np.argsort(-logs.reshape(-1)[strong], kind="stable")]
    _integrate(
        logs,
        tgrad.astype(np.float32),
        fgrad.astype(np.float32),
        order,
        floor,
        circular,
        phase,
    )
    return phase
