"""The seed images and masks Riffusion's web app offers resolve out of the box."""

from __future__ import annotations

import numpy as np
import pytest

from engine.dsp.spectrogram import SpectrogramParams, image_to_mel, read_loop_meta
from engine.errors import UnknownId
from engine.model.seed_images import SeedImageLibrary

#: What the riffusion web app lists in its settings (seed images, then masks).
WEB_APP_SEEDS = ("og_beat", "agile", "marim", "motorway", "vibes")
WEB_APP_MASKS = ("mask_beat_lines_80", "mask_gradient_dark", "mask_gradient_top_70",
                 "mask_gradient_top_fifth_75", "mask_top_third_75", "mask_top_third_95")


@pytest.mark.parametrize("seed_id", WEB_APP_SEEDS)
def test_each_web_app_seed_is_a_two_bar_loop_of_512_px(seed_id: str) -> None:
    image = SeedImageLibrary().load(seed_id)
    assert image.size == (512, 512)
    meta = read_loop_meta(image)
    assert meta is not None and (meta.bars, meta.beats_per_bar) == (2, 4)
    assert meta.bpm == pytest.approx(93.75, abs=0.01)
    mel = image_to_mel(image, SpectrogramParams())
    assert mel.max() > 0 and np.count_nonzero(mel.max(axis=-1)) > 100  # real content


def test_the_web_app_seeds_differ_from_each_other() -> None:
    lib = SeedImageLibrary()
    pixels = [np.asarray(lib.load(i).convert("L"), np.float32) for i in WEB_APP_SEEDS]
    for i in range(len(pixels)):
        for j in range(i + 1, len(pixels)):
            assert np.abs(pixels[i] - pixels[j]).mean() > 5, (WEB_APP_SEEDS[i], WEB_APP_SEEDS[j])


@pytest.mark.parametrize("mask_id", WEB_APP_MASKS)
def test_each_web_app_mask_resolves(mask_id: str) -> None:
    mask = SeedImageLibrary().load(mask_id)
    assert mask.size == (512, 512)


def test_an_unknown_id_is_still_refused_by_name() -> None:
    with pytest.raises(UnknownId, match="nosuchseed"):
        SeedImageLibrary().resolve("nosuchseed")
