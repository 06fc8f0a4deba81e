"""A minimal TOML writer for presets and MIDI maps.

The standard library reads TOML (``tomllib``) but cannot write it; presets and learned MIDI
maps only need strings, numbers, booleans, lists of those, tables and arrays of tables, so a
small writer keeps the engine free of another dependency. Output round-trips through
``tomllib`` (checked by the tests).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else _string(key)


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n",
            "\f": "\\f", "\r": "\\r"}


def _string(value: str) -> str:
    # TOML basic strings: escape quotes, backslashes and every control character (incl. DEL).
    out = []
    for ch in value:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"TOML cannot hold {value!r} here")
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, Mapping):
        inner = ", ".join(f"{_key(k)} = {_scalar(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    if isinstance(value, Sequence):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _is_table_array(value: Any) -> bool:
    return (isinstance(value, Sequence) and not isinstance(value, str) and len(value) > 0
            and all(isinstance(v, Mapping) for v in value))


def dumps(data: Mapping[str, Any], *, header: str = "") -> str:
    """Serialise ``data`` (nested mappings, lists, scalars) as a TOML document."""
    lines: list[str] = [f"# {line}" if line else "#" for line in header.splitlines()]
    _write_table(lines, data, prefix="")
    return "\n".join(lines).lstrip("\n") + "\n"


def _write_table(lines: list[str], table: Mapping[str, Any], prefix: str) -> None:
    for key, value in table.items():
        if not isinstance(value, Mapping) and not _is_table_array(value):
            lines.append(f"{_key(key)} = {_scalar(value)}")
    for key, value in table.items():
        name = f"{prefix}{_key(key)}"
        if isinstance(value, Mapping):
            lines.extend(["", f"[{name}]"])
            _write_table(lines, value, prefix=f"{name}.")
        elif _is_table_array(value):
            for item in value:
                lines.extend(["", f"[[{name}]]"])
                _write_table(lines, item, prefix=f"{name}.")
