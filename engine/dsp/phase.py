"""Phase reconstruction: mel magnitudes -> audio.

Methods:

- ``"riffusion"``: Riffusion's own chain, torchaudio's InverseMelScale (least squares) and
  GriffinLim (32 iterations, momentum 0.99, random start, n_fft 17640). The baseline.
- ``"fast"`` (default): closed-form inverse mel, PGHI start, Griffin-Lim on the band below
  400 Hz alone at a low rate (1.4 kHz), a few fast Griffin-Lim iterations at 21 kHz,
  magnitudes fitted to the target mel, one synthesis at 44.1 kHz.
- ``"quality"``: the same start, more iterations, and each iteration projects the magnitudes
  onto the spectra whose mel equals the target (instead of fixing one linear magnitude), so
  the result's mel follows the image more closely.
- ``"gpu"``: what ``"fast"`` runs on any device but the CPU. The same grids, in tensor
  operations only, with nothing read back to the host until the audio: a vectorised
  phase-gradient start (:func:`phase_gradient_start`: a phase vocoder with identity phase
  locking) instead of PGHI's sequential heap (numba, on the CPU), then 80 low-band and 20
  full-band iterations, the last 10 fitting the mel as ``"quality"`` does. Why a separate
  name rather than another branch of ``"fast"``: ``"fast"`` on the CPU stays exactly what it
  was (its numba kernels and PGHI are the fastest there), every setting and caller that says
  ``"fast"`` gets the GPU variant on a GPU, and the name lets the GPU variant run, be tested
  and be benchmarked on the CPU.

Why 21 kHz: the image holds nothing above 10 kHz, and at 21 kHz a 10 ms hop is 210 samples,
the window 2100 and the FFT 8400: the same frames and the same 2.5 Hz bins as at 44.1 kHz with
half-size FFTs. Bins 0..4200 carry over to the 44.1 kHz grid unchanged, so one 44.1 kHz
synthesis of the final phase gives the output.

The inverse mel has a closed form: the mel filters only overlap their neighbours, so the Gram
matrix ``F^T F`` is tridiagonal and well conditioned, and the minimum-norm solution
``F (F^T F)^-1 M`` (what torchaudio's least squares computes, clipped at 0) costs a
tridiagonal (Thomas) solve per frame on the CPU, a small matrix product elsewhere, instead of
a least-squares solver run.

Output amplitude follows :func:`engine.dsp.spectrogram.audio_to_mel`: audio encoded there decodes
here at about its own level (no normalisation).
"""

from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from engine.dsp import kernels
from engine.dsp.pghi import HANN_LAMBDA, pghi
from engine.dsp.retime import ITERATIONS as RETIME_ITERATIONS
from engine.dsp.retime import retime
from engine.dsp.spectrogram import PCM_SCALE, SpectrogramParams, mel_filterbank
from engine.dsp.stft import Stft
from engine.errors import InvalidRequest

log = logging.getLogger(__name__)

METHODS: tuple[str, ...] = ("riffusion", "fast", "quality", "gpu")

#: phase_gradient_start: a log-magnitude rise (nepers per frame) that counts as an onset
ONSET_RISE = 0.5


@dataclass(frozen=True)
class MethodSettings:
    """Iteration counts and momentum of one reconstruction method."""

    iterations: int
    momentum: float
    mel_projection: int  # the last this many iterations fit the mel instead of a fixed magnitude
    tolerance: float = 1e-3  # PGHI: cells this far below the peak get random phase
    low_iterations: int = 0  # first, iterations on the band below low_cut_hz, at a low rate
    low_cut_hz: float = 400.0
    low_momentum: float = 0.99
    #: deconvolution passes when retiming frames for a scaled hop (:mod:`engine.dsp.retime`):
    #: the more iterations fit the frames' magnitudes, the more of any pre-hit energy left in
    #: them they turn into a pre-echo
    retime_iterations: int = 30


SETTINGS = {
    "fast": MethodSettings(
        iterations=7,
        momentum=0.99,
        mel_projection=0,
        tolerance=3e-3,
        low_iterations=40,
        low_cut_hz=400.0,
    ),
    "quality": MethodSettings(
        iterations=60, momentum=0.99, mel_projection=60, low_iterations=30, low_cut_hz=400.0,
        retime_iterations=200,
    ),
    "gpu": MethodSettings(
        iterations=20,
        momentum=0.99,
        mel_projection=10,
        tolerance=3e-3,
        low_iterations=80,
        low_cut_hz=400.0,
    ),
}


@dataclass(frozen=True)
class _MelBasis:
    """Sparse form of the mel filter bank: bin k feeds filters ``lo[k]`` and ``lo[k] + 1``."""

    bins: int  # bins up to the last one any filter uses
    lo: torch.Tensor
    w_lo: torch.Tensor
    w_hi: torch.Tensor
    gram_inv: torch.Tensor  # (mels, mels)
    thomas: tuple[np.ndarray, np.ndarray, np.ndarray]  # tridiagonal factors (CPU solve)


@functools.lru_cache(maxsize=8)
def _mel_basis(params: SpectrogramParams, device: str) -> _MelBasis:
    fb = mel_filterbank(params).astype(np.float64)  # (n_freqs, mels)
    used = np.flatnonzero(fb.sum(axis=1) > 0)
    bins = int(used.max()) + 1 if used.size else 1
    fb = fb[:bins]
    mels = fb.shape[1]
    lo = np.zeros(bins, dtype=np.int64)
    w_lo = np.zeros(bins)
    w_hi = np.zeros(bins)
    for k in range(bins):
        nz = np.flatnonzero(fb[k])
        if nz.size > 2 or (nz.size == 2 and nz[1] != nz[0] + 1):
            raise InvalidRequest("mel filters overlap more than their neighbours")
        if nz.size:
            lo[k] = min(int(nz[0]), mels - 2) if mels > 1 else 0
            w_lo[k] = fb[k, lo[k]]
            w_hi[k] = fb[k, lo[k] + 1] if mels > 1 else 0.0
    gram = fb.T @ fb
    gram += np.eye(mels) * 1e-9 * np.trace(gram) / mels
    dev = torch.device(device)

    def t(a: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.from_numpy(a).to(dtype=dtype, device=dev)

    return _MelBasis(
        bins=bins,
        lo=t(lo, torch.int64),
        w_lo=t(w_lo),
        w_hi=t(w_hi),
        gram_inv=t(np.linalg.inv(gram)),
        thomas=kernels.tridiagonal_factors(gram),
    )


def _mel_of(basis: _MelBasis, linear: torch.Tensor, mels: int) -> torch.Tensor:
    """Mel (..., frames, mels) of linear magnitudes (..., frames, >= basis.bins)."""
    a = linear[..., : basis.bins]
    out = torch.zeros(*a.shape[:-1], mels, device=a.device, dtype=a.dtype)
    out.index_add_(a.dim() - 1, basis.lo, a * basis.w_lo)
    if mels > 1:
        out.index_add_(a.dim() - 1, basis.lo + 1, a * basis.w_hi)
    return out


def _linear_of(basis: _MelBasis, y: torch.Tensor, bins: int) -> torch.Tensor:
    """``F y`` (..., frames, bins) for mel-domain coefficients y (..., frames, mels)."""
    lin = y[..., basis.lo] * basis.w_lo
    if y.shape[-1] > 1:
        lin = lin + y[..., basis.lo + 1] * basis.w_hi
    out = torch.zeros(*y.shape[:-1], bins, device=y.device, dtype=y.dtype)
    out[..., : basis.bins] = lin
    return out


def inverse_mel(
    mel: torch.Tensor,
    params: SpectrogramParams,
    bins: int | None = None,
    compiled: bool | None = None,
) -> torch.Tensor:
    """Linear magnitudes (..., frames, bins) of mel (..., frames, mels): min-norm, clipped."""
    basis = _mel_basis(params, str(mel.device))
    n = bins or params.n_fft // 2 + 1
    if mel.device.type == "cpu" if compiled is None else compiled:
        y = np.array(mel.numpy(), dtype=np.float32)
        kernels.solve_tridiagonal(y, *basis.thomas)
        out = torch.zeros((*mel.shape[:-1], n))
        zero = np.zeros((*mel.shape[:-1], basis.bins), dtype=np.float32)
        lo, w_lo, w_hi = basis.lo.numpy(), basis.w_lo.numpy(), basis.w_hi.numpy()
        kernels.add_linear_clamped(zero, y, lo, w_lo, w_hi, out[..., : basis.bins].numpy())
        return out
    return _linear_of(basis, mel @ basis.gram_inv, n).clamp_min_(0)


def _project_mel(
    basis: _MelBasis, amp: torch.Tensor, target: torch.Tensor, bins: int, compiled: bool
) -> torch.Tensor:
    """Nearest magnitudes to ``amp`` whose mel equals ``target``, clipped at 0."""
    if compiled and bins == basis.bins:
        mel = np.empty(target.shape, dtype=np.float32)
        lo, w_lo, w_hi = basis.lo.numpy(), basis.w_lo.numpy(), basis.w_hi.numpy()
        kernels.mel_of(amp.numpy(), lo, w_lo, w_hi, mel)
        np.subtract(target.numpy(), mel, out=mel)
        kernels.solve_tridiagonal(mel, *basis.thomas)
        y = mel
        out = torch.empty_like(amp)
        kernels.add_linear_clamped(amp.numpy(), y, lo, w_lo, w_hi, out.numpy())
        return out
    residual = target - _mel_of(basis, amp, target.shape[-1])
    return (amp + _linear_of(basis, residual @ basis.gram_inv, bins)).clamp_min_(0)


#: Synthesis hops from half to twice the analysis hop keep the window overlap Griffin-Lim needs.
MIN_TIME_SCALE = 0.5
MAX_TIME_SCALE = 2.0


def _validate(mel: np.ndarray, params: SpectrogramParams) -> np.ndarray:
    m = np.asarray(mel, dtype=np.float32)
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3 or m.shape[1] != params.num_frequencies or m.shape[2] < 2:
        raise InvalidRequest(
            f"mel must be (channels, {params.num_frequencies}, frames >= 2), got {m.shape}"
        )
    if not np.all(np.isfinite(m)) or np.any(m < 0):
        raise InvalidRequest("mel magnitudes must be finite and non-negative")
    return m


def mel_to_audio(
    mel: np.ndarray,
    params: SpectrogramParams | None = None,
    *,
    method: str = "fast",
    circular: bool = False,
    device: str = "cpu",
    seed: int = 0,
    compiled: bool | None = None,
    time_scale: float = 1.0,
    retime_frames: bool = True,
) -> np.ndarray:
    """Audio float32 (channels, samples) for mel magnitudes (channels, mels, frames).

    Non-circular: ``(frames - 1) * hop`` samples. ``circular``: the frames are a loop and the
    result has ``round(frames * hop * time_scale)`` samples whose end wraps to its start
    without a click. ``time_scale`` (loops only) synthesises with a hop of
    ``hop * time_scale``: the loop is reconstructed that much longer, with every frame, and so
    every onset, at its scaled position (to the sample), and the window, hence the pitch,
    unchanged. The frames are first given the magnitudes a frame at the scaled hop would
    measure (:func:`engine.dsp.retime.retime`: hits moved, not smeared into a pre-echo);
    ``retime_frames=False`` synthesises them as measured (the smeared result, for
    comparison). The result is deterministic for a given ``seed`` (and device). ``compiled``:
    use the numba kernels (the default on the CPU) or plain torch operations (False; what
    ``quality`` runs on other devices). On any device but the CPU, ``fast`` is ``gpu``, which
    is torch operations only and ignores ``compiled``.
    """
    p = params or SpectrogramParams()
    m = _validate(mel, p)
    if method not in METHODS:
        raise InvalidRequest(f"unknown phase method {method!r} (use {', '.join(METHODS)})")
    if not (math.isfinite(time_scale) and MIN_TIME_SCALE <= time_scale <= MAX_TIME_SCALE):
        raise InvalidRequest(f"time scale must be between {MIN_TIME_SCALE} and "
                             f"{MAX_TIME_SCALE}, not {time_scale!r}")
    if time_scale != 1.0 and not circular:
        raise InvalidRequest("a time scale needs a loop (circular=True)")
    dev = torch.device(device)
    start = time.perf_counter()
    with torch.inference_mode():
        mel_t = torch.from_numpy(m).to(dev)
        if time_scale != 1.0 and retime_frames:  # frames as the scaled hop sees them
            passes = SETTINGS[method].retime_iterations if method in SETTINGS else None
            mel_t = retime(mel_t, time_scale, p.win_length / p.hop_length,
                           iterations=passes or RETIME_ITERATIONS)
        target = mel_t.transpose(1, 2).contiguous()
        linear_len = (m.shape[2] - 1) * p.hop_length
        if method == "riffusion" and not circular and linear_len > p.n_fft // 2:
            audio = _riffusion(target, p, seed)
        elif method == "riffusion":  # loops, and clips too short for torch's reflect padding
            audio = _griffin_lim_full_rate(target, p, circular, seed, compiled, time_scale)
        elif method == "gpu" or (method == "fast" and dev.type != "cpu"):
            audio = _reconstruct_gpu(target, p, SETTINGS["gpu"], circular, seed, time_scale)
        else:
            audio = _reconstruct(target, p, SETTINGS[method], circular, seed, compiled,
                                 time_scale)
    out = np.ascontiguousarray(audio.cpu().numpy() / PCM_SCALE, dtype=np.float32)
    log.debug(
        "%s phase reconstruction of %d frames x %d channel(s)%s on %s: %.3f s",
        method,
        m.shape[2],
        m.shape[0],
        " (loop)" if circular else "",
        dev,
        time.perf_counter() - start,
    )
    return out


def _riffusion(target: torch.Tensor, p: SpectrogramParams, seed: int) -> torch.Tensor:
    """Riffusion's chain with torchaudio, exactly (random start from ``seed``)."""
    import torchaudio

    inverse = torchaudio.transforms.InverseMelScale(
        n_stft=p.n_fft // 2 + 1,
        n_mels=p.num_frequencies,
        sample_rate=p.sample_rate,
        f_min=p.min_frequency,
        f_max=p.max_frequency,
        norm=None,
        mel_scale="htk",
    ).to(target.device)
    griffin_lim = torchaudio.transforms.GriffinLim(
        n_fft=p.n_fft,
        n_iter=32,
        win_length=p.win_length,
        hop_length=p.hop_length,
        window_fn=torch.hann_window,
        power=1.0,
        momentum=0.99,
        rand_init=True,
    ).to(target.device)
    devices = [target.device] if target.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        linear = inverse(target.transpose(1, 2).contiguous())
        return griffin_lim(linear)


def _griffin_lim_full_rate(
    target: torch.Tensor, p: SpectrogramParams, circular: bool, seed: int,
    compiled: bool | None, time_scale: float = 1.0,
) -> torch.Tensor:
    """Riffusion's algorithm with this module's transform (loops, very short clips)."""
    frames = target.shape[1]
    stft = Stft(p.win_length, p.hop_length * time_scale, p.n_fft, frames, circular,
                target.device, compiled)
    amp = inverse_mel(target, p, stft.bins, compiled)
    gen = torch.Generator().manual_seed(seed)
    angles = torch.rand(amp.shape, generator=gen).to(target.device) * (2 * math.pi)
    spec = torch.polar(amp, angles)
    prev = torch.zeros_like(spec)
    alpha = 0.99 / 1.99
    for _ in range(32):
        rebuilt = stft.analyse(stft.synthesise(spec)).to(target.device)
        phase = rebuilt - alpha * prev
        spec = amp * phase / phase.abs().clamp_min(1e-16)
        prev = rebuilt
    return stft.synthesise(spec)


def _normalise_phase(spec: torch.Tensor, amp: torch.Tensor) -> None:
    """In place: ``spec = amp * spec / |spec|`` through rsqrt (no complex abs or division)."""
    z = torch.view_as_real(spec)
    scale = (z * z).sum(-1).add_(1e-30).rsqrt_().mul_(amp)
    z.mul_(scale.unsqueeze(-1))


def _magnitude(spec: torch.Tensor, bins: int, compiled: bool) -> torch.Tensor:
    """|spec[..., :bins]| as float32."""
    if compiled:
        out = torch.empty((*spec.shape[:-1], bins))
        kernels.magnitude(spec.numpy(), bins, out.numpy())
        return out
    return spec[..., :bins].abs()


def _padded(amp: torch.Tensor, bins: int) -> torch.Tensor:
    """amp (..., used) zero-extended to (..., bins)."""
    if amp.shape[-1] == bins:
        return amp
    out = torch.zeros((*amp.shape[:-1], bins), device=amp.device, dtype=amp.dtype)
    out[..., : amp.shape[-1]] = amp
    return out


def _reconstruct(
    target: torch.Tensor,
    p: SpectrogramParams,
    settings: MethodSettings,
    circular: bool,
    seed: int,
    compiled: bool | None,
    time_scale: float = 1.0,
) -> torch.Tensor:
    """PGHI start, fast Griffin-Lim at the reduced rate, synthesis at the full rate; every
    grid's hop scaled by ``time_scale``."""
    dev = target.device
    frames = target.shape[1]
    basis = _mel_basis(p, str(dev))
    int_hop, win, n_fft = reduced_grid(p)
    hop = int_hop * time_scale
    fused = dev.type == "cpu" if compiled is None else compiled
    full = Stft(p.win_length, p.hop_length * time_scale, p.n_fft, frames, circular, dev, fused)
    small = Stft(win, hop, n_fft, frames, circular, dev, fused)
    bins = small.bins
    amp_full = inverse_mel(target, p, full.bins, fused)
    scale = win / p.win_length  # window sums scale the magnitudes
    amp = amp_full[..., :bins] * scale
    mel_target = target * scale
    channels = target.shape[0]
    phase = np.stack(
        [
            pghi(
                amp[c, :, : basis.bins].cpu().numpy(),
                win=win,
                hop=hop,
                n_fft=n_fft,
                circular=circular,
                tolerance=settings.tolerance,
                seed=seed + c,
            )
            for c in range(channels)
        ]
    )
    full_phase = torch.from_numpy(
        np.random.default_rng(seed).uniform(-math.pi, math.pi, size=amp.shape).astype(np.float32)
    ).to(dev)
    full_phase[..., : basis.bins] = torch.from_numpy(phase).to(dev)
    if settings.low_iterations:
        _refine_low_band(amp, full_phase, p, settings, circular, fused, time_scale)
    spec = torch.polar(amp, full_phase)
    prev = spec.clone()
    goal = amp[..., : basis.bins].contiguous()
    for i in range(settings.iterations):
        rebuilt = small.analyse(small.synthesise(spec))
        if i >= settings.iterations - settings.mel_projection:
            goal = _project_mel(
                basis, _magnitude(rebuilt, basis.bins, fused), mel_target, basis.bins, fused
            )
        if fused:
            kernels.project_with_momentum(
                rebuilt.numpy(), goal.numpy(), prev.numpy(), settings.momentum
            )
            spec = rebuilt
        else:
            _normalise_phase(rebuilt, _padded(goal, bins))
            spec = rebuilt + settings.momentum * (rebuilt - prev)
            prev = rebuilt
    # Final magnitudes: those nearest to the last consistent estimate whose mel is the target
    # (one more projection pair), with its phase; synthesised at the full rate.
    rebuilt = small.analyse(small.synthesise(spec))
    goal = _project_mel(
        basis, _magnitude(rebuilt, basis.bins, fused), mel_target, basis.bins, fused
    )
    # the bins above the band are zero: the inverse FFT pads them
    final = rebuilt[..., : basis.bins]
    if fused:
        kernels.set_magnitude(final.numpy(), goal.div_(scale).numpy())
    else:
        _normalise_phase(final, goal.div_(scale))
    return full.synthesise(final)


def _refine_low_band(
    amp: torch.Tensor,
    phase: torch.Tensor,
    p: SpectrogramParams,
    settings: MethodSettings,
    circular: bool,
    fused: bool,
    time_scale: float = 1.0,
    torch_fft: bool = False,
) -> None:
    """In place: Griffin-Lim on the bins below ``low_cut_hz`` alone, at a low sample rate.

    Why: kicks and bass converge slowest (PGHI's start is weakest there, and their narrow
    mel bins leave the least slack), yet they need only a few hundred hertz of band. At a
    sample rate of about 1.6 times that band (the same 10 ms frames and 2.5 Hz bins, an FFT
    fifteen times smaller) dozens of iterations cost about as much as one at 21 kHz. The
    Hann window's spectrum barely reaches across the cut, so the band converges on its own;
    the full-band iterations that follow smooth the seam.
    """
    _hop, win, n_fft = reduced_grid(p)
    lhop, lwin, ln_fft = reduced_grid(p, settings.low_cut_hz * 1.6)
    if ln_fft >= n_fft:
        return
    bin_hz = p.sample_rate / p.n_fft
    cut = min(int(settings.low_cut_hz / bin_hz), ln_fft // 2 + 1)
    low = Stft(lwin, lhop * time_scale, ln_fft, amp.shape[1], circular, amp.device, fused,
               torch_fft)
    lamp = amp[..., : low.bins] * (lwin / win)
    spec = torch.polar(lamp, phase[..., : low.bins].contiguous())
    prev = spec.clone()
    goal = lamp.contiguous()
    for _ in range(settings.low_iterations):
        rebuilt = low.analyse(low.synthesise(spec))
        if fused:
            kernels.project_with_momentum(
                rebuilt.numpy(), goal.numpy(), prev.numpy(), settings.low_momentum
            )
            spec = rebuilt
        else:
            _normalise_phase(rebuilt, goal)
            spec = rebuilt + settings.low_momentum * (rebuilt - prev)
            prev = rebuilt
    phase[..., :cut] = prev[..., :cut].angle()


def _smooth(n: int) -> bool:
    """Whether n has no prime factor above 7 (FFT-friendly)."""
    for f in (2, 3, 5, 7):
        while n % f == 0:
            n //= f
    return n == 1


def reduced_grid(p: SpectrogramParams, max_hz: float | None = None) -> tuple[int, int, int]:
    """(hop, window, FFT) at the lowest rate that keeps the frames, bins and band.

    The rate is ``hop * 1000 / step_ms``; with Riffusion's parameters 21 kHz: hop 210,
    window 2100, FFT 8400. Falls back to the full-rate grid when the ratios are not whole.
    """
    full = (p.hop_length, p.win_length, p.n_fft)
    exact = (
        p.hop_length * 1000 == p.step_size_ms * p.sample_rate
        and p.window_duration_ms % p.step_size_ms == 0
        and p.padded_duration_ms % p.step_size_ms == 0
    )
    if not exact:
        return full
    win_ratio = p.window_duration_ms // p.step_size_ms
    fft_ratio = p.padded_duration_ms // p.step_size_ms
    top = p.max_frequency if max_hz is None else max_hz
    need = math.ceil(2.0 * top * 1.02 * p.step_size_ms / 1000.0)
    for hop in range(max(1, need), p.hop_length):
        win, n_fft = hop * win_ratio, hop * fft_ratio
        if win % 2 == 0 and _smooth(n_fft):
            return hop, win, n_fft
    return full


def phase_gradient_start(
    amp: torch.Tensor,
    *,
    win: int,
    hop: float,
    n_fft: int,
    circular: bool,
    tolerance: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """Phase (channels, frames, bins) from magnitudes alone, in tensor operations only.

    Why not :func:`engine.dsp.pghi.pghi`: its heap integration is sequential (one cell at a
    time, on the CPU), which on a GPU costs more than all the iterations after it, plus the
    transfers. Here PGHI's two gradients are integrated along fixed paths instead: a phase
    vocoder with identity phase locking (Laroche and Dolson). In each frame every cell is
    locked to its nearest spectral peak through the frequency-direction gradient
    (``-lambda d log s / dn``, summed across the bins); each peak advances from the frame
    before, at its own bin, by the time-direction gradient (the bin's frequency plus the
    log magnitude's slope across bins). Cells whose peak rises by ``ONSET_RISE`` over the
    frame before (onsets), and the first frame, start afresh from the frequency-direction
    integral alone, which lines the bins up at the onset. The frame-to-frame chain is
    resolved by pointer jumping (``log2(frames)`` gathers), so nothing runs per frame.
    Without the locking (each bin carried along time on its own) neighbouring bins of one
    partial drift apart and the start is barely better than random. No heap picks the
    strongest path, so the start is rougher than PGHI's; the Griffin-Lim iterations that
    follow (cheap on a GPU) make up for part of it. A loop's seam is left to them. Cells
    ``tolerance`` below each channel's peak get a random phase from ``generator`` (which
    lives on ``amp``'s device).
    """
    frames = amp.shape[1]
    dev = amp.device
    lam = HANN_LAMBDA * win * win
    peak = amp.amax(dim=(1, 2), keepdim=True)
    logs = torch.log(torch.maximum(amp, peak * 1e-10).clamp_min(1e-30))
    # time-direction gradient less the bin's own frequency, radians per frame
    slope = torch.zeros_like(logs)
    slope[..., 1:-1] = (logs[..., 2:] - logs[..., :-2]) * (0.5 * hop * n_fft / lam)
    # frequency-direction gradient, integrated across the bins of each frame
    rise = torch.zeros_like(logs)
    rise[:, 1:] = logs[:, 1:] - logs[:, :-1]
    if circular:
        rise[:, 0] = logs[:, 0] - logs[:, -1]
        dlog_dm = (torch.roll(logs, -1, 1) - torch.roll(logs, 1, 1)) * 0.5
    else:
        dlog_dm = torch.zeros_like(logs)
        dlog_dm[:, 1:-1] = (logs[:, 2:] - logs[:, :-2]) * 0.5
    fgrad = dlog_dm * (-lam / (hop * n_fft))
    across = torch.zeros_like(logs)
    torch.cumsum((fgrad[..., 1:] + fgrad[..., :-1]) * 0.5, dim=2, out=across[..., 1:])
    # frame centres in whole samples, as the transform places them
    centres = torch.round(torch.arange(frames, device=dev, dtype=torch.float64) * hop)
    phase = _locked_vocoder_phase(amp, slope, across, rise > ONSET_RISE, centres, n_fft)
    noise = torch.rand(amp.shape, generator=generator, device=dev) * (2 * math.pi) - math.pi
    return torch.where(amp > peak * tolerance, phase, noise)


def _locked_vocoder_phase(
    amp: torch.Tensor,
    slope: torch.Tensor,
    across: torch.Tensor,
    onset: torch.Tensor,
    centres: torch.Tensor,
    n_fft: int,
) -> torch.Tensor:
    """The locked phase vocoder of :func:`phase_gradient_start`.

    Each cell's phase is a sum along a chain: its offset from its peak, plus the peak's
    advance, plus the phase of the same bin in the frame before (itself offset from that
    frame's peak), back to a root (an onset or the first frame). As pointers (cell -> the
    cell in the frame before whose phase it builds on) with values, doubling the pointers
    ``log2(frames)`` times sums every chain at once.
    """
    channels, frames, bins = amp.shape
    dev = amp.device
    k_idx = torch.arange(bins, device=dev)
    is_peak = torch.zeros_like(amp, dtype=torch.bool)
    is_peak[..., 1:-1] = (amp[..., 1:-1] >= amp[..., :-2]) & (amp[..., 1:-1] > amp[..., 2:])
    below = torch.where(is_peak, k_idx, -1).cummax(dim=2).values
    above = torch.where(is_peak, k_idx, bins).flip(2).cummin(dim=2).values.flip(2)
    near_lo = ((k_idx - below) <= (above - k_idx)) & (below >= 0) | (above >= bins)
    peak = torch.where(near_lo, below.clamp_min(0), above.clamp_max(bins - 1))  # (c, m, k)
    # offset of each cell from its peak across the bins
    lock = across - torch.gather(across, 2, peak)
    # the peak's advance from the frame before, at its own bin
    hop_samples = torch.zeros(frames, device=dev, dtype=torch.float64)
    hop_samples[1:] = centres[1:] - centres[:-1]
    bin_turns = torch.remainder(hop_samples[None, :, None] * peak.to(torch.float64),
                                float(n_fft)) / n_fft
    step = (slope + torch.roll(slope, 1, dims=1)) * 0.5
    advance = torch.gather(step, 2, peak) + (bin_turns * (2 * math.pi)).to(slope.dtype)
    # its phase in the frame before: that frame's cell at the same bin, itself locked there
    prev_peak = torch.gather(torch.roll(peak, 1, dims=1), 2, peak)
    prev_lock = torch.gather(torch.roll(lock, 1, dims=1), 2, peak)
    n = frames * bins
    frame_base = (torch.arange(frames, device=dev) - 1).clamp_min(0)[None, :, None] * bins
    ptr = frame_base + prev_peak
    value = lock + advance + prev_lock
    root = onset | (torch.arange(frames, device=dev) == 0)[None, :, None]
    root_peak = torch.gather(root, 2, peak)
    ptr = torch.where(root_peak, n, ptr).reshape(channels, n)
    value = torch.where(root_peak, across, value).reshape(channels, n)
    ptr = torch.cat([ptr, torch.full((channels, 1), n, device=dev, dtype=ptr.dtype)], 1)
    value = torch.cat([value, torch.zeros((channels, 1), device=dev, dtype=value.dtype)], 1)
    for _ in range(max(1, math.ceil(math.log2(frames))) + 1):
        value = value + torch.gather(value, 1, ptr)
        ptr = torch.gather(ptr, 1, ptr)
    return value[:, :n].reshape(channels, frames, bins)


def _reconstruct_gpu(
    target: torch.Tensor,
    p: SpectrogramParams,
    settings: MethodSettings,
    circular: bool,
    seed: int,
    time_scale: float = 1.0,
) -> torch.Tensor:
    """The ``gpu`` method: :func:`phase_gradient_start`, then momentum Griffin-Lim at the
    reduced rate (the last ``mel_projection`` iterations fitting the mel), then one synthesis at
    the full rate, all in tensor operations on ``target``'s device.

    Why: on a GPU the iterations are cheap (each is a few dozen kernel launches) and anything
    that leaves the device (PGHI on the CPU, a numpy kernel, a ``.item()``) stalls the queue;
    so the start is a vectorised one and there are more iterations. Nothing here reads a value
    back to the host: the whole reconstruction is queued, and the caller's one copy of the
    audio waits for it.
    """
    dev = target.device
    frames = target.shape[1]
    basis = _mel_basis(p, str(dev))
    int_hop, win, n_fft = reduced_grid(p)
    hop = int_hop * time_scale
    full = Stft(p.win_length, p.hop_length * time_scale, p.n_fft, frames, circular, dev,
                False, True)
    small = Stft(win, hop, n_fft, frames, circular, dev, False, True)
    band = basis.bins
    scale = win / p.win_length  # window sums scale the magnitudes
    amp = inverse_mel(target, p, band, False).mul_(scale)
    mel_target = target * scale
    gen = torch.Generator(device=dev).manual_seed(seed)
    phase = phase_gradient_start(amp, win=win, hop=hop, n_fft=n_fft, circular=circular,
                                 tolerance=settings.tolerance, generator=gen)
    if settings.low_iterations:
        _refine_low_band(amp, phase, p, settings, circular, False, time_scale, True)
    spec = torch.polar(amp, phase)
    prev = spec
    goal = amp
    momentum = settings.momentum
    for i in range(settings.iterations):
        rebuilt = small.analyse(small.synthesise(spec))[..., :band]
        if i >= settings.iterations - settings.mel_projection:
            goal = _project_mel(basis, rebuilt.abs(), mel_target, band, False)
        _normalise_phase(rebuilt, goal)
        spec = rebuilt + momentum * (rebuilt - prev)
        prev = rebuilt
    rebuilt = small.analyse(small.synthesise(spec))[..., :band]
    goal = _project_mel(basis, rebuilt.abs(), mel_target, band, False)
    _normalise_phase(rebuilt, goal.div_(scale))
    return full.synthesise(rebuilt)
