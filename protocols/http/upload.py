"""Audio uploads for ``POST /v1/audio_to_audio``: the body read within a limit, then split
into the audio bytes and the request.

Two shapes, both common for audio APIs:

- ``multipart/form-data``: a file part ``audio`` and an optional ``request`` part holding
  the request as JSON (and an optional ``spectrogram`` part, ``true`` to get the image);
- ``application/json``: the request's fields plus ``audio`` (base64, or a ``data:`` URI as
  Riffusion's own API answers audio) and ``spectrogram`` (true/false).

Multipart is parsed with the standard library's MIME parser (the body is already in memory
and bounded), so no extra dependency is needed.
"""

from __future__ import annotations

import base64
import binascii
import json
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

from engine.errors import InvalidAudio, InvalidRequest
from protocols.http.guard import HttpProblem


def split_upload(content_type: str, body: bytes) -> tuple[bytes, dict[str, Any], bool]:
    """(audio bytes, request fields, whether the spectrogram is wanted) of an upload.

    Raises HttpProblem 415 for other content types, 400 for malformed bodies, and
    InvalidAudio (422) when the audio is missing or not base64.
    """
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == "multipart/form-data":
        return _multipart(content_type, body)
    if kind == "application/json":
        return _json(body)
    raise HttpProblem(415, "send multipart/form-data (an 'audio' file part and a 'request' "
                      "JSON part) or application/json (with 'audio' as base64)")


def _flag(value: object, field: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "false", "0", ""):
        return value.lower() in ("true", "1")
    raise InvalidRequest(f"{field} must be true or false, not {value!r}")


def _json(body: bytes) -> tuple[bytes, dict[str, Any], bool]:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise HttpProblem(400, f"request body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequest("request must be a JSON object")
    fields = dict(data)
    encoded = fields.pop("audio", None)
    spectrogram = _flag(fields.pop("spectrogram", False), "spectrogram")
    if not isinstance(encoded, str) or not encoded:
        raise InvalidAudio("'audio' is missing: give the file as base64 or a data: URI")
    if encoded.startswith("data:"):
        head, _, encoded = encoded.partition(",")
        if ";base64" not in head:
            raise InvalidAudio("'audio' data URI must be base64")
    try:
        audio = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidAudio("'audio' is not valid base64") from None
    return audio, fields, spectrogram


def _multipart(content_type: str, body: bytes) -> tuple[bytes, dict[str, Any], bool]:
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1",
                                                                                "replace")
    message = BytesParser(policy=policy.HTTP).parsebytes(head + body)
    if not isinstance(message, EmailMessage) or not message.is_multipart():
        raise HttpProblem(400, "malformed multipart body (no parts or no boundary)")
    parts: dict[str, bytes] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            parts[name] = payload
    if "audio" not in parts or not parts["audio"]:
        raise InvalidAudio("the multipart body has no 'audio' file part")
    fields: dict[str, Any] = {}
    if "request" in parts:
        try:
            fields = json.loads(parts["request"])
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise HttpProblem(400, f"the 'request' part is not JSON: {exc}") from None
        if not isinstance(fields, dict):
            raise InvalidRequest("the 'request' part must be a JSON object")
    spectrogram = _flag(parts.get("spectrogram", b"").decode("utf-8", "replace"), "spectrogram")
    return parts["audio"], fields, spectrogram
