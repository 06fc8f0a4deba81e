"""What the control surfaces (OSC, MIDI) need from the engine, and the commands they share.

:class:`ControlTarget` is the slice of the engine facade (``engine.live.control.Engine``) that the
surfaces drive: its parameter state, transport start/stop and a status dictionary. Coding
against this small protocol keeps OSC and MIDI testable with a real
:class:`~engine.live.state.EngineState` and any object that plays and stops.

:class:`Commands` turns surface actions (set a parameter, play, load a preset, start MIDI
learn) into engine calls. Every method raises :class:`~engine.errors.RiffError` for bad input
and changes nothing in that case. Seed image and mask ids are checked against the seed image
library (an :data:`ImageIdCheck`, see :func:`library_id_check`) when the change arrives: an
unknown id would otherwise be accepted, echoed to every controller as valid, and then make
every clip fail with only a log line.

Thread: everything here runs on the asyncio loop of the daemon.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from engine.errors import InvalidRequest
from engine.live.state import ADDRESSES, PARAMETERS, EngineState, Value
from engine.model.seed_images import SeedImageLibrary
from engine.presets import Preset, PresetLibrary

log = logging.getLogger(__name__)

StatusValue = int | float | str


class ControlTarget(Protocol):
    """The engine as the control surfaces see it (``engine.live.control.Engine`` fits)."""

    @property
    def state(self) -> EngineState: ...

    def play(self) -> Any:
        """Start the transport (may return an awaitable)."""

    def stop(self) -> Any:
        """Stop the transport (may return an awaitable)."""

    def status(self) -> Mapping[str, StatusValue]:
        """At least ``bar``, ``queue``, ``late``, ``progress``, ``clip``; more keys allowed."""


#: Called with an OSC address when MIDI learn starts; raises RiffError when it cannot.
LearnHook = Callable[[str], None]

#: Called with a parameter name (``seed_image`` or ``mask``) and a non-empty, plain id before
#: the change is applied; raises RiffError (UnknownId) when the id does not exist.
ImageIdCheck = Callable[[str, str], None]

#: The parameters whose values are ids in the seed image library.
IMAGE_ID_PARAMS = frozenset(name for name, spec in PARAMETERS.items() if spec.kind == "id")


def library_id_check(library: SeedImageLibrary) -> ImageIdCheck:
    """An :data:`ImageIdCheck` against ``library`` (the one the local generator uses), whose
    errors say "mask" for the mask and "seed image" for the seed image.

    Thread: the asyncio loop; a few ``stat`` calls per check, no file is read.
    """

    def check(name: str, image_id: str) -> None:
        library.resolve(image_id, "mask" if name == "mask" else "seed image")

    return check


class Commands:
    """Surface-independent actions on a :class:`ControlTarget`.

    ``learn`` is installed by the MIDI input when it runs (``None``: MIDI learn unavailable).
    ``image_ids`` checks seed image and mask ids before they are applied (``None``: only the
    id's form is checked, e.g. with a remote generator whose library is not known here).
    """

    def __init__(self, engine: ControlTarget, presets: PresetLibrary, *,
                 image_ids: ImageIdCheck | None = None) -> None:
        self.engine = engine
        self.presets = presets
        self.learn: LearnHook | None = None
        self.image_ids = image_ids
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def state(self) -> EngineState:
        """The engine's parameter state."""
        return self.engine.state

    def set_address(self, address: str, value: object) -> Value:
        """Set the parameter at OSC ``address`` (validated; InvalidRequest when bad)."""
        name = ADDRESSES.get(address)
        if name is None:
            raise InvalidRequest(f"{address} is not a parameter address")
        self.check_ids({name: value})
        return self.engine.state.set(name, value)

    def check_ids(self, changes: Mapping[str, object]) -> None:
        """Raise RiffError when ``changes`` name a seed image or mask the library lacks.

        The value's form is validated first (the parameter's own error for a non-string or a
        path), so the library is only ever asked about plain names; ``""`` (no mask) passes.
        """
        if self.image_ids is None:
            return
        for name, value in changes.items():
            if name in IMAGE_ID_PARAMS:
                image_id = PARAMETERS[name].coerce(value)
                if isinstance(image_id, str) and image_id:
                    self.image_ids(name, image_id)

    def _run(self, what: str, result: Any) -> None:
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._tasks.add(task)
            task.add_done_callback(lambda t: self._done(what, t))

    def _done(self, what: str, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("engine %s failed: %r", what, task.exception())

    def play(self) -> None:
        """Start the transport."""
        self._run("play", self.engine.play())

    def stop(self) -> None:
        """Stop the transport."""
        self._run("stop", self.engine.stop())

    def load_preset(self, name: str) -> Preset:
        """Validate preset ``name`` completely, then apply all of it."""
        preset = self.presets.load(name)
        self.check_ids(preset.parameters)
        preset.apply(self.engine.state)
        log.info("preset %s loaded", name)
        return preset

    def save_preset(self, name: str, overwrite: bool = False) -> None:
        """Save every current parameter as preset ``name`` (replacing the user's preset of
        that name only with ``overwrite``)."""
        path = self.presets.save(name, Preset.from_state(self.engine.state),
                                 overwrite=overwrite)
        log.info("preset %s saved to %s", name, path)

    def capture(self, bars: object, name: object = None) -> tuple[Any, asyncio.Future[str]]:
        """Capture ``bars`` bars of the audio input from the next bar line as seed image
        ``name`` and make it the current seed image (``/riff/capture``, the MIDI ``capture``
        action). Returns the armed job (``name``, ``bar``, ...) and a future that completes
        with the name once it is the seed image; raises RiffError, changing nothing, at once
        for bad arguments or an engine without audio input."""
        start = getattr(self.engine, "capture_start", None)
        if not callable(start):
            raise InvalidRequest("this engine cannot capture audio input")
        job, future = start(bars, name)

        def done(f: asyncio.Future[str]) -> None:
            if not f.cancelled() and f.exception() is None:
                log.info("capture %s is the seed image", f.result())

        future.add_done_callback(done)
        return job, future

    def start_learn(self, address: str) -> None:
        """Bind the next moved MIDI CC to ``address`` (a numeric parameter)."""
        name = ADDRESSES.get(address)
        if name is None:
            raise InvalidRequest(f"{address} is not a parameter address")
        if PARAMETERS[name].kind in ("str", "id"):
            raise InvalidRequest(f"{address} takes text; a MIDI CC cannot drive it")
        if self.learn is None:
            raise InvalidRequest("MIDI input is not enabled")
        self.learn(address)
