"""``riff render`` and ``riff interpolate`` end to end, as subprocesses, with the tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from engine.spectrogram import TAG_SAMPLE_RATE, load_image, save_image

ROOT = Path(__file__).resolve().parent.parent
HOP = 441
WIDTH = 64


def _riff(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_HOME=str(home / "hf"),  # an empty cache: the hub model is never there
        OMP_NUM_THREADS="1",
    )
    return subprocess.run(
        [sys.executable, "-m", "protocols.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def seed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("seeds")
    grey = np.tile(np.linspace(0, 255, 512, dtype=np.float32)[:, None], (1, WIDTH))
    rgb = np.repeat(grey.astype(np.uint8)[:, :, None], 3, axis=2)
    save_image(Image.fromarray(rgb), folder / "beat.png")
    return folder


def test_hub_model_unavailable_prints_actionable_error(tmp_path: Path) -> None:
    out = _riff("render", "--prompt", "jazz", "--out", str(tmp_path / "x.wav"), home=tmp_path)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "riffusion/riffusion-model-v1" in lines[0]
    assert "hf download" in lines[0] and "--model PATH" in lines[0]
    assert not (tmp_path / "x.wav").exists()


def test_render_request_file_writes_wav_and_png(tmp_path: Path, seed_dir: Path) -> None:
    request = {
        "alpha": 0.25,
        "num_inference_steps": 4,
        "seed_image_id": "beat",
        "mask_image_id": None,
        "start": {"prompt": "jazzy rapping", "seed": 42, "denoising": 0.75, "guidance": 7.0},
        "end": {"prompt": "jazzy rapping", "seed": 43, "denoising": 0.75, "guidance": 7.0},
    }
    (tmp_path / "r.json").write_text(json.dumps(request))
    wav, png = tmp_path / "out.wav", tmp_path / "out.png"
    args = ["render", "--model", "tiny", "--request", str(tmp_path / "r.json")]
    args += ["--seed-images", str(seed_dir), "--image", str(png), "--out", str(wav)]
    out = _riff(*args, home=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "noise, not music" in out.stderr
    image = load_image(png)
    assert image.size == (WIDTH, 512) and image.getexif()[TAG_SAMPLE_RATE] == 44100
    info = sf.info(str(wav))
    assert info.samplerate == 44100 and info.frames == (WIDTH - 1) * HOP

    bad = _riff(*args[:-2], "--out", str(tmp_path / "y.wav"), "--alpha", "1.5", home=tmp_path)
    assert bad.returncode == 1 and "alpha" in bad.stderr and "Traceback" not in bad.stderr
    missing = _riff(*args[:7], "--seed-image", "nope", "--image", str(png), home=tmp_path)
    assert missing.returncode == 1 and "available: beat" in missing.stderr


def test_interpolate_with_a_local_model_folder(tmp_path: Path, seed_dir: Path) -> None:
    from engine.tiny_model import save_tiny_model

    folder = save_tiny_model(tmp_path / "tiny-model")
    wav = tmp_path / "walk.wav"
    out = _riff(
        "interpolate",
        "--model", str(folder),
        "--prompt", "jazz", "--to-prompt", "rock", "--seed", "1", "--to-seed", "2",
        "--seed-images", str(seed_dir), "--seed-image", "beat",
        "--steps", "3", "--count", "3", "--batch", "2", "--no-progress",
        "--out", str(wav), "--image-dir", str(tmp_path / "imgs"),
        home=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert sf.info(str(wav)).frames == 3 * (WIDTH - 1) * HOP
    assert sorted(p.name for p in (tmp_path / "imgs").iterdir()) == [
        "clip_000.png",
        "clip_001.png",
        "clip_002.png",
    ]
