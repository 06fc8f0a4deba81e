"""--quality draft|live|studio: steps, scheduler and phase method in one word."""

from __future__ import annotations

import pytest

from engine.errors import InvalidRequest
from engine.live.planner import JamPlanner
from engine.live.quality import QUALITY_PRESETS, quality_preset
from engine.live.state import EngineState
from engine.model.loading import scheduler_name
from protocols.cli.main import build_parser
from protocols.cli.run import _options


def _opts(*argv: str) -> tuple[dict, dict]:
    args = build_parser().parse_args(["run", "--model", "tiny", *argv])
    return _options(args)


def test_every_preset_names_a_real_scheduler_and_phase_method() -> None:
    for preset in QUALITY_PRESETS.values():
        if preset.scheduler is not None:
            assert scheduler_name(preset.scheduler) == preset.scheduler
        assert preset.phase_method in ("fast", "quality", "riffusion")
        assert 1 <= preset.steps <= 150
    steps = [QUALITY_PRESETS[n].steps for n in ("draft", "live", "studio")]
    assert steps == sorted(steps) and len(set(steps)) == 3


def test_a_preset_sets_steps_scheduler_and_phase() -> None:
    params, opts = _opts("--quality", "draft")
    assert params["steps"] == 10 and opts["scheduler"] == "dpmpp"
    assert opts["phase_method"] == "fast"
    params, opts = _opts("--quality", "studio")
    assert params["steps"] == 50 and opts["scheduler"] is None
    assert opts["phase_method"] == "quality"
    params, opts = _opts()
    assert "steps" not in params and opts["scheduler"] is None and opts["phase_method"] == "fast"


def test_explicit_flags_win_over_the_preset() -> None:
    params, opts = _opts("--quality", "draft", "--steps", "30", "--phase-method", "quality")
    assert params["steps"] == 30 and opts["phase_method"] == "quality"
    assert opts["scheduler"] == "dpmpp"


def test_the_planners_requests_carry_the_scheduler_so_takes_rerender_alike() -> None:
    request, _ = JamPlanner(scheduler="dpmpp").plan(EngineState().snapshot(), None)
    assert request.scheduler == "dpmpp"
    assert JamPlanner().plan(EngineState().snapshot(), None)[0].scheduler is None


def test_an_unknown_quality_is_refused_with_the_choices() -> None:
    with pytest.raises(InvalidRequest, match="draft, live, studio"):
        quality_preset("ultra")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--quality", "ultra"])
