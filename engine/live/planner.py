"""The infinite jam: which request the next clip renders, from the state and the jam's position.

The planner is pure: :meth:`JamPlanner.plan` takes a state snapshot and the
:class:`JamPosition` after the previous clip and returns the next request and the position after
it. It keeps no hidden memory, so the scheduler can drop planned clips (latest wins) and plan
again from the position of the last clip that was actually scheduled.

Auto mode (``alpha_auto``), as the riffusion web app does it:

- Same prompt: walk seeds. Clip k of a walk interpolates from ``(prompt, s)`` to
  ``(prompt, s + 1)`` at alpha ``k / walk_clips`` (0.25, 0.5, 0.75, 1.0 for four clips); after
  alpha 1.0 the walk goes on from ``s + 1``. Alpha 1.0 at seed s is the same noise as alpha 0
  at seed s + 1, so the walk is continuous.
- New prompt: move from the current prompt to the new one with the same seed over
  ``transition_clips`` clips (alpha 1/N ... 1.0), then walk seeds again from there.
- A new ``seed`` from the performer: walk from the current seed to that seed over
  ``walk_clips`` clips, then walk on from it.

Manual mode: each clip renders ``(prompt_a, seed)`` -> ``(prompt_b, seed_b)`` at the knob's
latest ``alpha``. Switching back to auto continues from the endpoint nearest to that alpha.

Differences from the riffusion web app (components/ModelInference.tsx, pages/index.tsx):

- The app only starts a transition when the current seed walk rolls over (up to 4 clips) and
  keeps 3 requests buffered ahead, so a new prompt can take about 7 clips to be heard. Here the
  next planned clip starts the transition at once (from the walk endpoint nearest to the
  current alpha, a jump of at most half a walk step) and the scheduler drops stale look-ahead.
- The app bumps the seed by one when it enters a transition; here the transition keeps the
  seed of that nearest endpoint, so nothing jumps further than necessary.
- A prompt changed again mid-transition retargets from the nearest endpoint (the app queues
  prompts one after another).
- The first clip renders the performer's exact seed (alpha 0); the app starts at alpha 0.25.
- ``negative_prompt`` is sent (Riffusion's server ignores it; our pipeline honours it), and
  steps, guidance, denoising, seed image and mask come from the live state.

Thread: the control plane (asyncio loop); everything here is synchronous and cheap.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from engine.errors import InvalidRequest
from engine.live.state import Value
from engine.model.request import MAX_SEED, InferenceRequest, PromptInput

#: Parameters that change what the next clip renders, in each mode (others are transport,
#: planner pacing or the other mode's knobs).
AUTO_PARAMS = frozenset(
    {"prompt", "negative", "alpha_auto", "denoising", "guidance", "steps", "seed",
     "seed_image", "mask", "seamless"}
)
MANUAL_PARAMS = frozenset(
    {"prompt_a", "prompt_b", "negative", "alpha", "alpha_auto", "denoising", "guidance",
     "steps", "seed", "seed_b", "seed_image", "mask", "seamless"}
)


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """One end of an interpolation: a prompt and a seed."""

    prompt: str
    seed: int


@dataclasses.dataclass(frozen=True)
class JamPosition:
    """Where the jam is after a clip: interpolating ``start`` -> ``end``, clip ``step`` of
    ``steps`` (alpha = step / steps), or at ``manual_alpha`` in manual mode. ``seed_seen`` is
    the performer's ``seed`` value when this clip was planned (a change starts a new walk).
    """

    start: Endpoint
    end: Endpoint
    step: int
    steps: int
    seed_seen: int
    manual_alpha: float | None = None

    @property
    def alpha(self) -> float:
        """The interpolation position of this clip."""
        if self.manual_alpha is not None:
            return self.manual_alpha
        return self.step / self.steps

    @property
    def nearest(self) -> Endpoint:
        """The endpoint this clip sounds closest to (where a new walk or transition starts)."""
        return self.end if self.alpha >= 0.5 else self.start


def _next_seed(seed: int) -> int:
    return 0 if seed >= MAX_SEED else seed + 1


class JamPlanner:
    """Plans the infinite jam (see the module docstring); ``walk_clips`` clips per seed step."""

    def __init__(self, walk_clips: int = 4, scheduler: str | None = None) -> None:
        if not isinstance(walk_clips, int) or not 1 <= walk_clips <= 64:
            raise InvalidRequest(f"walk_clips must be an integer 1..64, not {walk_clips!r}")
        self.walk_clips = walk_clips
        #: The diffusion scheduler every request names (``None``: the model's own); in the
        #: request, so a take's log re-renders with the same one.
        self.scheduler = scheduler

    @staticmethod
    def relevant(name: str, state: Mapping[str, Value]) -> bool:
        """Whether a change of parameter ``name`` changes what the next clip renders."""
        params = AUTO_PARAMS if state.get("alpha_auto", True) else MANUAL_PARAMS
        return name in params

    def plan(
        self, state: Mapping[str, Value], prev: JamPosition | None
    ) -> tuple[InferenceRequest, JamPosition]:
        """The request for the clip after ``prev`` (``None``: the first clip) and its position."""
        if not state["alpha_auto"]:
            pos = JamPosition(
                start=Endpoint(str(state["prompt_a"]), int(state["seed"])),
                end=Endpoint(str(state["prompt_b"]), int(state["seed_b"])),
                step=0,
                steps=self.walk_clips,
                seed_seen=int(state["seed"]),
                manual_alpha=float(state["alpha"]),
            )
        else:
            pos = self._auto(state, prev)
        return self._request(state, pos, self.scheduler), pos

    def _auto(self, state: Mapping[str, Value], prev: JamPosition | None) -> JamPosition:
        prompt = str(state["prompt"])
        seed = int(state["seed"])
        if prev is None:
            here = Endpoint(prompt, seed)
            return JamPosition(here, Endpoint(prompt, _next_seed(seed)), 0, self.walk_clips, seed)
        manual_before = prev.manual_alpha is not None
        if prompt != prev.end.prompt or (manual_before and prompt != prev.nearest.prompt):
            origin = prev.nearest
            if origin.prompt != prompt:  # move to the new prompt with the same seed
                steps = int(state["transition_clips"])
                return JamPosition(origin, Endpoint(prompt, origin.seed), 1, steps, seed)
            return self._walk(origin, seed)
        if seed != prev.seed_seen:  # the performer picked a seed: walk there
            origin = prev.nearest
            if origin.seed == seed:
                return self._walk(origin, seed)
            return JamPosition(origin, Endpoint(origin.prompt, seed), 1, self.walk_clips, seed)
        if not manual_before and prev.step < prev.steps:
            return dataclasses.replace(prev, step=prev.step + 1)
        return self._walk(prev.nearest, seed)

    def _walk(self, origin: Endpoint, seed_seen: int) -> JamPosition:
        """First clip of a seed walk from ``origin`` (alpha 1 / walk_clips)."""
        end = Endpoint(origin.prompt, _next_seed(origin.seed))
        return JamPosition(origin, end, 1, self.walk_clips, seed_seen)

    @staticmethod
    def _request(state: Mapping[str, Value], pos: JamPosition,
                 scheduler: str | None = None) -> InferenceRequest:
        negative = str(state["negative"]) or None
        denoising = float(state["denoising"])
        guidance = float(state["guidance"])

        def side(end: Endpoint) -> PromptInput:
            return PromptInput(end.prompt, end.seed, negative, denoising, guidance)

        return InferenceRequest(
            start=side(pos.start),
            end=side(pos.end),
            alpha=pos.alpha,
            num_inference_steps=int(state["steps"]),
            seed_image_id=str(state["seed_image"]),
            mask_image_id=str(state["mask"]) or None,
            seamless=bool(state["seamless"]),
            scheduler=scheduler,
        )
