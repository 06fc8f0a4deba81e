"""Control log: round trip, torn last line after a crash, and validation of bad lines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.errors import InvalidRequest
from engine.model.request import InferenceRequest
from engine.takes.control_log import (
    ClipStartEvent,
    CommandEvent,
    ControlLogWriter,
    EndEvent,
    GenerationEvent,
    LogHeader,
    read_control_log,
)

ROOT = Path(__file__).resolve().parent.parent

REQUEST = InferenceRequest.from_dict({
    "alpha": 0.25, "num_inference_steps": 50, "seed_image_id": "og_beat", "mask_image_id": None,
    "start": {"prompt": "jazzy rapping", "seed": 42, "denoising": 0.75, "guidance": 7.0},
    "end": {"prompt": "jazzy rapping", "seed": 43, "denoising": 0.75, "guidance": 7.0},
})


def _header() -> LogHeader:
    return LogHeader(sample_rate=48000, channels=2, audio="set.wav",
                     state={"tempo": 120.0, "prompt": "jazzy rapping"}, info={"model": "tiny"})


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "set.jsonl"
    w = ControlLogWriter(path, _header())
    w.command("/riff/tempo", [np.float32(100.0).item()], sample=0, bar=0.0, source="osc")
    w.generation(7, REQUEST, {"bars": 2, "bpm": 100.0, "sample_rate": 48000},
                 sample=10, bar=0.001)
    w.clip_start(7, sample=96000, bar=1.0)
    w.command("/riff/prompt", ["church bells"], sample=100000, bar=1.04)
    w.close(sample=192000, bar=2.0)
    log = read_control_log(path)
    assert log.complete
    assert log.header.sample_rate == 48000 and log.header.state["tempo"] == 120.0
    assert log.header.started  # filled in by the writer
    assert [type(e) for e in log.events] == [
        CommandEvent, GenerationEvent, ClipStartEvent, CommandEvent, EndEvent]
    gen = log.of_type(GenerationEvent)[0]
    assert gen.request == REQUEST and gen.job == "7" and gen.clip["bars"] == 2
    assert log.events[3] == CommandEvent(100000, 1.04, "/riff/prompt", ("church bells",), None)


def test_clip_dataclass_is_logged_as_data(tmp_path: Path) -> None:
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class Spec:
        bars: int
        bpm: float

    w = ControlLogWriter(tmp_path / "l.jsonl", _header())
    w.generation("a", REQUEST, Spec(4, np.float64(93.5)), sample=0, bar=0)
    w.close()
    log = read_control_log(tmp_path / "l.jsonl")
    assert not log.complete
    assert log.of_type(GenerationEvent)[0].clip == {"bars": 4, "bpm": 93.5}


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    path.write_text("precious\n")
    with pytest.raises(FileExistsError):
        ControlLogWriter(path, _header())
    assert path.read_text() == "precious\n"


@pytest.mark.parametrize("bad", [
    {"sample": -1, "bar": 0.0},
    {"sample": 1.5, "bar": 0.0},
    {"sample": 0, "bar": float("nan")},
])
def test_bad_positions_rejected_by_writer(tmp_path: Path, bad: dict) -> None:
    w = ControlLogWriter(tmp_path / "l.jsonl", _header())
    with pytest.raises(InvalidRequest):
        w.command("/riff/play", [], **bad)
    with pytest.raises(InvalidRequest):
        w.command("/riff/play", [object()], sample=0, bar=0.0)
    w.close()
    assert read_control_log(tmp_path / "l.jsonl").events == ()


GOOD_HEADER = json.dumps({"type": "header", "sample_rate": 48000})


@pytest.mark.parametrize("lines, message", [
    ([], "empty"),
    (['{"type": "command"}'], "first line must be the header"),
    ([GOOD_HEADER, "{nope"], "not JSON"),
    ([GOOD_HEADER, "[1]"], "JSON object"),
    ([GOOD_HEADER, '{"type": "warp", "sample": 0, "bar": 0}'], "unknown line type"),
    ([GOOD_HEADER, '{"type": "command", "sample": 0, "bar": 0, "name": 3, "args": []}'],
     "name"),
    ([GOOD_HEADER, '{"type": "end", "sample": 0, "bar": 0, "x": 1}'], "unknown field"),
    ([GOOD_HEADER, '{"type": "generation", "sample": 0, "bar": 0, "job": "1", '
                   '"request": {"start": {"prompt": "a", "seed": -1}}}'], "seed"),
    ([GOOD_HEADER, '{"type": "generation", "sample": 0, "bar": 0, "job": "1", '
                   '"request": {"start": {"prompt": "a"}, "seed_image_id": "../x"}}'],
     "plain name"),
    ([GOOD_HEADER, '{"type": "end", "sample": 0, "bar": 0}',
      '{"type": "end", "sample": 0, "bar": 0}'], "after the end"),
    ([json.dumps({"type": "header", "sample_rate": 48000, "version": 9})], "version"),
])
def test_reader_names_the_bad_line(tmp_path: Path, lines: list[str], message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    with pytest.raises(InvalidRequest, match=message):
        read_control_log(path)


CHILD = r"""
import sys
sys.path.insert(0, sys.argv[1])
from engine.takes.control_log import ControlLogWriter, LogHeader
from tests.test_control_log import REQUEST
w = ControlLogWriter(sys.argv[2], LogHeader(sample_rate=44100))
n = 0
while True:
    w.command("/riff/alpha", [n / 1e6], sample=n, bar=n / 88200)
    if n % 100 == 0:
        w.generation(n, REQUEST, {"bars": 2}, sample=n, bar=n / 88200)
    n += 1
    if n == 500:
        print("ready", flush=True)
"""


def test_readable_after_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "killed.jsonl"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(ROOT), str(path)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=10)
    log = read_control_log(path)
    assert not log.complete
    commands = log.of_type(CommandEvent)
    assert len(commands) >= 500
    assert [c.sample for c in commands] == list(range(len(commands)))
    assert all(g.request == REQUEST for g in log.of_type(GenerationEvent))
