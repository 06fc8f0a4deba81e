"""A recording session: the engine's output as audio plus its control log, side by side.

``Recording.start("takes/")`` opens ``takes/set-YYYYmmdd-HHMMSS.wav`` and
``takes/set-YYYYmmdd-HHMMSS.jsonl``; a file path (``.wav`` or ``.flac``) names them exactly.
The audio side is a :class:`~engine.recorder.Recorder` (the audio thread calls
:meth:`Recording.write`); the control side a :class:`~engine.control_log.ControlLogWriter`
(the control thread logs commands, generation requests and clip starts through ``.log``).
``riff rerender`` replays the log.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from engine.control_log import ControlLogWriter, LogHeader
from engine.errors import InvalidRequest
from engine.recorder import FORMATS, Recorder, RecorderConfig


def recording_paths(target: Path | str, now: datetime.datetime | None = None
                    ) -> tuple[Path, Path]:
    """(audio path, log path) for a target file or folder; a folder gets a timestamped name."""
    target = Path(target)
    if target.suffix.lower() in FORMATS:
        audio = target
    elif target.suffix:
        raise InvalidRequest(f"recording must be a folder or a .wav/.flac file, not {target}")
    else:
        stamp = (now or datetime.datetime.now()).strftime("%Y%m%d-%H%M%S")
        audio = target / f"set-{stamp}.wav"
    return audio, audio.with_suffix(".jsonl")


class Recording:
    """Audio recorder and control log of one take. Create with :meth:`start`."""

    def __init__(self, recorder: Recorder, log: ControlLogWriter) -> None:
        self.recorder = recorder
        self.log = log

    @classmethod
    def start(cls, target: Path | str, *, sample_rate: int, channels: int = 2,
              state: Mapping[str, Any] | None = None, info: Mapping[str, Any] | None = None,
              flush_s: float = 0.5) -> Recording:
        """Open both files and start the writer thread. Called by the control thread.

        Refuses to overwrite an existing log (FileExistsError) or audio file.
        """
        audio, log_path = recording_paths(target)
        config = RecorderConfig(audio, sample_rate=sample_rate, channels=channels,
                                flush_s=flush_s)
        if config.live_path.exists() or audio.exists():
            raise FileExistsError(f"{audio} already exists")
        header = LogHeader(sample_rate=sample_rate, channels=channels, audio=audio.name,
                           state=dict(state or {}), info=dict(info or {}))
        log = ControlLogWriter(log_path, header)
        recorder = Recorder(config)
        try:
            recorder.start()
        except BaseException:
            log.close()
            raise
        return cls(recorder, log)

    def write(self, frames: np.ndarray) -> bool:
        """Audio thread: copy ``frames`` (n, channels) into the recorder's ring (see
        :meth:`engine.recorder.Recorder.write`; no lock, no allocation, no logging)."""
        return self.recorder.write(frames)

    def stop(self, *, sample: int, bar: float) -> tuple[Path, Path]:
        """Close the take at ``sample``/``bar`` (control thread); returns (audio, log) paths."""
        try:
            audio = self.recorder.stop()
        finally:
            self.log.close(sample=sample, bar=bar)
        return audio, self.log.path
