"""Validation of Riffusion's InferenceInput JSON."""

from __future__ import annotations

import pytest

from engine.errors import InvalidRequest
from engine.model.request import InferenceRequest, PromptInput

WEB_APP_REQUEST = {
    "alpha": 0.25,
    "num_inference_steps": 50,
    "seed_image_id": "og_beat",
    "mask_image_id": None,
    "start": {"prompt": "jazzy rapping", "seed": 42, "denoising": 0.75, "guidance": 7.0},
    "end": {"prompt": "jazzy rapping", "seed": 43, "denoising": 0.75, "guidance": 7.0},
}


def test_web_app_request_is_accepted_as_is() -> None:
    req = InferenceRequest.from_dict(WEB_APP_REQUEST)
    assert req.alpha == 0.25
    assert req.start == PromptInput("jazzy rapping", 42)
    assert req.end_or_start.seed == 43
    assert InferenceRequest.from_dict(req.to_dict()) == req


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"alpha": 1.5}, "alpha"),
        ({"alpha": "0.5"}, "alpha must be a number"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"seed_image_id": "../x"}, "plain name"),
        ({"seed_image_id": "/etc/passwd"}, "plain name"),
        ({"mask_image_id": ".."}, "plain name"),
        ({"seed_image_id": "og_beat\n"}, "plain name"),
        ({"width": 500}, "multiple of 8"),
        ({"denoise": 0.5}, "unknown field"),
        ({"start": {"prompt": "x", "seed": -1}}, "seed"),
        ({"start": {"prompt": 3}}, "prompt must be a string"),
        ({"end": {"prompt": "x", "denoising": float("nan")}}, "denoising"),
        ({"start": None}, "start must be a JSON object"),
        ({"start": {"seed": 1}}, "start needs 'prompt'"),
        ({"end": {}}, "end needs 'prompt'"),
    ],
)
def test_bad_fields_are_rejected_with_their_name(change: dict, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        InferenceRequest.from_dict({**WEB_APP_REQUEST, **change})
