"""The fast path on CUDA: UNet calls replayed from CUDA graphs, and channels-last weights.

Why: one UNet evaluation of the SD-1.5-shaped model at batch 2 (classifier-free guidance)
takes about 45 ms eager on an H200, and about 12 ms when the same evaluation is captured in
a CUDA graph and replayed: eager, the GPU mostly waits for Python to launch about a thousand
small kernels one by one. A replay launches them all at once. The kernels, their inputs and
their order are the same, so the output is the same as the eager call's (the random draws
happen outside the UNet and do not change); only the launch overhead goes.

How: a graph is captured once per *shape key* (the sample's, timestep's and text context's
shapes and dtypes, the device, and anything else that changes what the UNet computes, such
as circular padding being on). Each call copies its inputs into that graph's static buffers,
replays it and returns a copy of its static output, which the next replay overwrites. All
graphs share one memory pool, and at most ``max_graphs`` shapes are kept (least recently used
first out), so a performer who tries many clip lengths does not fill the GPU. A shape whose
capture fails runs eager from then on, with one warning in the log: the fast path can make
generation slower to start, never wrong or broken.

The backend is injected: :class:`CudaGraphBackend` on CUDA; :class:`RerunBackend` replays by
running the recorded call again on the same static buffers, which is what a graph does,
minus the speed, so the bookkeeping here is tested on the CPU.

Thread: the generator's thread only, under the generator's lock (as the model itself).
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

log = logging.getLogger(__name__)

#: Eager runs on a side stream before a capture (CUDA's libraries pick their kernels then).
WARMUP_RUNS = 3
#: Shapes kept captured at once.
MAX_GRAPHS = 8


class GraphBackend(Protocol):
    """Records a call on static buffers and replays it."""

    def capture(self, run: Callable[[], torch.Tensor]) -> tuple[Callable[[], None],
                                                                 torch.Tensor]:
        """Record ``run`` (which reads only static buffers); returns the replay function
        and the static tensor each replay writes its output into."""
        ...


class CudaGraphBackend:
    """Captures with ``torch.cuda.graph``; all graphs share one memory pool."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.pool = torch.cuda.graph_pool_handle()

    def capture(self, run: Callable[[], torch.Tensor]) -> tuple[Callable[[], None],
                                                                 torch.Tensor]:
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                run()
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = run()
        return graph.replay, out


class RerunBackend:
    """A graph's semantics without CUDA: each replay runs the recorded call again on the
    same static buffers and writes into the same output tensor."""

    def __init__(self) -> None:
        self.captures = 0

    def capture(self, run: Callable[[], torch.Tensor]) -> tuple[Callable[[], None],
                                                                 torch.Tensor]:
        self.captures += 1
        out = run()

        def replay() -> None:
            out.copy_(run())

        return replay, out


@dataclass
class _Graph:
    """One captured shape: its static inputs, its static output and how to replay it."""

    sample: torch.Tensor
    timestep: torch.Tensor
    context: torch.Tensor
    out: torch.Tensor
    replay: Callable[[], None]


class UNetGraphs:
    """Calls ``unet(sample, timestep, encoder_hidden_states=context).sample``, replayed from
    one captured graph per shape key (see the module docstring)."""

    def __init__(self, unet: nn.Module, backend: GraphBackend, *,
                 max_graphs: int = MAX_GRAPHS,
                 extra_key: Callable[[], Hashable] = lambda: None) -> None:
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be at least 1, got {max_graphs}")
        self.unet = unet
        self.backend = backend
        self.max_graphs = max_graphs
        self.extra_key = extra_key
        self._graphs: collections.OrderedDict[Hashable, _Graph] = collections.OrderedDict()
        self._failed: set[Hashable] = set()
        self.replays = 0
        self.eager_calls = 0

    def __call__(self, sample: torch.Tensor, timestep: torch.Tensor | float,
                 context: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(timestep, device=sample.device)
        key = self.key(sample, t, context)
        if key in self._failed:
            return self._eager(sample, t, context)
        graph = self._graphs.get(key)
        if graph is None:
            graph = self._capture(key, sample, t, context)
            if graph is None:
                return self._eager(sample, t, context)
        else:
            self._graphs.move_to_end(key)
        graph.sample.copy_(sample)
        graph.timestep.copy_(t)
        graph.context.copy_(context)
        graph.replay()
        self.replays += 1
        return graph.out.clone()

    def key(self, sample: torch.Tensor, timestep: torch.Tensor,
            context: torch.Tensor) -> Hashable:
        """What a captured graph is valid for: shapes, dtypes, device and ``extra_key()``."""
        return (tuple(sample.shape), sample.dtype, tuple(timestep.shape), timestep.dtype,
                tuple(context.shape), context.dtype, str(sample.device), self.extra_key())

    @property
    def shapes(self) -> int:
        """Shapes captured now."""
        return len(self._graphs)

    def _eager(self, sample: torch.Tensor, t: torch.Tensor,
               context: torch.Tensor) -> torch.Tensor:
        self.eager_calls += 1
        out: torch.Tensor = self.unet(sample, t, encoder_hidden_states=context).sample
        return out

    def _capture(self, key: Hashable, sample: torch.Tensor, t: torch.Tensor,
                 context: torch.Tensor) -> _Graph | None:
        static_sample, static_t, static_context = sample.clone(), t.clone(), context.clone()

        def run() -> torch.Tensor:
            out: torch.Tensor = self.unet(static_sample, static_t,
                                          encoder_hidden_states=static_context).sample
            return out

        try:
            replay, out = self.backend.capture(run)
        except Exception as exc:  # any capture failure means: this shape runs eager
            self._failed.add(key)
            log.warning("UNet graph capture failed for shape %s (%s: %s); that shape runs "
                        "eager", tuple(sample.shape), type(exc).__name__, exc)
            return None
        graph = _Graph(static_sample, static_t, static_context, out, replay)
        self._graphs[key] = graph
        while len(self._graphs) > self.max_graphs:
            self._graphs.popitem(last=False)
        log.info("UNet graph captured for shape %s (%d kept)", tuple(sample.shape),
                 len(self._graphs))
        return graph


def use_channels_last(*modules: nn.Module) -> None:
    """Channels-last memory format for the convolution-heavy modules (UNet, VAE): cuDNN's
    fastest fp16 convolutions want NHWC. CUDA only; on the CPU it only changes speed."""
    for module in modules:
        module.to(memory_format=torch.channels_last)


def cuda_fast_path(unet: nn.Module, device: torch.device, extra_key: Callable[[], Any],
                   vae: nn.Module | None = None) -> UNetGraphs | None:
    """The fast path for a model on ``device``: channels-last and UNet graphs on CUDA,
    nothing elsewhere (None: call the UNet directly)."""
    if device.type != "cuda":
        return None
    use_channels_last(unet, *([vae] if vae is not None else []))
    return UNetGraphs(unet, CudaGraphBackend(device), extra_key=extra_key)
