"""Build hook: ship the top-level ``seed_images/`` and ``presets/`` folders inside the wheel.

The source tree keeps them at the root (the project's layout); a wheel has only packages, so
``build_py`` copies them to ``engine/_data/``, where :mod:`engine.resources` finds them. All
other metadata is in ``pyproject.toml``.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

DATA_FOLDERS = ("seed_images", "presets")


class BuildPyWithData(build_py):
    """``build_py`` that also copies the shipped data folders into ``engine/_data``."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:  # an editable install reads the folders in place
            return
        root = Path(__file__).resolve().parent
        for name in DATA_FOLDERS:
            target = Path(self.build_lib) / "engine" / "_data" / name
            shutil.copytree(root / name, target, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildPyWithData})
