"""Counters of the HTTP server for ``GET /metrics``, exposed with ``prometheus_client``.

Each app has its own :class:`prometheus_client.CollectorRegistry` (never the process-wide
default one), so two apps in one process (the tests start several) count apart, and the text
exposition (format 0.0.4) is the library's, not ours. Metric names are the server's public
interface (dashboards depend on them): ``riff_http_requests_total{route,status}``,
``riff_http_rejected_queue_full_total``, ``riff_generation_errors_total{kind}``,
``riff_queue_depth``, ``riff_queue_limit``, ``riff_generation_busy`` and the
``riff_generation_seconds`` histogram.

Thread: every update happens on the server's asyncio loop thread (request handlers and the
queue's completion callbacks); :meth:`Metrics.render` runs there too. prometheus_client's
metrics lock internally, so a scrape from another thread would also be safe.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

#: Upper bounds (seconds) of the generation-time histogram buckets.
BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    """Request, error, queue and generation-time metrics of one server (its own registry)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._requests = Counter("riff_http_requests", "HTTP requests answered, by route and "
                                 "status.", ("route", "status"), registry=r)
        self._rejected = Counter("riff_http_rejected_queue_full", "Requests answered 503 "
                                 "because the generation queue was full.", registry=r)
        self._errors = Counter("riff_generation_errors", "Failed generations, by error class.",
                               ("kind",), registry=r)
        self._depth = Gauge("riff_queue_depth", "Generation requests waiting in the queue.",
                            registry=r)
        self._limit = Gauge("riff_queue_limit", "Most generation requests that may wait.",
                            registry=r)
        self._busy = Gauge("riff_generation_busy", "Generations running now (0 or 1).",
                           registry=r)
        self._seconds = Histogram("riff_generation_seconds", "Time spent generating, per "
                                  "request.", buckets=BUCKETS, registry=r)
        self.generation_count = 0
        self.generation_sum = 0.0

    def request(self, route: str, status: int) -> None:
        """Count one answered request. Thread: the event loop."""
        self._requests.labels(route=route, status=str(status)).inc()

    @property
    def rejected_full(self) -> int:
        """Requests refused with 503 (queue full); ``+= 1`` counts one more."""
        return int(self._rejected._value.get())

    @rejected_full.setter
    def rejected_full(self, value: int) -> None:
        # Counters only go up: ``metrics.rejected_full += 1`` increments by the difference.
        more = value - self.rejected_full
        if more < 0:
            raise ValueError("a counter cannot go down")
        self._rejected.inc(more)

    def error(self, kind: str) -> None:
        """Count one failed generation by error class name. Thread: the event loop."""
        self._errors.labels(kind=kind).inc()

    def generation(self, seconds: float) -> None:
        """Record one finished generation's duration. Thread: the event loop."""
        self._seconds.observe(seconds)
        self.generation_count += 1  # kept for the Retry-After estimate (mean time)
        self.generation_sum += seconds

    def render(self, *, queue_depth: int, busy: int, queue_limit: int) -> str:
        """The metrics as Prometheus text (the queue gauges set to the values given)."""
        self._depth.set(queue_depth)
        self._busy.set(busy)
        self._limit.set(queue_limit)
        return generate_latest(self.registry).decode("utf-8")
