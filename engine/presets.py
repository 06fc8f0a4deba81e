"""Presets: named TOML files holding prompts and parameter values, plus prompt sets.

A preset is a ``[parameters]`` table with any subset of :data:`engine.live.state.PARAMETERS`
(prompts included) and an optional ``description``. Loading validates every value before
anything is applied, so a broken file changes nothing; saving writes a temporary file in the
same folder and renames it over the old one, so a crash never leaves half a preset.

A prompt set (``prompts/<id>.toml``: ``prompts = [...]``) is a list of prompts a controller can
step through (MIDI notes, TouchOSC buttons).

Folders are searched in order: the folders named with ``--preset-dir``, then the user's
config folder (:func:`user_presets_folder`: ``$XDG_CONFIG_HOME/riffusion-engine/presets``,
``~/.config/riffusion-engine/presets`` by default), then the presets shipped with the engine,
so a user file shadows a shipped one of the same name. Saving (presets, learned MIDI maps)
writes into the first ``--preset-dir`` or else the user's config folder, never into the shipped
folder: in an installed wheel that is inside site-packages, in a checkout it is tracked source.
Names are plain ids (``check_plain_id``), never paths.

Thread: the control plane (asyncio loop) or the CLI; file I/O is small and synchronous.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import platformdirs
import tomlkit

from engine.errors import InvalidRequest, UnknownId
from engine.live.state import PARAMETERS, EngineState, Value
from engine.model.request import MAX_PROMPT_CHARS, check_plain_id
from engine.resources import shipped_folder

log = logging.getLogger(__name__)

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef,import-not-found,unused-ignore]

#: The presets folder shipped with the engine (next to the ``engine`` package).
BUILTIN_FOLDER = shipped_folder("presets")
#: The application's name in the user's config directory.
APP_NAME = "riffusion-engine"


def user_presets_folder() -> Path:
    """The user's presets folder: ``riffusion-engine/presets`` in the user's config directory
    (``$XDG_CONFIG_HOME``, else ``~/.config`` on Linux; platformdirs' choice elsewhere).

    Read from the environment on each call, so a changed ``XDG_CONFIG_HOME`` (tests) counts.
    The folder is not created here; saving creates it. Thread: any."""
    return Path(platformdirs.user_config_dir(APP_NAME, appauthor=False)) / "presets"


#: Files larger than this are refused before parsing.
MAX_FILE_BYTES = 256 * 1024
MAX_PROMPTS_IN_SET = 512


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """Parse a small TOML file; any problem becomes InvalidRequest naming the file."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise InvalidRequest(f"{what} {path.name} is larger than {MAX_FILE_BYTES} bytes")
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidRequest(f"{what} {path.name} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise InvalidRequest(f"{what} {path.name} is not UTF-8 text") from None


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and a rename (never half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclasses.dataclass(frozen=True)
class Preset:
    """A validated preset: coerced parameter values and a description."""

    parameters: Mapping[str, Value]
    description: str = ""

    def __post_init__(self) -> None:
        checked: dict[str, Value] = {}
        for name, value in self.parameters.items():
            spec = PARAMETERS.get(name)
            if spec is None:
                raise InvalidRequest(f"unknown parameter {name!r} in preset")
            checked[name] = spec.coerce(value)
        if not isinstance(self.description, str) or len(self.description) > MAX_PROMPT_CHARS:
            raise InvalidRequest("preset description must be a string of at most "
                                 f"{MAX_PROMPT_CHARS} characters")
        object.__setattr__(self, "parameters", checked)

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Preset:
        """Build from parsed TOML; unknown top-level keys are errors (typos show up)."""
        extra = set(data) - {"description", "parameters"}
        if extra:
            raise InvalidRequest(f"unknown preset keys: {', '.join(sorted(extra))}")
        params = data.get("parameters", {})
        if not isinstance(params, Mapping):
            raise InvalidRequest("preset [parameters] must be a table")
        return cls(parameters=dict(params), description=data.get("description", ""))

    @classmethod
    def from_state(cls, state: EngineState, description: str = "") -> Preset:
        """Every current parameter value."""
        return cls(parameters=state.snapshot(), description=description)

    def to_toml(self) -> str:
        """The preset as a TOML document."""
        doc = tomlkit.document()
        doc.add(tomlkit.comment("riffusion-engine preset"))
        if self.description:
            doc["description"] = self.description
        params = tomlkit.table()
        for name, value in self.parameters.items():
            params[name] = value
        doc["parameters"] = params
        return tomlkit.dumps(doc)

    def apply(self, state: EngineState) -> dict[str, Value]:
        """Apply every value at once (validated again by the state; all or nothing).

        Parameters the state refuses now (tempo and meter while an external master rules)
        are left out and logged, so a preset still loads under a DAW's clock."""
        values = dict(self.parameters)
        for name in tuple(values):
            reason = state.refusal(name)
            if reason is not None:
                del values[name]
                log.info("preset: %s left out: %s", name, reason)
        return state.update(values)


@dataclasses.dataclass(frozen=True)
class PromptSet:
    """An ordered list of prompts that a controller can pick from by index."""

    prompts: tuple[str, ...]
    description: str = ""

    def __post_init__(self) -> None:
        if not self.prompts or len(self.prompts) > MAX_PROMPTS_IN_SET:
            raise InvalidRequest(f"a prompt set holds 1 to {MAX_PROMPTS_IN_SET} prompts")
        spec = PARAMETERS["prompt"]
        object.__setattr__(self, "prompts", tuple(str(spec.coerce(p)) for p in self.prompts))

    def pick(self, index: int) -> str:
        """The prompt at ``index``, wrapping around (so any note range works)."""
        return self.prompts[index % len(self.prompts)]


class _UserDefault:
    """Marks "the user's config folder, looked up when the library is built"."""


USER_FOLDER = _UserDefault()


class PresetLibrary:
    """Presets, prompt sets and MIDI maps found in folders (see the module docstring).

    Layout of each folder: ``<id>.toml`` presets, ``prompts/<id>.toml`` prompt sets,
    ``maps/<id>.toml`` MIDI maps. ``folders``: the ``--preset-dir`` folders (searched first,
    the first one is where saving writes); ``user``: the user's config folder (default
    :func:`user_presets_folder`; ``None`` leaves it out); ``builtin``: the shipped, read-only
    folder. Thread: the control plane or the CLI.
    """

    def __init__(self, folders: Sequence[Path] = (), *,
                 user: Path | _UserDefault | None = USER_FOLDER,
                 builtin: Path | None = BUILTIN_FOLDER) -> None:
        explicit = tuple(Path(f) for f in folders)
        self.user_folder: Path | None = (user_presets_folder() if isinstance(user, _UserDefault)
                                         else user)
        self.builtin = builtin
        self.folders: tuple[Path, ...] = explicit
        if self.user_folder is not None and self.user_folder not in explicit:
            self.folders += (self.user_folder,)
        if builtin is not None:
            self.folders += (builtin,)
        if not self.folders:
            raise InvalidRequest("a preset library needs at least one folder")
        self._save_folder = explicit[0] if explicit else self.user_folder

    @property
    def save_folder(self) -> Path:
        """Where :meth:`save` and MIDI learn write: the first ``--preset-dir``, else the user's
        config folder; never the shipped folder (InvalidRequest when that is all there is)."""
        folder = self._save_folder
        if folder is None or self.read_only(folder):
            raise InvalidRequest("the shipped presets folder is read-only; give --preset-dir "
                                 "or save into your config folder")
        return folder

    def read_only(self, path: Path) -> bool:
        """Whether ``path`` is inside the shipped presets folder (never written)."""
        if self.builtin is None:
            return False
        return Path(path).resolve().is_relative_to(self.builtin.resolve())

    def writable_map_path(self, path: Path | None) -> Path:
        """Where a learned MIDI map read from ``path`` is saved: ``path`` itself unless it is
        a shipped map, which is saved under its own name in :attr:`save_folder` (the user's
        copy then shadows it); ``maps/learned.toml`` there for a map read from no file."""
        if path is None:
            return self.save_folder / "maps" / "learned.toml"
        if self.read_only(path):
            return self.save_folder / "maps" / Path(path).name
        return Path(path)

    def _find(self, sub: str, ident: str, what: str) -> Path:
        check_plain_id(ident, what)
        for folder in self.folders:
            path = folder / sub / f"{ident}.toml"
            if path.is_file():
                return path
        raise UnknownId(f"no {what} named {ident!r}")

    def _ids(self, sub: str) -> list[str]:
        found: set[str] = set()
        for folder in self.folders:
            if (folder / sub).is_dir():
                found.update(p.stem for p in (folder / sub).glob("*.toml") if p.is_file())
        return sorted(found)

    def ids(self) -> list[str]:
        """Names of every preset."""
        return self._ids("")

    def resolve(self, ident: str) -> Path:
        """The file of preset ``ident`` (UnknownId when there is none)."""
        return self._find("", ident, "preset")

    def load(self, ident: str) -> Preset:
        """Read and validate preset ``ident``."""
        path = self.resolve(ident)
        return Preset.from_data(read_toml(path, "preset"))

    def save(self, ident: str, preset: Preset, *, overwrite: bool = False) -> Path:
        """Write preset ``ident`` atomically into :attr:`save_folder`; returns its path.

        A user preset of that name is replaced only with ``overwrite`` (a performer's
        preset is not lost to a slip of the finger); shadowing a shipped one needs no flag.
        """
        check_plain_id(ident, "preset")
        path = self.save_folder / f"{ident}.toml"
        if path.exists() and not overwrite:
            raise InvalidRequest(f"preset {ident!r} exists in {self.save_folder}; save it with "
                                 f"the overwrite flag to replace it (/riff/preset/save {ident} 1)")
        write_text_atomic(path, preset.to_toml())
        return path

    def prompt_set_ids(self) -> list[str]:
        """Names of every prompt set."""
        return self._ids("prompts")

    def prompt_set(self, ident: str) -> PromptSet:
        """Read and validate prompt set ``ident``."""
        data = read_toml(self._find("prompts", ident, "prompt set"), "prompt set")
        prompts = data.get("prompts")
        if not isinstance(prompts, list):
            raise InvalidRequest(f"prompt set {ident!r} needs a list 'prompts'")
        return PromptSet(prompts=tuple(prompts), description=str(data.get("description", "")))

    def map_ids(self) -> list[str]:
        """Names of every MIDI map."""
        return self._ids("maps")

    def map_path(self, ident: str) -> Path:
        """The file of MIDI map ``ident``."""
        return self._find("maps", ident, "MIDI map")
