"""Phase-gradient heap integration (PGHI): a phase estimate from STFT magnitudes alone.

Why: Griffin-Lim from random phase needs many iterations; PGHI (Prusa, Balazs, Sondergaard,
"A noniterative method for reconstruction of phase from STFT magnitude", 2017) gives a start
that a few Griffin-Lim iterations polish. For a Gaussian window the log-magnitude determines
the phase gradient; a Hann window of ``L`` samples behaves like a Gaussian with
``lambda = 0.25645 * L**2`` (samples squared). In the centred phase convention:

    dphi/dn   = 2 pi k / M + (1 / lambda) d log s / dnu     (per sample; nu in cycles/sample)
    dphi/dnu  = -lambda d log s / dn

The integration follows the largest magnitudes first, so the phase of strong
components is integrated along ridges. It runs in numba (compiled once, cached on disk).
"""

from __future__ import annotations

import math

import numba
import numpy as np

HANN_LAMBDA = 0.25645


BUCKETS = 4096


@numba.njit(cache=True, nogil=True)
def _integrate(
    logs: np.ndarray,
    tgrad: np.ndarray,
    fgrad: np.ndarray,
    floor: float,
    circular: bool,
    phase: np.ndarray,
) -> None:
    """Heap integration with a bucket queue (priority = log magnitude in BUCKETS steps).

    Exact heap order only matters between cells of clearly different magnitude, so a bucket
    queue (O(1) per cell) replaces the binary heap (O(log n)). Starting points are taken in
    descending bucket order; each floods its island.
    """
    frames, bins = logs.shape
    n = frames * bins
    top = logs.max()
    span = max(top - floor, 1e-6)
    bucket = np.full(n, -1, dtype=np.int32)
    count = np.zeros(BUCKETS + 1, dtype=np.int64)
    for m in range(frames):
        for k in range(bins):
            v = logs[m, k]
            if v > floor:
                b = min(BUCKETS - 1, int((v - floor) / span * BUCKETS))
                bucket[m * bins + k] = b
                count[b + 1] += 1
    for b in range(BUCKETS):
        count[b + 1] += count[b]
    order = np.empty(count[BUCKETS], dtype=np.int64)
    fill = count[:BUCKETS].copy()
    for cell in range(n):
        b = bucket[cell]
        if b >= 0:
            order[fill[b]] = cell
            fill[b] += 1
    head = np.full(BUCKETS, -1, dtype=np.int64)
    nxt = np.empty(n, dtype=np.int64)
    done = bucket < 0  # cells too weak to matter keep the phase they came with
    for i in range(order.shape[0] - 1, -1, -1):
        start = order[i]
        if done[start]:
            continue
        done[start] = True
        phase[start // bins, start % bins] = 0.0
        cur = bucket[start]
        nxt[start] = -1
        head[cur] = start
        while True:
            while cur >= 0 and head[cur] < 0:
                cur -= 1
            if cur < 0:
                break
            cell = head[cur]
            head[cur] = nxt[cell]
            m = cell // bins
            k = cell % bins
            for step in (-1, 1):
                mm = m + step
                if circular:
                    mm %= frames
                if 0 <= mm < frames:
                    other = mm * bins + k
                    if not done[other]:
                        phase[mm, k] = phase[m, k] + step * 0.5 * (tgrad[m, k] + tgrad[mm, k])
                        done[other] = True
                        b = bucket[other]
                        nxt[other] = head[b]
                        head[b] = other
                        cur = max(cur, b)
                kk = k + step
                if 0 <= kk < bins:
                    other = m * bins + kk
                    if not done[other]:
                        phase[m, kk] = phase[m, k] + step * 0.5 * (fgrad[m, k] + fgrad[m, kk])
                        done[other] = True
                        b = bucket[other]
                        nxt[other] = head[b]
                        head[b] = other
                        cur = max(cur, b)


def pghi(
    magnitude: np.ndarray,
    *,
    win: int,
    hop: float,
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
    _frames, bins = s.shape
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
    _integrate(logs, tgrad.astype(np.float32), fgrad.astype(np.float32), floor, circular, phase)
    return phase
