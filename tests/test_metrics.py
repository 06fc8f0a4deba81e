"""/metrics text from prometheus_client: the public names, one registry per app."""

from __future__ import annotations

import prometheus_client

from protocols.http.metrics import Metrics
from tests.test_http import parse_metrics


def test_metrics_render_the_public_names_per_app() -> None:
    a, b = Metrics(), Metrics()
    a.request("/run_inference/", 200)
    a.request("/run_inference/", 200)
    a.request("/v1/render", 422)
    a.rejected_full += 1
    a.error("WorkerDied")
    a.generation(0.3)
    a.generation(7.0)
    m = parse_metrics(a.render(queue_depth=2, busy=1, queue_limit=4))
    assert m[("riff_http_requests_total", '{route="/run_inference/",status="200"}')] == 2
    assert m[("riff_http_requests_total", '{route="/v1/render",status="422"}')] == 1
    assert m[("riff_http_rejected_queue_full_total", "")] == 1 == a.rejected_full
    assert m[("riff_generation_errors_total", '{kind="WorkerDied"}')] == 1
    assert (m[("riff_queue_depth", "")], m[("riff_generation_busy", "")],
            m[("riff_queue_limit", "")]) == (2, 1, 4)
    assert m[("riff_generation_seconds_bucket", '{le="0.5"}')] == 1
    assert m[("riff_generation_seconds_bucket", '{le="+Inf"}')] == 2
    assert m[("riff_generation_seconds_count", "")] == 2
    assert abs(m[("riff_generation_seconds_sum", "")] - 7.3) < 1e-9
    assert a.generation_count == 2 and abs(a.generation_sum - 7.3) < 1e-9
    # The second app counts apart, and nothing went into the process-wide registry.
    other = parse_metrics(b.render(queue_depth=0, busy=0, queue_limit=4))
    assert ("riff_http_requests_total", '{route="/run_inference/",status="200"}') not in other
    assert other[("riff_http_rejected_queue_full_total", "")] == 0
    assert prometheus_client.REGISTRY.get_sample_value("riff_queue_depth") is None
