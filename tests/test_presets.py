"""Presets: TOML round trips, all-or-nothing loading, atomic saving, plain names only."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomllib
from hypothesis import example, given
from hypothesis import strategies as st

from engine.errors import InvalidRequest, UnknownId
from engine.live.state import PARAMETERS, EngineState
from engine.presets import BUILTIN_FOLDER, Preset, PresetLibrary, PromptSet, user_presets_folder


@given(st.text(min_size=1, max_size=200).filter(lambda t: t.strip() != ""),
       st.text(max_size=100), st.integers(0, 2**32 - 1), st.floats(0, 20))
@example('quote " and \\ and \x7f del', "a\nb", 0, 0.1 + 0.2)
def test_preset_toml_round_trips(prompt: str, description: str, seed: int, guidance: float
                                 ) -> None:
    try:
        preset = Preset({"prompt": prompt, "seed": seed, "guidance": guidance},
                        description=description)
    except InvalidRequest:
        return  # a prompt the state refuses (control characters): nothing to write
    assert Preset.from_data(tomllib.loads(preset.to_toml())) == preset


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


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_save_without_preset_dir_goes_to_the_user_config_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    shipped = _tree(BUILTIN_FOLDER)
    lib = PresetLibrary()
    assert lib.save_folder == tmp_path / "cfg" / "riffusion-engine" / "presets"
    assert lib.save_folder == user_presets_folder()
    assert lib.load("lofi").parameters != {"prompt": "mine now"}
    path = lib.save("lofi", Preset({"prompt": "mine now"}, description="shadows the shipped"))
    assert path == tmp_path / "cfg" / "riffusion-engine" / "presets" / "lofi.toml"
    assert _tree(BUILTIN_FOLDER) == shipped  # the shipped folder is untouched
    # The user's file shadows the shipped one of the same name, in a fresh library too.
    assert PresetLibrary().load("lofi").parameters == {"prompt": "mine now"}
    assert PresetLibrary().resolve("lofi") == path
    assert "riffusion-engine preset" in path.read_text()  # tomlkit wrote the header comment
    # --preset-dir still wins for saving, and the user folder is still searched.
    other = PresetLibrary([tmp_path / "dir"])
    assert other.save_folder == tmp_path / "dir"
    assert other.load("lofi").parameters == {"prompt": "mine now"}


def test_the_shipped_folder_is_never_a_save_folder() -> None:
    shipped = _tree(BUILTIN_FOLDER)
    for lib in (PresetLibrary([BUILTIN_FOLDER]), PresetLibrary(user=None),
                PresetLibrary(user=BUILTIN_FOLDER / "maps" / "..")):
        with pytest.raises(InvalidRequest, match="read-only"):
            lib.save("lofi", Preset({"prompt": "overwritten"}))
    assert _tree(BUILTIN_FOLDER) == shipped
    lib = PresetLibrary()
    assert lib.writable_map_path(BUILTIN_FOLDER / "maps" / "generic8.toml") == \
        lib.save_folder / "maps" / "generic8.toml"
    assert lib.writable_map_path(Path("/elsewhere/m.toml")) == Path("/elsewhere/m.toml")
