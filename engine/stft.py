"""A short-time Fourier transform made for iterative phase reconstruction.

Why not ``torch.stft``: Griffin-Lim runs the transform pair dozens of times per clip, so this
one does only the work that matters. The Hann window is shorter than the FFT (zero padding for
fine frequency bins), so analysis reads and synthesis writes only the window's samples. Frames
use the *centred* phase convention (phase origin at the frame's centre), which is what the
phase-gradient formulas of PGHI assume; ``torch.stft``'s convention (origin at the start of
the padded frame) differs by a factor ``(-1)**k`` since the centre is at ``n_fft / 2``.

Frames are centred at ``m * hop``. Two boundary models:

- linear: a signal of ``(frames - 1) * hop`` samples, zero outside (the analysis sees the
  zeros; synthesis keeps only the signal's own samples);
- circular: a loop of ``frames * hop`` samples; frames wrap around its end, so the
  reconstruction repeats seamlessly.

Arrays are torch tensors laid out (channels, frames, bins). On the CPU the FFTs go through
``scipy.fft`` (pocketfft in single precision, two workers), which is about twice as fast as
``torch.fft`` here; on other devices through ``torch.fft``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

#: FFT worker threads on the CPU.
FFT_WORKERS = max(1, min(4, os.cpu_count() or 1))


def rfft(x: torch.Tensor, n: int) -> torch.Tensor:
    """Real FFT along the last axis (scipy on the CPU, torch elsewhere)."""
    if x.device.type == "cpu":
        import scipy.fft

        return torch.from_numpy(scipy.fft.rfft(x.numpy(), n=n, workers=FFT_WORKERS))
    return torch.fft.rfft(x, n=n)


def irfft(x: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse real FFT along the last axis (scipy on the CPU, torch elsewhere)."""
    if x.device.type == "cpu":
        import scipy.fft

        return torch.from_numpy(scipy.fft.irfft(x.numpy(), n=n, workers=FFT_WORKERS))
    return torch.fft.irfft(x, n=n)


@dataclass
class Stft:
    """STFT pair for ``frames`` frames with a periodic Hann window of ``win`` samples.

    Not thread-safe (holds scratch buffers); create one per reconstruction.
    """

    win: int
    hop: int
    n_fft: int
    frames: int
    circular: bool
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __post_init__(self) -> None:
        if self.win % 2 or self.n_fft < self.win or self.frames < 1:
            raise ValueError("need an even window no longer than the FFT and one frame")
        half = self.win // 2
        dev = self.device
        self.window = torch.hann_window(self.win, dtype=torch.float32, device=dev)
        starts = torch.arange(self.frames, device=dev) * self.hop
        offsets = torch.arange(self.win, device=dev)
        if self.circular:
            self.length = self.frames * self.hop
            self.buffer_length = self.length
            index = (starts[:, None] - half + offsets[None, :]) % self.length
        else:
            self.length = (self.frames - 1) * self.hop
            self.buffer_length = self.length + self.win
            index = starts[:, None] + offsets[None, :]
        self.index = index  # (frames, win) buffer positions of each frame's samples
        self.flat_index = index.reshape(-1)
        envelope = torch.zeros(self.buffer_length, device=dev)
        envelope.index_add_(0, self.flat_index, (self.window**2).repeat(self.frames))
        self.inv_envelope = 1.0 / envelope.clamp_min(1e-3 * float(envelope.max()))
        if not self.circular:  # only the signal's own samples survive synthesis
            self.inv_envelope[:half] = 0
            self.inv_envelope[half + self.length :] = 0
        self.bins = self.n_fft // 2 + 1
        self._frame_buf: torch.Tensor | None = None

    def _buffer(self, channels: int) -> torch.Tensor:
        buf = self._frame_buf
        if buf is None or buf.shape[0] != channels:
            buf = torch.zeros(channels, self.frames, self.n_fft, device=self.device)
            self._frame_buf = buf
        return buf

    def analyse_buffer(self, buffer: torch.Tensor) -> torch.Tensor:
        """Spectrum (channels, frames, bins) of a synthesis buffer (channels, buffer_length)."""
        half = self.win // 2
        seg = buffer[:, self.index] * self.window
        buf = self._buffer(buffer.shape[0])
        buf[:, :, :half] = seg[:, :, half:]
        buf[:, :, self.n_fft - half :] = seg[:, :, :half]
        return rfft(buf, self.n_fft)

    def synthesise_buffer(self, spec: torch.Tensor) -> torch.Tensor:
        """Least-squares signal (channels, buffer_length) of a spectrum, in buffer layout."""
        half = self.win // 2
        frames = irfft(spec, self.n_fft)
        seg = torch.cat([frames[:, :, self.n_fft - half :], frames[:, :, :half]], dim=2)
        seg *= self.window
        out = torch.zeros(spec.shape[0], self.buffer_length, device=spec.device)
        out.index_add_(1, self.flat_index, seg.reshape(spec.shape[0], -1))
        out *= self.inv_envelope
        return out

    def to_signal(self, buffer: torch.Tensor) -> torch.Tensor:
        """The signal (channels, length) held in a synthesis buffer."""
        if self.circular:
            return buffer
        half = self.win // 2
        return buffer[:, half : half + self.length]

    def analyse(self, signal: torch.Tensor) -> torch.Tensor:
        """Spectrum (channels, frames, bins) of a signal (channels, length)."""
        if self.circular:
            return self.analyse_buffer(signal)
        half = self.win // 2
        return self.analyse_buffer(torch.nn.functional.pad(signal, (half, half)))

    def synthesise(self, spec: torch.Tensor) -> torch.Tensor:
        """Least-squares signal (channels, length) of a spectrum (channels, frames, bins)."""
        return self.to_signal(self.synthesise_buffer(spec))
