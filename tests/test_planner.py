"""The jam planner: seed walks, prompt transitions, manual alpha, parameters from the state."""

from __future__ import annotations

import pytest

from engine.errors import InvalidRequest
from engine.live.planner import JamPlanner, JamPosition
from engine.live.state import EngineState
from engine.model.request import MAX_SEED, InferenceRequest


def run(planner: JamPlanner, state: EngineState, n: int, prev: JamPosition | None = None
        ) -> tuple[list[InferenceRequest], JamPosition | None]:
    out = []
    for _ in range(n):
        request, prev = planner.plan(state.snapshot(), prev)
        out.append(request)
    return out, prev


def summary(r: InferenceRequest) -> tuple[str, int, str, int, float]:
    end = r.end_or_start
    return (r.start.prompt, r.start.seed, end.prompt, end.seed, r.alpha)


def test_same_prompt_walks_seeds_like_the_riffusion_app() -> None:
    state = EngineState({"prompt": "jazzy rapping", "seed": 42})
    requests, _ = run(JamPlanner(), state, 6)
    assert [summary(r) for r in requests] == [
        ("jazzy rapping", 42, "jazzy rapping", 43, 0.0),
        ("jazzy rapping", 42, "jazzy rapping", 43, 0.25),
        ("jazzy rapping", 42, "jazzy rapping", 43, 0.5),
        ("jazzy rapping", 42, "jazzy rapping", 43, 0.75),
        ("jazzy rapping", 42, "jazzy rapping", 43, 1.0),
        ("jazzy rapping", 43, "jazzy rapping", 44, 0.25),
    ]
    # The request is what the web app sends for the second clip, plus the live engine's
    # seamless loops (on by default, /riff/seamless 0 for Riffusion-exact clips).
    assert requests[1].seamless
    assert requests[1].to_dict() | {"width": None, "scheduler": None, "seamless": False} == {
        "alpha": 0.25, "num_inference_steps": 50, "seed_image_id": "og_beat",
        "mask_image_id": None, "width": None, "scheduler": None, "seamless": False,
        "start": {"prompt": "jazzy rapping", "seed": 42, "negative_prompt": None,
                  "denoising": 0.75, "guidance": 7.0},
        "end": {"prompt": "jazzy rapping", "seed": 43, "negative_prompt": None,
                "denoising": 0.75, "guidance": 7.0},
    }


@pytest.mark.parametrize(("clips_before", "origin_seed"), [(2, 42), (4, 43)])
def test_new_prompt_transitions_with_the_same_seed(clips_before: int, origin_seed: int) -> None:
    state = EngineState({"prompt": "techno", "seed": 42, "transition_clips": 3})
    planner = JamPlanner()
    _, pos = run(planner, state, clips_before)  # alpha 0.25 or 0.75 into the walk
    state.set("prompt", "church bells")
    requests, pos = run(planner, state, 4, pos)
    s = origin_seed
    assert [summary(r) for r in requests] == [
        ("techno", s, "church bells", s, pytest.approx(1 / 3)),
        ("techno", s, "church bells", s, pytest.approx(2 / 3)),
        ("techno", s, "church bells", s, 1.0),
        ("church bells", s, "church bells", s + 1, 0.25),
    ]


def test_prompt_changed_again_mid_transition_retargets_from_the_nearest_end() -> None:
    state = EngineState({"prompt": "a", "seed": 7, "transition_clips": 4})
    planner = JamPlanner()
    _, pos = run(planner, state, 1)
    state.set("prompt", "b")
    _, pos = run(planner, state, 3, pos)  # a -> b at 0.75: nearest is b
    state.set("prompt", "c")
    requests, _ = run(planner, state, 1, pos)
    assert summary(requests[0]) == ("b", 7, "c", 7, 0.25)


def test_performer_seed_walks_to_the_new_seed() -> None:
    state = EngineState({"prompt": "p", "seed": 10})
    planner = JamPlanner(walk_clips=2)
    _, pos = run(planner, state, 1)
    state.set("seed", 500)
    requests, _ = run(planner, state, 3, pos)
    assert [summary(r) for r in requests] == [
        ("p", 10, "p", 500, 0.5), ("p", 10, "p", 500, 1.0), ("p", 500, "p", 501, 0.5),
    ]


def test_manual_mode_renders_the_latest_knob_value_and_back_to_auto() -> None:
    state = EngineState({"alpha_auto": False, "prompt_a": "x", "prompt_b": "y", "seed": 1,
                         "seed_b": 9, "alpha": 0.3, "prompt": "y"})
    planner = JamPlanner()
    requests, pos = run(planner, state, 2)
    assert [summary(r) for r in requests] == [("x", 1, "y", 9, 0.3)] * 2
    state.set("alpha", 0.8)
    requests, pos = run(planner, state, 1, pos)
    assert summary(requests[0]) == ("x", 1, "y", 9, 0.8)
    # Auto again: the jam goes on from the end the knob was nearest to (y, seed 9).
    state.update({"alpha_auto": True, "seed": 9})
    requests, _ = run(planner, state, 2, pos)
    assert [summary(r) for r in requests] == [("y", 9, "y", 10, 0.25), ("y", 9, "y", 10, 0.5)]


def test_parameters_come_from_the_state() -> None:
    state = EngineState({"negative": "vocals", "steps": 20, "denoising": 0.6, "guidance": 9.0,
                         "seed_image": "agile", "mask": "mask_beat", "seed": MAX_SEED})
    request, _ = JamPlanner().plan(state.snapshot(), None)
    assert request.start.negative_prompt == "vocals" and request.num_inference_steps == 20
    assert request.start.denoising == 0.6 and request.end_or_start.guidance == 9.0
    assert request.seed_image_id == "agile" and request.mask_image_id == "mask_beat"
    assert request.end_or_start.seed == 0  # the seed walk wraps at the largest seed
    state.set("mask", "")
    request, _ = JamPlanner().plan(state.snapshot(), None)
    assert request.mask_image_id is None and request.start.negative_prompt == "vocals"


def test_relevance_depends_on_the_mode() -> None:
    auto = EngineState().snapshot()
    manual = EngineState({"alpha_auto": False}).snapshot()
    assert JamPlanner.relevant("prompt", auto) and not JamPlanner.relevant("prompt", manual)
    assert JamPlanner.relevant("alpha", manual) and not JamPlanner.relevant("alpha", auto)
    assert not JamPlanner.relevant("tempo", auto) and not JamPlanner.relevant("bars", manual)
    with pytest.raises(InvalidRequest):
        JamPlanner(walk_clips=0)
