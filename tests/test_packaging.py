"""The package works without a checkout: a wheel carries seed images, presets and MIDI maps.

Builds the sdist and the wheel from this tree (``python -m build``, the sdist first, so a file
missing from ``MANIFEST.in`` is missing from the wheel too), installs the wheel into a folder
of its own and runs ``riff`` from another directory, where no source tree is in reach.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    r = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out),
                        str(ROOT)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (found,) = out.glob("*.whl")
    return found


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("site")
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                        "--no-index", "--target", str(target), str(wheel)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return target


def test_the_wheel_holds_the_shipped_folders(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder in ("seed_images", "presets"):
        shipped = [p.relative_to(ROOT).as_posix() for p in (ROOT / folder).rglob("*")
                   if p.is_file()]
        assert shipped, folder
        missing = [p for p in shipped if f"engine/_data/{p}" not in names]
        assert not missing, missing
    assert "protocols/cli/__main__.py" in names
    assert "engine/py.typed" in names
    assert not any(n.startswith("tests/") for n in names)


def _riff(installed: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(installed)}
    return subprocess.run([sys.executable, str(installed / "bin" / "riff"), *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=600)


def test_the_installed_package_runs_from_another_directory(installed: Path,
                                                           tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(installed)}
    where = subprocess.run([sys.executable, "-c", "import engine, protocols; "
                            "print(engine.__file__); print(protocols.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert where.returncode == 0, where.stderr
    assert all(line.startswith(str(installed)) for line in where.stdout.split()), where.stdout

    presets = _riff(installed, tmp_path, "preset", "list")
    assert presets.returncode == 0, presets.stderr
    for name in ("lofi", "techno", "generic8"):
        assert name in presets.stdout, presets.stdout

    out = tmp_path / "x.wav"
    render = _riff(installed, tmp_path, "-q", "render", "--model", "tiny", "--seed-image",
                   "og_beat", "--steps", "2", "--out", str(out))
    assert render.returncode == 0, render.stderr
    assert out.stat().st_size > 44100 * 4  # about 5 s of audio
