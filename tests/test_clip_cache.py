"""The clip cache: by request and spec, least recently used out, bounded in clips and bytes."""

from __future__ import annotations

import numpy as np
import pytest

from engine.errors import InvalidRequest
from engine.live.cache import ClipCache
from engine.live.jobs import Clip, ClipSpec
from engine.model.request import InferenceRequest


def clip(job_id: int, alpha: float, tempo: float = 120.0) -> Clip:
    request = InferenceRequest.from_dict({"alpha": alpha, "start": {"prompt": "a", "seed": 1},
                                          "end": {"prompt": "b", "seed": 2}})
    n = round(4 * 60 / tempo * 8000)
    spec = ClipSpec(tempo=tempo, bars=1, beats_per_bar=4, sample_rate=8000, num_samples=n)
    return Clip(job_id, np.zeros((n, 2), np.float32), spec, request, 0.0)


def test_hits_need_the_same_request_and_spec_and_the_oldest_goes() -> None:
    cache = ClipCache(size=2)
    a, b, c = clip(1, 0.1), clip(2, 0.2), clip(3, 0.3)
    cache.put(a)
    cache.put(b)
    assert cache.get(a.request, a.spec) is a  # a is now the most recent
    assert cache.get(a.request, clip(9, 0.1, tempo=90.0).spec) is None  # another tempo
    cache.put(c)
    assert cache.get(b.request, b.spec) is None and len(cache) == 2
    assert cache.get(c.request, c.spec) is c and cache.hits == 2


def test_bytes_are_bounded_and_sizes_checked() -> None:
    one = clip(1, 0.1).audio.nbytes
    cache = ClipCache(size=10, max_bytes=2 * one)
    for i in range(5):
        cache.put(clip(i, i / 10))
    assert len(cache) == 2 and cache.bytes == 2 * one
    cache.clear()
    assert len(cache) == 0 and cache.bytes == 0
    ClipCache(size=0).put(clip(1, 0.1))  # keeps nothing, fine
    with pytest.raises(InvalidRequest):
        ClipCache(size=-1)
