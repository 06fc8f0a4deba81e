"""Counters of the HTTP server, rendered in Prometheus' text exposition format (0.0.4).

All updates happen on the server's asyncio loop thread (request handlers and the queue's
completion callbacks), so plain integers suffice; no lock is needed.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

#: Upper bounds (seconds) of the generation-time histogram buckets.
BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0)


@dataclasses.dataclass
class Metrics:
    """Request, error, queue and generation-time counters of one server."""

    requests: Counter[tuple[str, int]] = dataclasses.field(default_factory=Counter)
    rejected_full: int = 0
    errors: Counter[str] = dataclasses.field(default_factory=Counter)
    generation_count: int = 0
    generation_sum: float = 0.0
    generation_buckets: list[int] = dataclasses.field(
        default_factory=lambda: [0] * len(BUCKETS)
    )

    def request(self, route: str, status: int) -> None:
        """Count one answered request. Thread: the event loop."""
        self.requests[(route, status)] += 1

    def error(self, kind: str) -> None:
        """Count one failed generation by error class name. Thread: the event loop."""
        self.errors[kind] += 1

    def generation(self, seconds: float) -> None:
        """Record one finished generation's duration. Thread: the event loop."""
        self.generation_count += 1
        self.generation_sum += seconds
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                self.generation_buckets[i] += 1

    def render(self, *, queue_depth: int, busy: int, queue_limit: int) -> str:
        """The metrics as Prometheus text."""
        out: list[str] = []

        def head(name: str, kind: str, text: str) -> None:
            out.append(f"# HELP {name} {text}")
            out.append(f"# TYPE {name} {kind}")

        head("riff_http_requests_total", "counter", "HTTP requests answered, by route and status.")
        for (route, status), n in sorted(self.requests.items()):
            out.append(f'riff_http_requests_total{{route="{_esc(route)}",status="{status}"}} {n}')
        head("riff_http_rejected_queue_full_total", "counter",
             "Requests answered 503 because the generation queue was full.")
        out.append(f"riff_http_rejected_queue_full_total {self.rejected_full}")
        head("riff_generation_errors_total", "counter", "Failed generations, by error class.")
        for kind, n in sorted(self.errors.items()):
            out.append(f'riff_generation_errors_total{{kind="{_esc(kind)}"}} {n}')
        head("riff_queue_depth", "gauge", "Generation requests waiting in the queue.")
        out.append(f"riff_queue_depth {queue_depth}")
        head("riff_queue_limit", "gauge", "Most generation requests that may wait.")
        out.append(f"riff_queue_limit {queue_limit}")
        head("riff_generation_busy", "gauge", "Generations running now (0 or 1).")
        out.append(f"riff_generation_busy {busy}")
        head("riff_generation_seconds", "histogram", "Time spent generating, per request.")
        for bound, n in zip(BUCKETS, self.generation_buckets, strict=True):
            out.append(f'riff_generation_seconds_bucket{{le="{bound:g}"}} {n}')
        out.append(f'riff_generation_seconds_bucket{{le="+Inf"}} {self.generation_count}')
        out.append(f"riff_generation_seconds_sum {self.generation_sum:.6f}")
        out.append(f"riff_generation_seconds_count {self.generation_count}")
        return "\n".join(out) + "\n"


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
