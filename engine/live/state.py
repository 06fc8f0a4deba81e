"""The performer's parameters: one validated table, one state object.

Every control surface (OSC, MIDI, presets, the CLI, the control log) changes the engine through
:meth:`EngineState.set`, which validates against :data:`PARAMETERS` and either applies the whole
change or raises :class:`~engine.errors.InvalidRequest` and changes nothing.

Thread: the state belongs to the control plane (the asyncio loop). Other threads read immutable
:meth:`EngineState.snapshot` copies and never mutate the state.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

from engine import limits
from engine.errors import InvalidRequest
from engine.model.request import MAX_PROMPT_CHARS, MAX_SEED, check_plain_id

Value = str | int | float | bool


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """One parameter: its name, OSC address, type, range and default.

    ``kind`` is ``"str"``, ``"id"`` (a plain seed image/mask name; ``""`` allowed when
    ``allow_empty``), ``"int"``, ``"float"`` or ``"bool"`` (0/1 on the wire).
    """

    name: str
    address: str
    kind: str
    default: Value
    lo: float | None = None
    hi: float | None = None
    allow_empty: bool = True
    help: str = ""

    def coerce(self, value: object) -> Value:
        """Return ``value`` converted to this parameter's type, or raise InvalidRequest."""
        if self.kind in ("str", "id"):
            if not isinstance(value, str):
                raise InvalidRequest(f"{self.name} must be a string, not {type(value).__name__}")
            if len(value) > MAX_PROMPT_CHARS:
                raise InvalidRequest(f"{self.name} is longer than {MAX_PROMPT_CHARS} characters")
            if self.kind == "id" and value:
                check_plain_id(value, self.name)
            if not value and not self.allow_empty:
                raise InvalidRequest(f"{self.name} must not be empty")
            return value
        if isinstance(value, bool) and self.kind == "bool":
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidRequest(f"{self.name} must be a number, not {type(value).__name__}")
        if not math.isfinite(value):
            raise InvalidRequest(f"{self.name} must be a finite number")
        if self.kind == "bool":
            if value not in (0, 1):
                raise InvalidRequest(f"{self.name} must be 0 or 1, not {value!r}")
            return bool(value)
        if self.kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise InvalidRequest(f"{self.name} must be an integer, not {value!r}")
            value = int(value)
        else:
            value = float(value)
        if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            raise InvalidRequest(f"{self.name} must be between {self.lo:g} and {self.hi:g}, "
                                 f"not {value!r}")
        return value


PARAMETERS: Mapping[str, ParamSpec] = {
    spec.name: spec
    for spec in (
        ParamSpec("prompt", "/riff/prompt", "str", "lo-fi hip hop beat", allow_empty=False,
                  help="target prompt; the jam moves to it over transition_clips clips"),
        ParamSpec("prompt_a", "/riff/prompt/a", "str", "lo-fi hip hop beat",
                  allow_empty=False, help="manual mode: interpolation start"),
        ParamSpec("prompt_b", "/riff/prompt/b", "str", "lo-fi hip hop beat",
                  allow_empty=False, help="manual mode: interpolation end"),
        ParamSpec("negative", "/riff/negative", "str", "", help="negative prompt"),
        ParamSpec("alpha", "/riff/alpha", "float", 0.0, 0.0, 1.0,
                  help="manual interpolation position"),
        ParamSpec("alpha_auto", "/riff/alpha/auto", "bool", True,
                  help="1: the jam planner drives alpha, 0: manual"),
        ParamSpec("denoising", "/riff/denoising", "float", 0.75, 0.0, 1.0,
                  help="img2img strength"),
        ParamSpec("guidance", "/riff/guidance", "float", 7.0, 0.0, 20.0, help="CFG scale"),
        ParamSpec("steps", "/riff/steps", "int", 50, 1, 150, help="inference steps"),
        ParamSpec("seed", "/riff/seed", "int", 42, 0, MAX_SEED, help="seed (start)"),
        ParamSpec("seed_b", "/riff/seed/b", "int", 43, 0, MAX_SEED, help="seed (end)"),
        ParamSpec("seed_image", "/riff/seed_image", "id", "og_beat", allow_empty=False,
                  help="seed image id from the library"),
        ParamSpec("mask", "/riff/mask", "id", "", help="mask id; empty clears"),
        ParamSpec("seamless", "/riff/seamless", "bool", True,
                  help="1: the diffusion pads time circularly so clips loop in content, "
                       "0: Riffusion-exact"),
        ParamSpec("tempo", "/riff/tempo", "float", 120.0, *limits.CONTROL_TEMPO_BPM,
                  help="beats per minute (internal clock)"),
        ParamSpec("bars", "/riff/bars", "int", 2, *limits.CONTROL_BARS, help="clip length in bars"),
        ParamSpec("meter", "/riff/meter", "int", 4, *limits.BEATS_PER_BAR, help="beats per bar"),
        ParamSpec("transition_clips", "/riff/transition_clips", "int", 4, 1, 32,
                  help="clips to move from one prompt to the next"),
    )
}

#: OSC address -> parameter name.
ADDRESSES: Mapping[str, str] = {spec.address: name for name, spec in PARAMETERS.items()}

Listener = Callable[[str, Value], None]
#: Returns why parameter ``name`` may not be changed now, or None when it may.
Guard = Callable[[str], str | None]
#: Returns why the state ``values`` (every parameter, after a change of the names in
#: ``changed``) cannot be played, or None when it can: checks across parameters.
Check = Callable[[Mapping[str, Value], Collection[str]], str | None]


def defaults() -> dict[str, Value]:
    """Every parameter at its default value."""
    return {name: spec.default for name, spec in PARAMETERS.items()}


class EngineState:
    """Current parameter values, validated on every change, with change listeners.

    Listeners are called synchronously after a change was applied, with the parameter name and
    its new value; they run on the caller's thread (the control plane) and must not block.
    """

    def __init__(self, initial: Mapping[str, object] | None = None) -> None:
        self._values: dict[str, Value] = defaults()
        self._listeners: list[Listener] = []
        self._guards: list[Guard] = []
        self._checks: list[Check] = []
        if initial:
            self.update(initial)

    def get(self, name: str) -> Value:
        """The current value of ``name``."""
        try:
            return self._values[name]
        except KeyError:
            raise InvalidRequest(f"unknown parameter {name!r}") from None

    def snapshot(self) -> dict[str, Value]:
        """A copy of every value, safe to hand to another thread."""
        return dict(self._values)

    def set(self, name: str, value: object) -> Value:
        """Validate and apply one change; returns the stored value."""
        return self.update({name: value})[name]

    def update(self, changes: Mapping[str, object]) -> dict[str, Value]:
        """Validate every change first (values, then guards), then apply them all; returns
        the stored values. Raises InvalidRequest and changes nothing when any is bad."""
        coerced: dict[str, Value] = {}
        for name, value in changes.items():
            spec = PARAMETERS.get(name)
            if spec is None:
                raise InvalidRequest(f"unknown parameter {name!r}")
            coerced[name] = spec.coerce(value)
        for name in coerced:
            reason = self.refusal(name)
            if reason is not None:
                raise InvalidRequest(reason)
        if self._checks:
            proposed = {**self._values, **coerced}
            for check in tuple(self._checks):
                reason = check(proposed, tuple(coerced))
                if reason is not None:
                    raise InvalidRequest(reason)
        for name, value in coerced.items():
            self._values[name] = value
        for name, value in coerced.items():
            for listener in tuple(self._listeners):
                listener(name, value)
        return coerced

    def add_guard(self, guard: Guard) -> None:
        """Refuse changes while ``guard(name)`` gives a reason (the engine refuses tempo and
        meter while an external master rules). Checked before anything is applied."""
        self._guards.append(guard)

    def add_check(self, check: Check) -> None:
        """Refuse changes that make a state ``check(values, changed)`` gives a reason for
        (the engine refuses a meter no seed image has, or clips too wide). Checked with
        the whole proposed state, after the guards, before anything is applied."""
        self._checks.append(check)

    def remove_guard(self, guard: Guard) -> None:
        """Stop asking ``guard``; unknown guards are ignored."""
        if guard in self._guards:
            self._guards.remove(guard)

    def refusal(self, name: str) -> str | None:
        """Why ``name`` may not be changed now (None: it may)."""
        for guard in self._guards:
            reason = guard(name)
            if reason is not None:
                return reason
        return None

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(name, value)`` after every applied change."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        """Stop calling ``listener``; unknown listeners are ignored."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    def items(self) -> Iterable[tuple[str, Value]]:
        """(name, value) pairs in table order."""
        return ((name, self._values[name]) for name in PARAMETERS)

    def as_dict(self) -> dict[str, Any]:
        """Values as plain JSON-ready data (for presets and the control log)."""
        return dict(self._values)
