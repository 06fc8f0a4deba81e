"""The CUDA fast path's bookkeeping, on the CPU: UNet calls through captured "graphs" (the
rerun backend: a replay runs the recorded call on the same static buffers, as a CUDA graph
does) give the eager call's output, one capture per shape, bounded, never aliased, with an
eager fallback when capture fails; a whole generation through them equals the plain one."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from engine.dsp.spectrogram import save_image
from engine.model.pipeline import RiffusionGenerator
from engine.model.request import InferenceRequest, PromptInput
from engine.model.unet_graphs import RerunBackend, UNetGraphs
from tests.test_pipeline import _seed_image, one_thread  # noqa: F401 - the autouse fixture


@pytest.fixture(scope="module")
def gen(tmp_path_factory: pytest.TempPathFactory) -> RiffusionGenerator:
    folder = tmp_path_factory.mktemp("seeds")
    save_image(_seed_image(), folder / "beat.png")
    return RiffusionGenerator.load("tiny", device="cpu", seed_images=[folder])


def _inputs(gen: RiffusionGenerator, batch: int, width: int = 8,
            seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    unet = gen.parts.unet
    sample = torch.randn(batch, unet.config.in_channels, 16, width, generator=g)
    context = torch.randn(batch, 77, unet.config.cross_attention_dim, generator=g)
    return sample, torch.tensor(500), context


def _eager(gen: RiffusionGenerator) -> Callable[..., torch.Tensor]:
    def call(sample: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out: torch.Tensor = gen.parts.unet(sample, t, encoder_hidden_states=context).sample
        return out
    return call


def test_replays_equal_eager_and_outputs_are_copies(gen: RiffusionGenerator) -> None:
    backend = RerunBackend()
    graphs = UNetGraphs(gen.parts.unet, backend)
    eager = _eager(gen)
    first_in, second_in = _inputs(gen, 2, seed=1), _inputs(gen, 2, seed=2)
    with torch.no_grad():
        first = graphs(*first_in)
        kept = first.clone()
        second = graphs(*second_in)
    assert backend.captures == 1 and graphs.replays == 2 and graphs.eager_calls == 0
    assert torch.equal(first, eager(*first_in)) and torch.equal(second, eager(*second_in))
    # the second replay overwrote the static output, not what the first call returned
    assert torch.equal(first, kept) and not torch.allclose(first, second)


def test_one_capture_per_shape_and_a_bounded_number_of_shapes(gen: RiffusionGenerator) -> None:
    backend = RerunBackend()
    graphs = UNetGraphs(gen.parts.unet, backend, max_graphs=2)
    with torch.no_grad():
        for _ in range(2):
            graphs(*_inputs(gen, 1))
            graphs(*_inputs(gen, 2))
        assert backend.captures == 2 and graphs.shapes == 2
        graphs(*_inputs(gen, 2, width=16))  # a third shape evicts the least recent (batch 1)
        assert graphs.shapes == 2 and backend.captures == 3
        graphs(*_inputs(gen, 2))  # still kept: no capture
        assert backend.captures == 3
        graphs(*_inputs(gen, 1))  # evicted: captured again
        assert backend.captures == 4
    with pytest.raises(ValueError, match="max_graphs"):
        UNetGraphs(gen.parts.unet, backend, max_graphs=0)


def test_extra_key_separates_graphs(gen: RiffusionGenerator) -> None:
    mode = {"circular": False}
    graphs = UNetGraphs(gen.parts.unet, RerunBackend(), extra_key=lambda: mode["circular"])
    sample, t, context = _inputs(gen, 2)
    plain = graphs.key(sample, t, context)
    mode["circular"] = True
    assert graphs.key(sample, t, context) != plain
    assert graphs.key(sample[:1], t, context[:1]) != graphs.key(sample, t, context)
    assert graphs.key(sample.half(), t, context) != graphs.key(sample, t, context)


class _BrokenBackend:
    def __init__(self) -> None:
        self.attempts = 0

    def capture(self, run: Callable[[], torch.Tensor]) -> tuple[Callable[[], None],
                                                                 torch.Tensor]:
        self.attempts += 1
        raise RuntimeError("operation not permitted when stream is capturing")


def test_a_failed_capture_runs_eager_and_is_not_retried(
        gen: RiffusionGenerator, caplog: pytest.LogCaptureFixture) -> None:
    backend = _BrokenBackend()
    graphs = UNetGraphs(gen.parts.unet, backend)
    inputs = _inputs(gen, 2)
    with caplog.at_level(logging.WARNING, "engine.model.unet_graphs"), torch.no_grad():
        first = graphs(*inputs)
        second = graphs(*inputs)
    assert torch.equal(first, _eager(gen)(*inputs)) and torch.equal(first, second)
    assert backend.attempts == 1 and graphs.eager_calls == 2 and graphs.shapes == 0
    assert sum("capture failed" in r.message for r in caplog.records) == 1


def _request(**changes: object) -> InferenceRequest:
    base = InferenceRequest(start=PromptInput("jazzy rapping", seed=42),
                            end=PromptInput("church organ", seed=43), alpha=0.4,
                            num_inference_steps=4, seed_image_id="beat")
    return base.replace(**changes)


@pytest.mark.parametrize("changes", [{}, {"seamless": True}, {"guidance": 1.0}],
                         ids=["img2img", "seamless", "no-cfg"])
def test_generation_through_graphs_equals_the_plain_one(
        gen: RiffusionGenerator, changes: dict[str, object]) -> None:
    if "guidance" in changes:
        request = _request(start=PromptInput("jazzy rapping", seed=42, guidance=1.0),
                           end=PromptInput("church organ", seed=43, guidance=1.0))
    else:
        request = _request(**changes)
    assert gen.graphs is None  # the fast path is CUDA only
    plain = gen.generate(request)
    fast = RiffusionGenerator(gen.parts, gen.seed_images)
    backend = RerunBackend()
    fast.graphs = UNetGraphs(gen.parts.unet, backend, extra_key=lambda: fast._seamless.enabled)
    through = fast.generate(request)
    assert backend.captures == 1 and fast.graphs.replays == fast.unet_calls > 0
    assert torch.equal(plain.latents, through.latents)
    assert plain.image.tobytes() == through.image.tobytes()
    batched = fast.generate_alphas(request, [0.0, 0.5, 1.0])  # a batch of 3 (6 with CFG)
    assert backend.captures == 2
    for a, b in zip(batched, gen.generate_alphas(request, [0.0, 0.5, 1.0]), strict=True):
        assert torch.equal(a.latents, b.latents)


def test_fast_path_off_on_cpu_whatever_is_asked(gen: RiffusionGenerator, tmp_path: Path) -> None:
    assert RiffusionGenerator(gen.parts, gen.seed_images, fast_path=True).graphs is None
    assert RiffusionGenerator(gen.parts, gen.seed_images, fast_path=False).graphs is None


def test_warm_up_captures_the_shapes_a_clip_then_uses(gen: RiffusionGenerator) -> None:
    request = _request(width=64, seamless=True)
    assert gen.warm_up([request]) == 0.0  # nothing to warm without the fast path
    warm = RiffusionGenerator(gen.parts, gen.seed_images)
    backend = RerunBackend()
    warm.graphs = UNetGraphs(gen.parts.unet, backend, extra_key=lambda: warm._seamless.enabled)
    assert warm.warm_up([request]) > 0 and backend.captures == 1
    warm.generate(request.replace(alpha=0.7))
    assert backend.captures == 1  # the real clip replayed the warmed graph
    warm.generate(request.replace(seamless=False))
    assert backend.captures == 2  # zero padding is another graph
