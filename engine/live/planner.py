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

Bars and meters are music (:meth:`JamPlanner.fit`, with a seed image library): a clip of N
bars is generated at the width that holds N bars at its seed image's tempo
(:meth:`~engine.model.seed_images.SeedLoop.clip_width`; the pipeline widens the seed
circularly), so ``bars 16`` is 16 bars of new music and ``bars 1`` a one-bar image. The seed
image must be in the clip's meter: the performer's ``seed_image`` when it is, else the
meter's own seed (:data:`~engine.model.seed_images.METER_SEEDS`: 3 -> ``waltz_90``,
6 -> ``compound_6_8``, 4 -> ``og_beat``; else the first library seed in that meter).
:meth:`JamPlanner.check` refuses a meter no seed image has, a seed image in another meter
than the current one, and a clip wider than the maximum. Without a library (tests, or ids
only a remote server knows) requests keep the seed's width and the conform fits its bars.

Thread: the control plane (asyncio loop); everything here is synchronous and cheap.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from typing import Protocol

from engine.errors import InvalidRequest, RiffError
from engine.live.state import Value
from engine.model.request import MAX_SEED, InferenceRequest, PromptInput
from engine.model.seed_images import METER_SEEDS, SeedLoop

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


class SeedLoops(Protocol):
    """Seed images' loops by id (:class:`~engine.model.seed_images.SeedImageLibrary`)."""

    def loop(self, image_id: str) -> SeedLoop:
        """Loop metadata and width of ``image_id``; raises RiffError when unknown."""
        ...

    def ids(self) -> list[str]:
        """Every id in the library (seed images and masks)."""
        ...


def _next_seed(seed: int) -> int:
    return 0 if seed >= MAX_SEED else seed + 1


class JamPlanner:
    """Plans the infinite jam (see the module docstring); ``walk_clips`` clips per seed step."""

    def __init__(self, walk_clips: int = 4, loops: SeedLoops | None = None, *,
                 scheduler: str | None = None) -> None:
        if not isinstance(walk_clips, int) or not 1 <= walk_clips <= 64:
            raise InvalidRequest(f"walk_clips must be an integer 1..64, not {walk_clips!r}")
        self.walk_clips = walk_clips
        self.loops = loops
        #: The diffusion scheduler every request names (``None``: the model's own); in the
        #: request, so a take's log re-renders with the same one.
        self.scheduler = scheduler

    def seed_for(self, seed_image: str, meter: int) -> tuple[str, SeedLoop] | None:
        """The seed image a clip in ``meter`` uses, and its loop: ``seed_image`` when it is in
        that meter, else the meter's seed (see the module docstring), else ``seed_image``
        itself (no seed in that meter: its bars fill the clip's bars). None without a
        library or for an id it does not know."""
        if self.loops is None:
            return None
        try:
            own = self.loops.loop(seed_image)
        except RiffError:
            return None
        if own.meta.beats_per_bar == meter:
            return seed_image, own
        default = METER_SEEDS.get(meter)
        others = [i for i in self.loops.ids() if not i.startswith("mask") and i != default]
        for image_id in ([default] if default else []) + others:
            try:
                loop = self.loops.loop(image_id)
            except RiffError:
                continue
            if loop.meta.beats_per_bar == meter:
                return image_id, loop
        return seed_image, own

    def fit(self, request: InferenceRequest, state: Mapping[str, Value], bars: int,
            meter: int) -> InferenceRequest:
        """``request`` for a clip of ``bars`` bars of ``meter``: the seed image for that meter
        (from the state's ``seed_image``) at the width of those bars. The same request when
        it fits already (or without a library). Raises InvalidRequest beyond the maximum
        width."""
        found = self.seed_for(str(state["seed_image"]), meter)
        if found is None:
            return request
        image_id, loop = found
        width = loop.clip_width(bars)
        if (request.seed_image_id, request.width) == (image_id, width):
            return request
        return request.replace(seed_image_id=image_id, width=width)

    def check(self, values: Mapping[str, Value], meter: int,
              changed: Collection[str]) -> str | None:
        """Why ``values`` (the state a change of ``changed`` would make) cannot be played in
        ``meter`` (None: it can): a new meter no seed image has, a new seed image in another
        meter than the current one, or clips wider than the maximum. Thread: the control
        plane, before the change is applied."""
        if self.loops is None:
            return None
        name = str(values["seed_image"])
        try:
            own = self.loops.loop(name)
        except RiffError:
            return None  # an id only a remote server knows: nothing to check here
        found = self.seed_for(name, meter)
        assert found is not None
        image_id, loop = found
        if "meter" in changed and loop.meta.beats_per_bar != meter:
            meters = ", ".join(str(m) for m in self.meters())
            return (f"no seed image has {meter} beats per bar (seed images fit {meters}); "
                    f"a clip is never cut mid-bar")
        if "seed_image" in changed and own.meta.beats_per_bar != meter:
            return (f"seed image {name!r} has {own.meta.beats_per_bar} beats per bar and the "
                    f"meter is {meter}: send /riff/meter {own.meta.beats_per_bar} first")
        try:
            loop.clip_width(int(values["bars"]))
        except InvalidRequest as exc:
            return f"seed image {image_id!r}: {exc}"
        return None

    def meters(self) -> list[int]:
        """The meters (beats per bar) the library's seed images are in."""
        found: set[int] = set()
        for image_id in self.loops.ids() if self.loops is not None else ():
            if image_id.startswith("mask"):
                continue
            try:
                found.add(self.loops.loop(image_id).meta.beats_per_bar)  # type: ignore[union-attr]
            except RiffError:
                continue
        return sorted(found)

    @staticmethod
    def relevant(name: str, state: Mapping[str, Value]) -> bool:
        """Whether a change of parameter ``name`` changes what the next clip renders."""
        params = AUTO_PARAMS if state.get("alpha_auto", True) else MANUAL_PARAMS
        return name in params

    def plan(
        self, state: Mapping[str, Value], prev: JamPosition | None, *,
        bars: int | None = None, meter: int | None = None,
    ) -> tuple[InferenceRequest, JamPosition]:
        """The request for the clip after ``prev`` (``None``: the first clip) and its position,
        fitted to ``bars`` bars of ``meter`` (the state's by default; see :meth:`fit`)."""
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
        request = self.fit(self._request(state, pos, self.scheduler), state,
                           int(state["bars"]) if bars is None else bars,
                           int(state["meter"]) if meter is None else meter)
        return request, pos

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
