"""Seed and mask images, looked up by plain name in one or more folders.

Requests name seed images and masks by id (``og_beat``, ``mask_beat_lines_80``), as
Riffusion's do. Ids are plain names, never paths: the library only ever opens
``<folder>/<id>.png`` (or ``.jpg``) inside its own folders. User folders are searched first,
then the engine's built-in ``seed_images/`` folder, so Riffusion's own seed folder can be used
by its ids with ``--seed-images DIR``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from engine.dsp.spectrogram import load_image
from engine.errors import UnknownId
from engine.model.request import check_plain_id
from engine.resources import shipped_folder

logger = logging.getLogger(__name__)

#: File suffixes tried for an id, in order.
SUFFIXES = (".png", ".jpg", ".jpeg")


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

    def ids(self) -> list[str]:
        """Every id available, sorted, without duplicates (earlier folders win)."""
        names: set[str] = set()
        for folder in self.folders:
            if folder.is_dir():
                names.update(p.stem for p in folder.iterdir() if p.suffix.lower() in SUFFIXES)
        return sorted(names)
