"""``riff render`` and ``riff interpolate`` end to end, as subprocesses, with the tiny model."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from engine.dsp.spectrogram import TAG_SAMPLE_RATE, load_image, save_image

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
    assert missing.returncode == 1 and re.search(r"available: (\w+, )*beat, ", missing.stderr)


def test_unwritable_outputs_fail_before_generating(tmp_path: Path) -> None:
    from engine.errors import InvalidRequest
    from protocols.cli.render import run_render

    with pytest.raises(InvalidRequest, match="unknown audio extension"):
        run_render(_parse_out("--prompt", "x", "--out", str(tmp_path / "a.xyz")))
    with pytest.raises(InvalidRequest, match="does not exist"):
        run_render(_parse_out("--prompt", "x", "--image", str(tmp_path / "no" / "a.png")))
    with pytest.raises(InvalidRequest, match="nothing to write"):
        run_render(_parse_out("--prompt", "x"))


def _parse_out(*argv: str) -> Any:
    from protocols.cli.main import build_parser

    return build_parser().parse_args(["render", "--model", "tiny", *argv])


def test_interpolate_with_a_local_model_folder(tmp_path: Path, seed_dir: Path) -> None:
    folder = tmp_path / "tiny-model"
    made = _riff("tiny-model", str(folder), home=tmp_path)
    assert made.returncode == 0, made.stderr
    assert (folder / "model_index.json").is_file()
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
    fade = round(0.02 * 44100)  # the default crossfade at each of the two joins
    assert sf.info(str(wav)).frames == 3 * (WIDTH - 1) * HOP - 2 * fade
    assert sorted(p.name for p in (tmp_path / "imgs").iterdir()) == [
        "clip_000.png",
        "clip_001.png",
        "clip_002.png",
    ]


def _parse(*argv: str) -> object:
    from protocols.cli.main import build_parser

    return build_parser().parse_args(["render", *argv, "--out", "x.wav"])


def test_flags_override_the_request_file(tmp_path: Path) -> None:
    from protocols.cli.render import build_request

    path = tmp_path / "r.json"
    path.write_text(
        json.dumps(
            {
                "alpha": 0.25,
                "seed_image_id": "og_beat",
                "start": {"prompt": "jazz", "seed": 1, "denoising": 0.5},
                "end": {"prompt": "rock", "seed": 2},
            }
        )
    )
    req = build_request(_parse("--request", str(path)))
    assert (req.start.prompt, req.end.prompt, req.alpha, req.start.denoising) == (
        "jazz",
        "rock",
        0.25,
        0.5,
    )
    req = build_request(
        _parse("--request", str(path), "--seed", "9", "--to-prompt", "organ", "--alpha", "1")
    )
    assert (req.start.seed, req.end.prompt, req.end.seed, req.alpha) == (9, "organ", 2, 1.0)
    req = build_request(
        _parse(
            "--prompt", "a", "--denoising", "0.3", "--seed-image", "none", "--scheduler", "dpm++"
        )
    )
    assert req.end == req.start and req.start.denoising == 0.3
    assert req.seed_image_id is None and req.scheduler == "dpmpp"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "not valid JSON"),
        ("[1]", "JSON object"),
        ('{"start": "x"}', "start must be a prompt input"),
        ('{"start": {"prompt": "x"}, "alpha": 1.5}', "alpha"),
        ('{"start": {"prompt": "x"}, "num_inference_steps": 0}', "num_inference_steps"),
        ('{"start": {"prompt": "x"}, "seed_image_id": "../x"}', "plain name"),
        ('{"start": {"prompt": "x"}, "bogus": 1}', "unknown field"),
    ],
)
def test_bad_request_files_are_rejected(tmp_path: Path, content: str, message: str) -> None:
    from engine.errors import InvalidRequest
    from protocols.cli.render import build_request

    path = tmp_path / "r.json"
    path.write_text(content)
    with pytest.raises(InvalidRequest, match=message):
        build_request(_parse("--request", str(path)))


def test_hub_id_loads_from_the_local_cache(tmp_path: Path) -> None:
    """A hub id found in the Hugging Face cache loads offline (the tiny model stands in)."""
    from engine.model.tiny import save_tiny_model

    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "hub" / "models--riffusion--riffusion-model-v1"
    save_tiny_model(repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    wav = tmp_path / "hub.wav"
    args = ["render", "--prompt", "jazz", "--steps", "2", "--seed-image", "breakbeat_100"]
    out = _riff(*args, "--no-progress", "--out", str(wav), home=tmp_path)
    assert out.returncode == 0, out.stderr
    assert sf.info(str(wav)).frames > 0


def test_join_audio_crossfades_equal_power() -> None:
    from protocols.cli.render import join_audio

    a = np.ones((1, 1000), dtype=np.float32)
    b = np.ones((1, 1000), dtype=np.float32)
    joined = join_audio([a, b], 100)
    assert joined.shape == (1, 1900)
    middle = joined[0, 900:1000]
    assert np.all(middle >= 0.99) and np.all(middle <= np.sqrt(2) + 1e-6)  # cos + sin
    assert join_audio([a, b], 0).shape == (1, 2000)
