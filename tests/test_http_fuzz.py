"""Schema-driven fuzzing: bodies drawn from the server's own OpenAPI schema, plus arbitrary JSON.

Whatever arrives, the server answers with a documented status and a JSON body, never a 5xx;
answers to schema-valid bodies that the server accepts are valid InferenceOutputs. The
server under test allows at most 2 steps and 64 px so accepted bodies stay cheap.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.http.app import ServeConfig, create_app
from tests.http_support import GatedBackend, serving, shared_renderer

FUZZ = settings(max_examples=25, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, GatedBackend]]:
    backend = GatedBackend(shared_renderer(), gated=False)
    app = create_app(backend, ServeConfig(max_steps=2, max_width=64))
    with serving(app) as base:
        yield base, backend


@pytest.fixture(scope="module")
def schema(server: tuple[str, GatedBackend]) -> dict[str, Any]:
    return httpx.get(f"{server[0]}/openapi.json").json()


def _resolved(schema: dict[str, Any], name: str) -> dict[str, Any]:
    """The component ``name`` with every $ref inlined (hypothesis-jsonschema needs no refs)."""
    components = schema["components"]["schemas"]

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(components[node["$ref"].rsplit("/", 1)[1]])
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    return inline(components[name])


def from_schema(node: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values valid under a JSON schema, for the subset FastAPI/pydantic emit for our models.

    Supports type (object, integer, number, string, boolean, null), anyOf, properties with
    required, minimum/maximum, multipleOf, maxLength and pattern; fails on anything else so
    an unsupported schema is noticed rather than fuzzed wrongly.
    """
    if "anyOf" in node:
        return st.one_of([from_schema(option) for option in node["anyOf"]])
    kind = node.get("type")
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        lo, hi = node.get("minimum"), node.get("maximum")
        step = node.get("multipleOf", 1)
        ints = st.integers(None if lo is None else -(-lo // step),
                           None if hi is None else hi // step)
        return ints.map(lambda i: i * step)
    if kind == "number":
        return st.floats(node.get("minimum"), node.get("maximum"), allow_nan=False,
                         allow_infinity=False)
    if kind == "string":
        if "pattern" in node:
            text = st.from_regex(node["pattern"], fullmatch=True)
        else:
            text = st.text(max_size=40)
        return text.filter(lambda s: len(s) <= node.get("maxLength", 10**9))
    if kind == "object":
        props = node.get("properties", {})
        required = set(node.get("required", ()))
        return st.fixed_dictionaries(
            {k: from_schema(v) for k, v in props.items() if k in required},
            optional={k: from_schema(v) for k, v in props.items() if k not in required},
        )
    raise AssertionError(f"schema construct not supported here: {node}")


def _check(resp: httpx.Response) -> None:
    assert resp.status_code in (200, 400, 413, 422), (resp.status_code, resp.text[:300])
    body = resp.json()
    if resp.status_code == 200:
        assert set(body) == {"image", "audio", "duration_s"}
        assert body["image"].startswith("data:image/jpeg;base64,")
        assert body["audio"].startswith("data:audio/mpeg;base64,")
    else:
        assert isinstance(body["detail"], str) and body["detail"]


def test_schema_valid_bodies(server: tuple[str, GatedBackend], schema: dict[str, Any]) -> None:
    base, _ = server
    # Full-width images cost seconds each on a CPU: draw explicit widths (<= 64 accepted).
    strategy = from_schema(_resolved(schema, "InferenceInput")).map(
        lambda body: {**body, "width": body.get("width") or 64})
    statuses: list[int] = []

    @FUZZ
    @given(body=strategy)
    def run(body: dict[str, Any]) -> None:
        resp = httpx.post(f"{base}/run_inference/", json=body, timeout=120)
        _check(resp)
        statuses.append(resp.status_code)

    run()
    assert statuses and set(statuses) <= {200, 400, 422}


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=4),
    max_leaves=12,
)


def test_arbitrary_json_never_breaks_the_server(server: tuple[str, GatedBackend]) -> None:
    base, backend = server
    calls = backend.calls

    @FUZZ
    @given(body=JSON | st.fixed_dictionaries(
        {"start": JSON}, optional={"end": JSON, "alpha": JSON, "seed_image_id": JSON,
                                   "num_inference_steps": JSON, "width": JSON}))
    def run(body: Any) -> None:
        for route in ("/run_inference/", "/v1/render", "/v1/clip"):
            _check(httpx.post(f"{base}{route}", json=body, timeout=120))

    run()
    assert backend.calls == calls  # nothing arbitrary got as far as the model
    for text in ('{"start": {"prompt": "a"}, "alpha": NaN}', '{"alpha": Infinity}'):
        resp = httpx.post(f"{base}/run_inference/", content=text.encode())
        assert resp.status_code == 400  # not JSON (RFC 8259 has no NaN or Infinity)
    assert httpx.get(f"{base}/health").json()["status"] == "ok"
