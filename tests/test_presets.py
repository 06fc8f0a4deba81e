"""Presets: TOML round trips, all-or-nothing loading, atomic saving, plain names only."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import tomllib
from hypothesis import example, given
from hypothesis import strategies as st

from engine import toml_writer
from engine.errors import InvalidRequest, UnknownId
from engine.live.state import PARAMETERS, EngineState
from engine.presets import Preset, PresetLibrary, PromptSet

scalar = st.one_of(st.text(max_size=30), st.integers(-(2**63), 2**63 - 1), st.booleans(),
                   st.floats(allow_nan=False, allow_infinity=False))
keys = st.text(min_size=1, max_size=12)


@given(st.dictionaries(keys, st.one_of(scalar, st.lists(scalar, max_size=4),
                                       st.dictionaries(keys, scalar, max_size=3),
                                       st.lists(st.dictionaries(keys, scalar, min_size=1,
                                                                max_size=3),
                                                min_size=1, max_size=3)), max_size=6))
@example({"key\n": "a newline ends this key"})
def test_toml_writer_round_trips(data: dict[str, Any]) -> None:
    assert tomllib.loads(toml_writer.dumps(data, header="a\nb")) == data


def test_toml_writer_refuses_what_toml_cannot_hold() -> None:
    with pytest.raises(ValueError):
        toml_writer.dumps({"x": math.nan})
    with pytest.raises(TypeError):
        toml_writer.dumps({"x": object()})


def test_save_load_round_trip(tmp_path: Path) -> None:
    lib = PresetLibrary([tmp_path])
    state = EngineState({"prompt": 'quote " and \\ and ünïcode\nnewline', "seed": 2**32 - 1,
                         "alpha_auto": False, "guidance": 0.1 + 0.2})
    lib.save("take", Preset.from_state(state, description="round trip"))
    assert [p.name for p in tmp_path.iterdir()] == ["take.toml"]  # no temp file left
    loaded = lib.load("take")
    assert loaded.parameters == state.snapshot() and loaded.description == "round trip"
    fresh = EngineState()
    loaded.apply(fresh)
    assert fresh.snapshot() == state.snapshot()
    assert "take" in lib.ids() and "lofi" in lib.ids()  # user folder, then built-in


@pytest.mark.parametrize("text, word", [
    ('[parameters]\nsteps = 500\nprompt = "x"\n', "steps"),
    ('[parameters]\nbogus = 1\n', "bogus"),
    ('[parameters]\nseed_image = "../etc"\n', "seed_image"),
    ('colour = "red"\n', "colour"),
    ('parameters = 3\n', "table"),
    ('[parameters\n', "TOML"),
])
def test_bad_presets_change_nothing(tmp_path: Path, text: str, word: str) -> None:
    (tmp_path / "bad.toml").write_text(text)
    lib = PresetLibrary([tmp_path])
    state = EngineState()
    before = state.snapshot()
    with pytest.raises(InvalidRequest, match=word):
        lib.load("bad").apply(state)
    assert state.snapshot() == before


def test_names_are_plain_ids(tmp_path: Path) -> None:
    lib = PresetLibrary([tmp_path])
    for name in ("../x", "/abs", "a/b", "", "."):
        with pytest.raises(InvalidRequest):
            lib.save(name, Preset({}))
        with pytest.raises((InvalidRequest, UnknownId)):
            lib.load(name)
    with pytest.raises(UnknownId):
        lib.load("nothing_here")
    (tmp_path / "huge.toml").write_bytes(b"#" * (300 * 1024))
    with pytest.raises(InvalidRequest, match="larger"):
        lib.load("huge")


def test_prompt_sets() -> None:
    lib = PresetLibrary()
    genres = lib.prompt_set("genres")
    assert genres.pick(len(genres.prompts)) == genres.prompts[0]
    with pytest.raises(InvalidRequest):
        PromptSet(prompts=())
    with pytest.raises(InvalidRequest):
        PromptSet(prompts=("ok", 5))  # type: ignore[arg-type]
    assert all(PARAMETERS["prompt"].coerce(p) == p for p in genres.prompts)
