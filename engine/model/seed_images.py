"""Seed and mask images, looked up by plain name in one or more folders.

Requests name seed images and masks by id (``og_beat``, ``mask_beat_lines_80``), as
Riffusion's do. Ids are plain names, never paths: the library only ever opens
``<folder>/<id>.png`` (or ``.jpg``) inside its own folders. User folders are searched first,
then the engine's built-in ``seed_images/`` folder, so Riffusion's own seed folder can be used
by its ids with ``--seed-images DIR``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from engine.dsp.spectrogram import LoopMeta, SpectrogramParams, load_image, read_loop_meta
from engine.errors import InvalidImage, InvalidRequest, UnknownId
from engine.model.request import check_plain_id
from engine.resources import shipped_folder

logger = logging.getLogger(__name__)

#: File suffixes tried for an id, in order.
SUFFIXES = (".png", ".jpg", ".jpeg")

#: The widest clip image the live engine asks for, in pixels (40.96 s; 16 bars of 4/4 at
#: og_beat's 93.75 BPM). Wider images cost time and memory quadratically in the UNet's
#: attention; a clip that would need more is refused (state validation) rather than made
#: of repeated images.
MAX_CLIP_WIDTH = 4096

#: The seed image the live engine uses for a meter when the chosen one is in another meter.
METER_SEEDS = {3: "waltz_90", 4: "og_beat", 6: "compound_6_8"}


@dataclasses.dataclass(frozen=True)
class SeedLoop:
    """A seed image's musical length (its loop metadata) and its width in pixels."""

    meta: LoopMeta
    width: int

    def __post_init__(self) -> None:
        if not isinstance(self.meta, LoopMeta) or self.width < 8:
            raise InvalidImage(f"a seed loop needs loop metadata and 8 px or more, "
                               f"not {self.width} px")

    @property
    def bar_px(self) -> float:
        """Pixels per bar at the seed's own tempo."""
        return self.width / self.meta.bars

    def clip_width(self, bars: int) -> int:
        """The image width (a multiple of 8 px) that holds ``bars`` bars at the seed's tempo.

        Why: a clip of N bars is generated as N bars of music (the diffusion sees the seed
        image widened circularly to that width), not as the seed's length cut or repeated.
        Raises InvalidRequest beyond :data:`MAX_CLIP_WIDTH`.
        """
        width = max(8, round(bars * self.bar_px / 8) * 8)
        if width > MAX_CLIP_WIDTH:
            most = int(MAX_CLIP_WIDTH // self.bar_px)
            raise InvalidRequest(
                f"{bars} bars at the seed image's {self.meta.bpm:g} BPM need {width} px, over "
                f"the {MAX_CLIP_WIDTH} px maximum (at most {most} bars with this seed image)")
        return width


def widened_meta(meta: LoopMeta, seed_width: int, width: int) -> LoopMeta | None:
    """Loop metadata of an image ``width`` px wide made from a seed loop of ``seed_width`` px
    (widened or narrowed circularly, see :func:`widen`): whole bars of the seed's meter at
    the tempo that fills exactly ``width`` px. None when ``width`` holds no whole number of
    bars (within the 8 px rounding of :meth:`SeedLoop.clip_width`)."""
    if width == seed_width:
        return meta
    bar_px = seed_width / meta.bars
    bars = round(width / bar_px)
    if bars < 1 or abs(bars * bar_px - width) > 8:
        return None
    params = SpectrogramParams()
    seconds = width * params.hop_length / params.sample_rate  # the loop's length
    try:
        return LoopMeta(bars=bars, beats_per_bar=meta.beats_per_bar,
                        bpm=bars * meta.beats_per_bar * 60.0 / seconds)
    except InvalidRequest:
        return None


def widen(image: Image.Image, meta: LoopMeta | None, width: int) -> Image.Image:
    """``image`` (a seed loop, or a mask of the same width) at ``width`` px by repeating it
    circularly along time, so its tempo stays: whole bars are tiled (then resized by at most
    the 8 px rounding), any other width is a circular crop or repeat of the columns.

    Why not a resize: stretching the seed to the width changes its tempo, so the diffusion
    would see the same bars slower instead of more bars."""
    if image.width == width:
        return image
    out_meta = widened_meta(meta, image.width, width) if meta is not None else None
    exact = width
    if out_meta is not None and meta is not None:
        exact = max(1, round(out_meta.bars * image.width / meta.bars))
    tiled = Image.new(image.mode, (exact, image.height))
    for x in range(0, exact, image.width):
        tiled.paste(image, (x, 0))
    if exact != width:
        tiled = tiled.resize((width, image.height), resample=Image.Resampling.LANCZOS)
    return tiled


def builtin_folder() -> Path:
    """The engine's own ``seed_images/`` folder (shipped with the package)."""
    return shipped_folder("seed_images")


class SeedImageLibrary:
    """Resolves seed image and mask ids to files in an ordered list of folders.

    Safe to share between threads: it holds no mutable state after construction.
    """

    def __init__(self, folders: Sequence[Path | str] = (), *, builtin: bool = True) -> None:
        self.folders: tuple[Path, ...] = tuple(Path(f) for f in folders) + (
            (builtin_folder(),) if builtin else ()
        )

    def _candidates(self, image_id: str) -> list[Path]:
        return [folder / (image_id + s) for folder in self.folders for s in SUFFIXES]

    def resolve(self, image_id: str, what: str = "seed image") -> Path:
        """The file of ``image_id``; raises InvalidRequest for a non-plain id, else UnknownId.

        ``what`` names the id in the error ("seed image", "mask"): seed images and masks share
        the library, and the performer must read which of the two was wrong. Cheap (a few
        ``stat`` calls, no file read), so the control plane checks ids when a message arrives.
        """
        check_plain_id(image_id, f"{what} id")
        stem = Path(image_id).stem if Path(image_id).suffix.lower() in SUFFIXES else image_id
        for path in self._candidates(stem):
            if path.is_file():
                return path
        available = ", ".join(self.ids()) or "none"
        raise UnknownId(f"unknown {what} {image_id!r} (available: {available})")

    def load(self, image_id: str, what: str = "seed image") -> Image.Image:
        """Open ``image_id`` fully decoded, EXIF intact; raises InvalidImage if unreadable."""
        return load_image(self.resolve(image_id, what))

    def loop(self, image_id: str) -> SeedLoop:
        """The loop metadata and width of seed image ``image_id``, from its header only (no
        pixel decoding: cheap enough for the control plane, which plans each clip with it).
        Raises UnknownId / InvalidRequest as :meth:`resolve`, InvalidImage if unreadable."""
        path = self.resolve(image_id)
        try:
            with Image.open(path) as image:
                return SeedLoop(read_loop_meta(image), image.width)
        except (OSError, ValueError) as exc:
            if isinstance(exc, InvalidImage):
                raise
            raise InvalidImage(f"seed image {image_id!r} is unreadable: {exc}") from None

    def ids(self) -> list[str]:
        """Every id available, sorted, without duplicates (earlier folders win)."""
        names: set[str] = set()
        for folder in self.folders:
            if folder.is_dir():
                names.update(p.stem for p in folder.iterdir() if p.suffix.lower() in SUFFIXES)
        return sorted(names)
