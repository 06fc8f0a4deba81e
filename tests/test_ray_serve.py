"""``riff serve --ray``: the app behind a real local Ray Serve, the tiny model on the CPU.

One private Ray (2 CPUs, 200 MB object store, loopback only) and one Serve application per
module: a Generator pool of one replica that batches up to 2 requests and waits up to 30 s
for the second. So a batch of two proves batching (a lone request would wait the 30 s and
run alone: the sizes seen would be 1, 1), and every test that reaches the model sends its
requests in pairs. Ray is shut down at the end of the module.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import io
import json
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install '.[ray]')")

from engine.live.jobs import ClipSpec, GenerationJob
from engine.live.wire import parse_request
from protocols.http import ray_serve
from protocols.http.app import ServeConfig
from protocols.http.guard import bind
from protocols.remote import RemoteClipGenerator, RemoteConfig
from tests.http_support import shared_seed_folder, wait_for

pytestmark = pytest.mark.slow

TOKEN = "ray-test-token-1"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def body(seed: int, alpha: float = 0.5, steps: int = 2, width: int = 64) -> dict[str, Any]:
    return {"alpha": alpha, "num_inference_steps": steps, "width": width,
            "seed_image_id": "og_beat", "start": {"prompt": "funk", "seed": seed},
            "end": {"prompt": "jazz", "seed": seed + 1}}


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    sock.close()
    ray_serve.start_ray(ray_serve.RaySettings(num_cpus=2, object_store_mb=200))
    try:
        model = ray_serve.ModelSettings(model="tiny", device="cpu",
                                        seed_image_dirs=ray_serve.seed_dirs([shared_seed_folder()]))
        pool = ray_serve.PoolSettings(replicas=1, max_batch_size=2, batch_wait_s=30.0)
        ray_serve.serve_with_ray(model, pool, ServeConfig(queue=1, token=TOKEN),
                                 host="127.0.0.1", port=port)
        yield f"http://127.0.0.1:{port}"
    finally:
        ray_serve.shutdown()


def stats() -> dict[str, Any]:
    return ray_serve.generator_stats()[0]


def test_every_ray_server_listens_on_loopback_only(base: str) -> None:
    psutil = pytest.importorskip("psutil")
    ours = {p.pid for p in psutil.Process().children(recursive=True)}
    listening = [c for c in psutil.net_connections("inet")
                 if c.status == psutil.CONN_LISTEN and c.pid in ours]
    assert listening, "no Ray server found among this process's children"
    for conn in listening:
        assert conn.laddr.ip in ("127.0.0.1", "::1", "::ffff:127.0.0.1"), (
            conn, psutil.Process(conn.pid).cmdline())


def test_health_is_the_apps_own(base: str) -> None:
    health = httpx.get(f"{base}/health", timeout=30).json()
    # queue_limit is the app's queue; the pool takes 1 replica x batch 2 at once.
    assert health == {"status": "ok", "model": "tiny", "queue_depth": 0, "queue_limit": 1,
                      "busy": 0}


def test_token_and_validation_as_in_plain_serve(base: str) -> None:
    assert httpx.post(f"{base}/run_inference/", json=body(1), timeout=30).status_code == 401
    resp = httpx.post(f"{base}/run_inference/", json={"alpha": 0.5}, headers=AUTH, timeout=30)
    assert resp.status_code == 422 and resp.json()["kind"] == "InvalidRequest"
    resp = httpx.post(f"{base}/run_inference/", content=b"{", headers=AUTH, timeout=30)
    assert resp.status_code == 400
    bad_seed = {**body(1), "seed_image_id": "../etc/passwd"}
    assert httpx.post(f"{base}/run_inference/", json=bad_seed, headers=AUTH,
                      timeout=30).status_code in (400, 422)
    assert stats()["batch_sizes"] == []  # none of these reached the model


def test_two_concurrent_requests_are_one_batch_and_get_inference_output(base: str) -> None:
    before = stats()["batch_sizes"]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(httpx.post, f"{base}/run_inference/", json=body(7, alpha=a),
                               headers=AUTH, timeout=300) for a in (0.25, 0.75)]
        answers = [f.result() for f in futures]
    for resp in answers:
        assert resp.status_code == 200, resp.text
        out = resp.json()
        assert set(out) == {"image", "audio", "duration_s"}
        assert out["image"].startswith("data:image/jpeg;base64,")
        assert out["audio"].startswith("data:audio/mpeg;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(out["image"].split(",", 1)[1])))
        assert image.size == (64, 512)
        assert out["duration_s"] == pytest.approx(63 * 441 / 44100, abs=0.01)
    assert stats()["batch_sizes"] == [*before, 2]
    assert answers[0].json()["image"] != answers[1].json()["image"]  # each got its own alpha


SPEC = ClipSpec(tempo=120.0, bars=1, beats_per_bar=4, sample_rate=48000, num_samples=96000)


def test_remote_engine_clips_through_the_pool(base: str) -> None:
    """What ``riff run --generator URL`` does, twice at once: two performers, one batch."""
    jobs = [GenerationJob(job_id=i, request=parse_request(body(5, alpha=a, width=192)),
                          spec=SPEC, start_bar=0, created=0.0)
            for i, a in ((1, 0.25), (2, 0.75))]

    async def both() -> list[Any]:
        gens = [RemoteClipGenerator(RemoteConfig(base, token=TOKEN)) for _ in jobs]
        try:
            return list(await asyncio.gather(*(g.generate(j) for g, j in zip(gens, jobs,
                                                                              strict=True))))
        finally:
            for g in gens:
                await g.aclose()

    before = stats()["batch_sizes"]
    clips = asyncio.run(both())
    assert [c.job_id for c in clips] == [1, 2]
    for clip in clips:
        assert clip.audio.shape == (96000, 2) and clip.audio.dtype == np.float32
        assert np.abs(clip.audio).max() > 0
    assert stats()["batch_sizes"] == [*before, 2]


def _raw_post(base: str, payload: dict[str, Any]) -> socket.socket:
    """Send a POST and leave the answer unread: closing the socket is a client that left."""
    host, port = base.removeprefix("http://").split(":")
    data = json.dumps(payload).encode()
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(b"POST /run_inference/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Authorization: Bearer {TOKEN}\r\nContent-Length: {len(data)}\r\n\r\n".encode()
                 + data)
    return sock


def test_saturated_pool_answers_503_and_clients_that_leave_are_cancelled(base: str) -> None:
    # 512 px x 50 steps: minutes on the CPU, so these are still running when the test
    # looks, and the test can only end in time if leaving really stops them.
    big = [body(s, steps=50, width=512) for s in (11, 12, 13)]
    health = f"{base}/health"
    before = stats()
    socks = [_raw_post(base, big[0]), _raw_post(base, big[1])]
    try:
        wait_for(lambda: httpx.get(health, timeout=30).json()["busy"] == 2,
                 what="both requests handed to the pool")
        socks.append(_raw_post(base, big[2]))
        wait_for(lambda: httpx.get(health, timeout=30).json()["queue_depth"] == 1,
                 what="the third request waiting in the app's queue")
        full = httpx.post(f"{base}/run_inference/", json=body(1), headers=AUTH, timeout=30)
        assert full.status_code == 503
        assert int(full.headers["Retry-After"]) >= 1
    finally:
        for sock in socks:
            sock.close()
    wait_for(lambda: httpx.get(health, timeout=30).json() | {"model": ""} == {
        "status": "ok", "model": "", "queue_depth": 0, "queue_limit": 1, "busy": 0},
        timeout=240, what="the pool to drop the requests whose clients left")
    wait_for(lambda: stats()["stopped"] == before["stopped"] + 2, timeout=240,
             what="the running batch to stop part-way")
    after = stats()
    assert after["batch_sizes"] == [*before["batch_sizes"], 2]  # the third never ran
    assert after["cancelled"] == before["cancelled"] + 2


def _generator_pid() -> int | None:
    try:
        return int(stats()["pid"])
    except Exception:  # the replica is being replaced: not answering yet
        return None


def test_a_replica_killed_mid_run_is_replaced_and_its_requests_answer_503(base: str) -> None:
    import ray

    before = stats()
    big = [body(s, steps=50, width=512) for s in (21, 22)]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(httpx.post, f"{base}/run_inference/", json=b, headers=AUTH,
                               timeout=300) for b in big]
        wait_for(lambda: stats()["batch_sizes"] == [*before["batch_sizes"], 2],
                 what="the batch to run in the replica")
        (replica,) = [a for a in ray.util.list_named_actors(all_namespaces=True)
                      if "Generator" in a["name"]]
        ray.kill(ray.get_actor(replica["name"], namespace=replica["namespace"]),
                 no_restart=True)
        answers = [f.result() for f in futures]
    for resp in answers:
        assert resp.status_code == 503, resp.text
        assert resp.json()["kind"] == "ModelUnavailable"
        assert "retry" in resp.json()["detail"]
    wait_for(lambda: _generator_pid() not in (None, before["pid"]), timeout=240,
             what="Serve to start a new generator replica")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # and the pool serves again
        again = list(pool.map(lambda s: httpx.post(f"{base}/run_inference/", json=body(s),
                                                   headers=AUTH, timeout=300), (31, 32)))
    assert [r.status_code for r in again] == [200, 200]
