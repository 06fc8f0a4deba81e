"""JSON wire format of requests and generation jobs, shared by the HTTP server, its client
and the control log, so the two ends of a connection cannot disagree.

Validation stays in the engine's dataclasses; this module only maps JSON to them and makes
sure every malformed input becomes :class:`~engine.errors.InvalidRequest` naming the field
(never a TypeError from a missing constructor argument).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from engine.errors import InvalidRequest
from engine.live.jobs import ClipSpec, GenerationJob
from engine.model.request import InferenceRequest

_JOB_FIELDS = ("job_id", "request", "spec", "start_bar")


def parse_request(data: Any) -> InferenceRequest:
    """An InferenceRequest from Riffusion's InferenceInput JSON (plus engine fields)."""
    return InferenceRequest.from_dict(data)


def spec_to_json(spec: ClipSpec) -> dict[str, Any]:
    """A ClipSpec as JSON data."""
    return dataclasses.asdict(spec)


def parse_spec(data: Any) -> ClipSpec:
    """A ClipSpec from JSON; every field is required."""
    if not isinstance(data, dict):
        raise InvalidRequest("spec must be a JSON object")
    fields = {f.name for f in dataclasses.fields(ClipSpec)}
    if set(data) != fields:
        missing, extra = sorted(fields - set(data)), sorted(set(data) - fields)
        raise InvalidRequest(
            "spec " + "; ".join(
                part for part in (missing and f"needs {', '.join(missing)}",
                                  extra and f"has unknown field(s) {', '.join(extra)}") if part
            )
        )
    return ClipSpec(**data)


def job_to_json(job: GenerationJob) -> dict[str, Any]:
    """A GenerationJob as JSON data (``created`` is local to the sender and not sent)."""
    return {"job_id": job.job_id, "request": job.request.to_dict(),
            "spec": spec_to_json(job.spec), "start_bar": job.start_bar}


def parse_job(data: Any, created: float = 0.0) -> GenerationJob:
    """A GenerationJob from :func:`job_to_json`'s format."""
    if not isinstance(data, dict):
        raise InvalidRequest("clip job must be a JSON object")
    unknown = sorted(str(k) for k in data if k not in _JOB_FIELDS)
    if unknown:
        raise InvalidRequest(f"clip job has unknown field(s): {', '.join(unknown)}")
    for name in ("job_id", "request", "spec"):
        if name not in data:
            raise InvalidRequest(f"clip job needs '{name}'")
    return GenerationJob(job_id=data["job_id"], request=parse_request(data["request"]),
                         spec=parse_spec(data["spec"]), start_bar=data.get("start_bar", 0),
                         created=created)
