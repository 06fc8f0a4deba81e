"""`riff rerender`: a hand-written control log replayed offline, twice, to identical audio."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from engine.errors import InvalidRequest
from engine.live.jobs import Clip, ClipSpec, GenerationJob
from engine.live.wire import parse_request
from engine.takes.control_log import ControlLogWriter, LogHeader, read_control_log
from engine.takes.rerender import RerenderSettings, rerender
from tests.http_support import shared_renderer, shared_seed_folder

ROOT = Path(__file__).resolve().parent.parent
RATE = 48000
SPEC = ClipSpec(tempo=120.0, bars=1, beats_per_bar=4, sample_rate=RATE, num_samples=96000)
XF = 480


def request(seed: int) -> dict:
    return {"alpha": 0.5, "num_inference_steps": 2, "width": 192, "seed_image_id": "og_beat",
            "start": {"prompt": "funk", "seed": seed}, "end": {"prompt": "jazz", "seed": seed + 1}}


def write_log(path: Path, *, end: bool = True) -> Path:
    w = ControlLogWriter(path, LogHeader(sample_rate=RATE, channels=2, audio="set.wav",
                                         info={"model": "tiny", "crossfade_samples": XF}))
    w.command("/riff/play", [], sample=0, bar=0.0, source="osc")
    w.generation(1, parse_request(request(10)), SPEC, sample=0, bar=0.0)
    w.generation(2, parse_request(request(20)), SPEC, sample=50000, bar=0.52)
    w.generation(3, parse_request(request(30)), SPEC, sample=60000, bar=0.63)
    w.clip_start(1, sample=0, bar=0.0)
    w.clip_start(2, sample=192000, bar=2.0)
    w.clip_start(2, sample=288000, bar=3.0)  # an explicit repeat
    w.clip_start(3, sample=384000, bar=4.0)  # scheduled ahead, then dropped by the stop
    w.command("/riff/stop", [], sample=336000, bar=3.5, source="osc")
    if end:
        w.close(sample=400000, bar=4.17)
    else:
        w.close()
    return path


class Recording:
    """generate() for rerender: the real renderer, remembering each clip and job."""

    def __init__(self) -> None:
        self.renderer = shared_renderer()
        self.jobs: list[GenerationJob] = []
        self.clips: list[Clip] = []

    def __call__(self, job: GenerationJob) -> Clip:
        clip = self.renderer.render_clip(job)
        self.jobs.append(job)
        self.clips.append(clip)
        return clip


def test_rerender_places_clips_on_the_logged_timeline(tmp_path: Path) -> None:
    log = read_control_log(write_log(tmp_path / "set.jsonl"))
    gen = Recording()
    done: list[tuple[int, int]] = []
    result = rerender(log, tmp_path / "a.wav", gen, RerenderSettings(steps=3),
                      progress=lambda d, t: done.append((d, t)))
    assert result.frames == 400000 and result.clips == 2
    assert [j.request.start.seed for j in gen.jobs] == [10, 20]  # job 3 was never heard
    assert all(j.request.num_inference_steps == 3 for j in gen.jobs)
    assert done == [(1, 2), (2, 2)]
    audio, rate = sf.read(tmp_path / "a.wav", dtype="float32", always_2d=True)
    assert rate == RATE and audio.shape == (400000, 2)
    one, two = gen.clips[0].audio, gen.clips[1].audio
    np.testing.assert_array_equal(audio[:96000], one)  # from silence at sample 0: no pre-roll
    np.testing.assert_array_equal(audio[96000:192000 - XF], one[:96000 - XF])  # looped
    # The crossfade to clip 2 ends on its start sample: clip 2 is whole from there.
    assert not np.array_equal(audio[192000 - XF:192000], one[96000 - XF:])
    np.testing.assert_array_equal(audio[192000:288000], two)
    np.testing.assert_array_equal(audio[288000:336000], two[:48000])  # repeat: no new fade
    assert not audio[336000 + XF:].any()  # stopped: silence


def test_same_log_same_audio_in_process_and_via_cli(tmp_path: Path) -> None:
    path = write_log(tmp_path / "set.jsonl")
    rerender(read_control_log(path), tmp_path / "a.wav", Recording())
    cmd = [sys.executable, "-m", "protocols.cli", "-q", "rerender", str(path), "--out",
           str(tmp_path / "b.wav"), "--device", "cpu", "--phase", "fast",
           "--seed-images", str(shared_seed_folder())]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "2 clips" in out.stdout and "clip 2/2" in out.stderr
    a, _ = sf.read(tmp_path / "a.wav", dtype="float32")
    b, _ = sf.read(tmp_path / "b.wav", dtype="float32")
    np.testing.assert_array_equal(a, b)
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "--force" in again.stderr  # no silent overwrite


def test_log_cut_short_plays_the_last_clip_out(tmp_path: Path) -> None:
    log = read_control_log(write_log(tmp_path / "cut.jsonl", end=False))
    assert not log.complete
    result = rerender(log, tmp_path / "cut.flac", Recording())
    assert result.frames == 288000 + 96000
    assert sf.info(tmp_path / "cut.flac").frames == 384000


def test_bad_logs_are_refused(tmp_path: Path) -> None:
    w = ControlLogWriter(tmp_path / "x.jsonl", LogHeader(sample_rate=RATE))
    w.clip_start(9, sample=0, bar=0.0)
    w.close(sample=10, bar=0.0)
    with pytest.raises(InvalidRequest, match="job '9'"):
        rerender(read_control_log(tmp_path / "x.jsonl"), tmp_path / "x.wav", Recording())
    w = ControlLogWriter(tmp_path / "y.jsonl", LogHeader(sample_rate=RATE))
    w.close(sample=10, bar=0.0)
    with pytest.raises(InvalidRequest, match="no clip starts"):
        rerender(read_control_log(tmp_path / "y.jsonl"), tmp_path / "y.wav", Recording())
    with pytest.raises(InvalidRequest):
        RerenderSettings(steps=0)


def test_a_lattice_clip_is_re_rendered_from_its_logged_origin(tmp_path: Path) -> None:
    """A lattice clip came in on a beat line mid-loop (``origin``): the re-render reads it
    from the same position, and a bad origin is refused."""
    path = tmp_path / "lattice.jsonl"
    w = ControlLogWriter(path, LogHeader(sample_rate=RATE, channels=2,
                                         info={"crossfade_samples": XF}))
    w.generation(1, parse_request(request(10)), SPEC, sample=0, bar=0.0)
    w.generation(2, parse_request(request(20)), SPEC, sample=100000, bar=1.04)
    w.clip_start(1, sample=0, bar=0.0)
    w.clip_start(2, sample=120000, bar=1.25, origin=96000)  # beat 2 of bar 1
    w.close(sample=192000, bar=2.0)
    gen = Recording()
    rerender(read_control_log(path), tmp_path / "l.wav", gen)
    audio, _ = sf.read(tmp_path / "l.wav", dtype="float32", always_2d=True)
    two = gen.clips[1].audio
    np.testing.assert_array_equal(audio[120000:192000], two[24000:96000])
    text = path.read_text()
    assert text.count("96000") >= 1 and '"origin"' in text
    text = re.sub(r'("origin":\s*)96000', r"\g<1>130000", text)
    assert "130000" in text
    (tmp_path / "bad.jsonl").write_text(text)
    with pytest.raises(InvalidRequest, match="origin"):
        read_control_log(tmp_path / "bad.jsonl")
