"""Parameter validation: bad values change nothing."""

from __future__ import annotations

import pytest

from engine.errors import InvalidRequest
from engine.live.state import ADDRESSES, PARAMETERS, EngineState


def test_defaults_are_valid_for_their_own_specs() -> None:
    for spec in PARAMETERS.values():
        assert spec.coerce(spec.default) == spec.default


def test_addresses_follow_the_osc_table() -> None:
    assert ADDRESSES["/riff/prompt/a"] == "prompt_a"
    assert ADDRESSES["/riff/seed/b"] == "seed_b"
    assert ADDRESSES["/riff/alpha/auto"] == "alpha_auto"


def test_set_coerces_and_notifies() -> None:
    state = EngineState()
    seen: list[tuple[str, object]] = []
    state.add_listener(lambda name, value: seen.append((name, value)))
    assert state.set("steps", 20.0) == 20
    assert state.set("alpha", 1) == 1.0
    assert state.set("alpha_auto", 0) is False
    assert seen == [("steps", 20), ("alpha", 1.0), ("alpha_auto", False)]


@pytest.mark.parametrize(
    ("name", "value"),
    [("alpha", 1.5), ("alpha", "x"), ("steps", 0), ("steps", 2.5), ("tempo", 300),
     ("seed_image", "../x"), ("prompt", ""), ("alpha_auto", 2), ("alpha", float("nan")),
     ("nope", 1), ("guidance", True)],
)
def test_bad_values_change_nothing(name: str, value: object) -> None:
    state = EngineState()
    before = state.snapshot()
    with pytest.raises(InvalidRequest):
        state.update({"seed": 7, name: value})
    assert state.snapshot() == before
