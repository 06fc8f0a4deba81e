"""Where the shipped seed images, presets and MIDI maps are, in a checkout or an installed wheel.

The folders live at the top of the source tree (``seed_images/``, ``presets/``), where the
project's layout puts them; building a wheel copies them into ``engine/_data/`` (see
``setup.py``), so a non-editable install carries them too. This module finds whichever exists,
the packaged copy first.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_NAMES = ("seed_images", "presets")


def shipped_folder(name: str) -> Path:
    """The shipped folder ``name`` (``"seed_images"`` or ``"presets"``).

    Returns the path even when it is missing (a broken install), so callers report the folder
    they looked in; the packaged copy wins over the source tree's. Thread: any.
    """
    if name not in _NAMES:
        raise ValueError(f"unknown resource folder {name!r}; expected one of {_NAMES}")
    packaged = _PACKAGE / "_data" / name
    if packaged.is_dir():
        return packaged
    return _PACKAGE.parent / name
