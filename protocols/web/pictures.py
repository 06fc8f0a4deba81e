"""Spectrogram pictures of the clips on the monitor page's timeline.

A clip's picture is a spectrogram drawn as Riffusion draws one (mel-spaced rows up to
10 kHz, magnitudes to the power 0.25, low frequencies at the bottom), made small
(:data:`SIZE`) with numpy alone: the daemon never imports torch for it (that would add
hundreds of MB and seconds of import next to the audio thread). Loud is bright, for the dark
page. PNGs are kept for the last :data:`KEEP` clips. Only clips whose audio is at hand have
one: the clip playing and the ready ones in the queue (``Scheduler.clip``); others show as
text on the page.

Thread: :meth:`Pictures.png` runs on the asyncio loop and draws in a worker thread
(``asyncio.to_thread``: :data:`SIZE`'s width of FFTs, a few milliseconds), so the loop never
waits for it.
"""

from __future__ import annotations

import asyncio
import io
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

#: Width and height of a picture in pixels.
SIZE = (256, 128)
#: Pictures kept (PNG bytes, a few kB each).
KEEP = 16


#: The highest frequency drawn (Riffusion's images stop there too).
MAX_HZ = 10000.0
#: FFT length of each column.
N_FFT = 2048


def _mel(hz: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + hz / 700.0)


def _hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def draw(audio: np.ndarray, sample_rate: int) -> bytes:
    """The PNG of ``audio`` (samples, channels) as a spectrogram of :data:`SIZE`: one
    ``N_FFT`` window per column, evenly spread over the clip; each row the loudest bin in its
    mel band (or the nearest bin, where bands are narrower than a bin).
    Thread: a worker thread (CPU work, no engine state touched)."""
    width, height = SIZE
    mono = np.asarray(audio, dtype=np.float32)
    if mono.ndim == 2:
        mono = mono.mean(axis=1)
    if len(mono) < N_FFT:
        mono = np.pad(mono, (0, N_FFT - len(mono)))
    starts = np.linspace(0, len(mono) - N_FFT, width).astype(np.int64)
    frames = mono[starts[:, None] + np.arange(N_FFT)] * np.hanning(N_FFT).astype(np.float32)
    magnitude = np.abs(np.fft.rfft(frames, axis=1))  # (width, N_FFT // 2 + 1)
    bin_hz = sample_rate / N_FFT
    top = min(MAX_HZ, sample_rate / 2)
    edges = _hz(np.linspace(0.0, float(_mel(np.array(top))), height + 1))
    first = np.minimum((edges[:-1] / bin_hz).astype(np.int64), magnitude.shape[1] - 1)
    last_bin = min(int(np.ceil(top / bin_hz)) + 1, magnitude.shape[1])
    rows = np.maximum.reduceat(magnitude[:, :last_bin], first, axis=1)  # (width, height)
    level = np.power(rows, 0.25)
    peak = float(level.max())
    pixels = (level / peak * 255.0) if peak > 0 else np.zeros_like(level)
    image = Image.fromarray(np.ascontiguousarray(pixels.T[::-1]).astype(np.uint8), mode="L")
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


class Pictures:
    """Pictures by job id; ``clip_of`` finds a clip (``Scheduler.clip``) or None."""

    def __init__(self, clip_of: Callable[[int], Any], prefix: str) -> None:
        self.clip_of = clip_of
        self.prefix = prefix
        self._done: OrderedDict[int, bytes] = OrderedDict()
        self._drawing: dict[int, asyncio.Future[bytes]] = {}

    def url(self, job_id: int) -> str | None:
        """Where the page finds the picture of ``job_id``; None while it has no audio."""
        if job_id in self._done or self.clip_of(job_id) is not None:
            return f"{self.prefix}/{job_id}.png"
        return None

    async def png(self, job_id: int) -> bytes | None:
        """The picture of ``job_id`` (drawn on first use), or None when its audio is gone."""
        done = self._done.get(job_id)
        if done is not None:
            self._done.move_to_end(job_id)
            return done
        drawing = self._drawing.get(job_id)
        if drawing is None:  # one drawing per clip, however many pages ask at once
            clip = self.clip_of(job_id)
            if clip is None:
                return None
            drawing = asyncio.ensure_future(asyncio.to_thread(draw, clip.audio,
                                                              clip.spec.sample_rate))
            self._drawing[job_id] = drawing
            drawing.add_done_callback(lambda _: self._drawing.pop(job_id, None))
        png = await asyncio.shield(drawing)
        self._done[job_id] = png
        while len(self._done) > KEEP:
            self._done.popitem(last=False)
        return png
