"""A short-time Fourier transform made for iterative phase reconstruction.

Why not ``torch.stft``: Griffin-Lim runs the transform pair dozens of times per clip, so this
one does only the work that matters. The Hann window is shorter than the FFT (zero padding for
fine frequency bins), so analysis reads and synthesis writes only the window's samples. Frames
use the *centred* phase convention (phase origin at the frame's centre), which is what the
phase-gradient formulas of PGHI assume; ``torch.stft``'s convention (origin at the start of
the padded frame) differs by a factor ``(-1)**k`` since the centre is at ``n_fft / 2``.

Frames are centred at ``m * hop``, rounded to the sample: the hop may be fractional, which is
how a loop is reconstructed at another tempo without moving its onsets (the synthesis hop
scales time, the window keeps the pitch). Two boundary models:

- linear: a signal of ``(frames - 1) * hop`` samples, reflected at both ends as
  ``torch.stft(center=True, pad_mode="reflect")`` does, so the spectrum of a reconstruction
  measured the usual way matches the one it was fitted to, edge frames included;
- circular: a loop of ``frames * hop`` samples; frames wrap around its end, so the
  reconstruction repeats seamlessly.

Both are a map from each frame's window samples to signal samples; synthesis is the exact
least-squares inverse (overlap-add through that map divided by the summed squared window).

Arrays are torch tensors laid out (channels, frames, bins). On the CPU the FFTs go through
``scipy.fft`` (pocketfft in single precision, two workers), which is about twice as fast as
``torch.fft`` here; on other devices through ``torch.fft``.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from engine.dsp import kernels

#: FFT worker threads on the CPU.
FFT_WORKERS = max(1, min(4, os.cpu_count() or 1))


def rfft(x: torch.Tensor, n: int, use_torch: bool = False) -> torch.Tensor:
    """Real FFT along the last axis (scipy on the CPU unless ``use_torch``, torch elsewhere)."""
    if x.device.type == "cpu" and not use_torch:
        import scipy.fft

        return torch.from_numpy(scipy.fft.rfft(x.numpy(), n=n, workers=FFT_WORKERS))
    return torch.fft.rfft(x, n=n)


def irfft(x: torch.Tensor, n: int, use_torch: bool = False) -> torch.Tensor:
    """Inverse real FFT along the last axis (scipy on the CPU unless ``use_torch``, torch
    elsewhere)."""
    if x.device.type == "cpu" and not use_torch:
        import scipy.fft

        return torch.from_numpy(scipy.fft.irfft(x.numpy(), n=n, workers=FFT_WORKERS))
    return torch.fft.irfft(x, n=n)


@functools.lru_cache(maxsize=6)
def _layout(
    win: int, hop: float, frames: int, circular: bool, device: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(window, index, inverse envelope) of a frame layout; cached, shared, never written.

    Why cached: building them costs about as much as one Griffin-Lim iteration, and every
    reconstruction of a clip of the same size needs the same ones.
    """
    half = win // 2
    dev = torch.device(device)
    window = torch.hann_window(win, dtype=torch.float32, device=dev)
    starts = np.round(np.arange(frames)[:, None] * hop).astype(np.int64)
    offsets = np.arange(win)[None, :] - half
    if circular:
        length = round(frames * hop)
        index = (starts + offsets) % length
    else:
        if hop != int(hop):
            raise ValueError("a linear signal needs a whole-sample hop")
        length = (frames - 1) * int(hop)
        if length < 2:
            raise ValueError("a linear signal needs at least two samples")
        reflect = np.pad(np.arange(length), half, mode="reflect")
        index = reflect[starts + offsets + half]
    index_t = torch.from_numpy(index).to(dev)  # (frames, win) signal sample indices
    envelope = torch.zeros(length, device=dev)
    envelope.index_add_(0, index_t.reshape(-1), (window**2).repeat(frames))
    inv_envelope = 1.0 / envelope.clamp_min(1e-3 * float(envelope.max()))
    return window, index_t, inv_envelope


@dataclass
class Stft:
    """STFT pair for ``frames`` frames with a periodic Hann window of ``win`` samples.

    Not thread-safe (holds scratch buffers); create one per reconstruction.
    """

    win: int
    hop: float
    n_fft: int
    frames: int
    circular: bool
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    compiled: bool | None = None  # numba kernels; None: on the CPU only
    # torch.fft on the CPU too: what a GPU runs, op for op, with no numpy in between
    torch_fft: bool = False

    def __post_init__(self) -> None:
        if self.win % 2 or self.n_fft < self.win or self.frames < 1:
            raise ValueError("need an even window no longer than the FFT and one frame")
        dev = torch.device(self.device)
        if self.compiled is None:
            self.compiled = dev.type == "cpu"
        self.window, self.index, self.inv_envelope = _layout(
            self.win, self.hop, self.frames, self.circular, str(dev)
        )
        self.length = int(self.inv_envelope.shape[0])
        self.flat_index = self.index.reshape(-1)
        self.bins = self.n_fft // 2 + 1
        self._frame_buf: torch.Tensor | None = None

    def _buffer(self, channels: int) -> torch.Tensor:
        buf = self._frame_buf
        if buf is None or buf.shape[0] != channels:
            buf = torch.zeros(channels, self.frames, self.n_fft, device=self.device)
            self._frame_buf = buf
        return buf

    def analyse(self, signal: torch.Tensor) -> torch.Tensor:
        """Spectrum (channels, frames, bins) of a signal (channels, length)."""
        half = self.win // 2
        buf = self._buffer(signal.shape[0])
        if self.compiled:
            kernels.frames_from_signal(
                signal.numpy(), self.index.numpy(), self.window.numpy(), buf.numpy()
            )
        else:
            seg = signal[:, self.index] * self.window
            buf[:, :, :half] = seg[:, :, half:]
            buf[:, :, self.n_fft - half :] = seg[:, :, :half]
        return rfft(buf, self.n_fft, self.torch_fft)

    def synthesise(self, spec: torch.Tensor) -> torch.Tensor:
        """Least-squares signal (channels, length) of a spectrum (channels, frames, <= bins).

        Bins past the spectrum's last column count as zero (the inverse FFT pads them).
        """
        half = self.win // 2
        frames = irfft(spec, self.n_fft, self.torch_fft)
        out = torch.empty(spec.shape[0], self.length, device=spec.device)
        if self.compiled:
            kernels.overlap_add(
                frames.numpy(),
                self.index.numpy(),
                self.window.numpy(),
                self.inv_envelope.numpy(),
                out.numpy(),
            )
            return out
        seg = torch.cat([frames[:, :, self.n_fft - half :], frames[:, :, :half]], dim=2)
        seg *= self.window
        out.zero_()
        out.index_add_(1, self.flat_index, seg.reshape(spec.shape[0], -1))
        out *= self.inv_envelope
        return out
