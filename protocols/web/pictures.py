"""Spectrogram pictures of the clips on the monitor page's timeline.

A clip's picture is drawn from its audio the way Riffusion draws a spectrogram
(:func:`engine.dsp.spectrogram.audio_to_mel` and :func:`~engine.dsp.spectrogram.mel_to_image`,
mono, at the clip's own sample rate), shrunk to :data:`SIZE` and kept as PNG for the last
:data:`KEEP` clips. Only clips whose audio is at hand have one: the clip playing and the ready
ones in the queue (``Scheduler.clip``); others show as text on the page.

Thread: :meth:`Pictures.png` runs on the asyncio loop and draws in a worker thread
(``asyncio.to_thread``: an STFT of a few seconds of audio, tens of milliseconds), so the loop
never waits for it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from engine.dsp.spectrogram import SpectrogramParams, audio_to_mel, mel_to_image

#: Width and height of a picture in pixels.
SIZE = (256, 128)
#: Pictures kept (PNG bytes, a few kB each).
KEEP = 16


def draw(audio: np.ndarray, sample_rate: int) -> bytes:
    """The PNG of ``audio`` (samples, channels) as a Riffusion spectrogram, :data:`SIZE`.
    Thread: a worker thread (CPU work, no engine state touched)."""
    params = dataclasses.replace(SpectrogramParams(), sample_rate=sample_rate,
                                 max_frequency=min(10000, sample_rate // 2))
    mel = audio_to_mel(np.ascontiguousarray(audio.T), params, circular=True)
    image = mel_to_image(mel, params).convert("L").resize(SIZE, Image.Resampling.BILINEAR)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


class Pictures:
    """Pictures by job id; ``clip_of`` finds a clip (``Scheduler.clip``) or None."""

    def __init__(self, clip_of: Callable[[int], Any], prefix: str) -> None:
        self.clip_of = clip_of
        self.prefix = prefix
        self._done: OrderedDict[int, bytes] = OrderedDict()

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
        clip = self.clip_of(job_id)
        if clip is None:
            return None
        png = await asyncio.to_thread(draw, clip.audio, clip.spec.sample_rate)
        self._done[job_id] = png
        while len(self._done) > KEEP:
            self._done.popitem(last=False)
        return png
