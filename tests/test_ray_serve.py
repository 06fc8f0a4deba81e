"""``riff serve --ray``: the app behind a real local Ray Serve, the tiny model on the CPU.

One private Ray (2 CPUs, 200 MB object store, loopback only) per module, and on it:

- ``base``, the application ``riff`` at ``/``: a Generator pool of one replica that batches up
  to 2 requests and waits up to 30 s for the second. So a batch of two proves batching (a
  lone request would wait the 30 s and run alone: the sizes seen would be 1, 1), and every
  test that reaches it sends its requests in pairs.
- ``wide``, a second application ``wide`` at ``/wide`` (started on first use): one replica
  batching up to 8 requests within 1 s, a queue of 8 and no token, for the tests where 8
  performers, or a whole ``riff run --generator`` daemon, play against the pool.

Ray is shut down at the end of the module.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import io
import json
import os
import re
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install '.[ray]')")

from engine.live.jobs import Clip, ClipSpec, GenerationJob
from engine.live.wire import parse_request
from protocols.http import ray_serve
from protocols.http.app import ServeConfig
from protocols.http.guard import bind
from protocols.remote import RemoteClipGenerator, RemoteConfig
from tests.http_support import shared_renderer, shared_seed_folder, wait_for
from tests.jack_recorder import Recorder
from tests.riff_process import RiffProcess

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


WIDE = "wide"


@pytest.fixture(scope="module")
def wide(base: str) -> Iterator[str]:
    """A second application on the same Ray and HTTP port, under ``/wide``: one replica that
    batches up to 8 requests arriving within 1 s of the first, a queue of 8, no token."""
    from ray import serve

    model = ray_serve.ModelSettings(model="tiny", device="cpu",
                                    seed_image_dirs=ray_serve.seed_dirs([shared_seed_folder()]))
    pool = ray_serve.PoolSettings(replicas=1, max_batch_size=8, batch_wait_s=1.0)
    serve.run(ray_serve.application(model, pool, ServeConfig(queue=8)), name=WIDE,
              route_prefix=f"/{WIDE}")
    try:
        yield f"{base}/{WIDE}"
    finally:
        serve.delete(WIDE)


def stats(app: str = ray_serve.APP_NAME) -> dict[str, Any]:
    return ray_serve.generator_stats(app)[0]


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


RATE = 48000
CLIP_STARTS = re.compile(r"clip (\d+) started at sample \d+ \(bar -?\d+, JACK frame (\d+)\)")
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


#: One bar at 240 BPM: a second of audio per clip.
BAR_SPEC = ClipSpec(tempo=240.0, bars=1, beats_per_bar=4, sample_rate=RATE, num_samples=RATE)
PROMPTS = ("funk", "jazz", "church bells", "acid bass", "lo-fi beat", "piano", "strings",
           "808 drums")


def performer_job(performer: int, clip: int) -> GenerationJob:
    """Performer ``performer``'s ``clip``-th job: its own prompt and seed walk."""
    seed = 1000 * (performer + 1) + clip
    body = {"alpha": 0.5, "num_inference_steps": 2, "width": 64, "seed_image_id": "og_beat",
            "start": {"prompt": PROMPTS[performer], "seed": seed},
            "end": {"prompt": PROMPTS[performer], "seed": seed + 500}}
    return GenerationJob(job_id=100 * performer + clip, request=parse_request(body),
                         spec=BAR_SPEC, start_bar=clip, created=0.0)


def local_clips(jobs: list[GenerationJob]) -> dict[tuple[int, int], np.ndarray]:
    """Each job rendered alone, here, with the replica's torch thread count (Ray gives a
    1-CPU replica OMP_NUM_THREADS=1 unless the environment sets it; a different count sums
    in a different order and changes the audio by a few percent)."""
    import torch

    renderer = shared_renderer()
    threads = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    try:
        return {divmod(job.job_id, 100): renderer.render_clip(job).audio for job in jobs}
    finally:
        torch.set_num_threads(threads)


def test_eight_performers_at_once_each_get_their_own_clips_in_batches(wide: str) -> None:
    """8 performers (the client ``riff run --generator`` uses), each asking for its next clip
    as soon as it has the last: every clip is the one a plain local generation of its own
    request makes, and the pool ran them in batches of more than one."""
    performers, rounds = 8, 2

    async def perform(index: int) -> list[Clip]:
        gen = RemoteClipGenerator(RemoteConfig(wide, read_timeout_s=120.0, retries=0))
        try:
            await gen.start()
            assert gen.model == "tiny"
            return [await gen.generate(performer_job(index, r)) for r in range(rounds)]
        finally:
            await gen.aclose()

    async def everyone() -> list[list[Clip]]:
        return list(await asyncio.gather(*(perform(i) for i in range(performers))))

    before = stats(WIDE)["batch_sizes"]
    played = asyncio.run(everyone())
    sizes = stats(WIDE)["batch_sizes"][len(before):]
    assert sum(sizes) == performers * rounds, sizes  # every request ran once
    assert max(sizes) > 1, sizes
    references = local_clips([performer_job(i, r) for i in range(performers)
                              for r in range(rounds)])
    for i, clips in enumerate(played):
        for r, clip in enumerate(clips):
            own = references[(i, r)]
            assert clip.job_id == 100 * i + r
            assert clip.audio.shape == own.shape == (RATE, 2)
            assert np.abs(clip.audio).max() > 0
            # Sample for sample the clip its own request makes alone, and no one else's.
            np.testing.assert_array_equal(clip.audio, own)
            assert not any(np.array_equal(clip.audio, ref)
                           for key, ref in references.items() if key != (i, r))


@pytest.mark.jack
def test_riff_run_against_the_pool_plays_its_clips_into_jack(wide: str,
                                                             jack_server: str) -> None:
    """``riff run --generator URL`` (the real daemon) against the Ray deployment: its clips
    come from the pool and play on its JACK ports."""
    name = f"riff-ray-{uuid.uuid4().hex[:6]}"
    before = sum(stats(WIDE)["batch_sizes"])
    daemon = RiffProcess("run", "--generator", wide, "--tempo", "240", "--bars", "1",
                         "--steps", "2", "--crossfade-ms", "0", "--osc-port", "0",
                         "--jack-server", jack_server, "--client-name", name, "--no-connect")
    rec = None
    try:
        daemon.wait_for(lambda t: "JACK: playing on" in t)
        rec = Recorder(jack_server, seconds=30.0)
        rec.start([f"{name}:out_L", f"{name}:out_R"])
        daemon.wait_for(lambda t: len(CLIP_STARTS.findall(t)) >= 3)
        starts = [(int(j), int(f)) for j, f in CLIP_STARTS.findall(daemon.text())]
        # Record one second (the clip's bar at 240 BPM) past the third clip's start.
        need = starts[2][1] - rec.first_frame + RATE
        deadline = time.monotonic() + 30
        while rec.count < need and time.monotonic() < deadline:
            rec.full.wait(0.05)
        audio = rec.buf[:, :rec.count].copy()
        first = rec.first_frame
    finally:
        if rec is not None:
            rec.close()
        rc = daemon.finish()
    log = daemon.text()
    assert rc == 0, log[-3000:]
    assert f"connecting to the generator at {wide}" in log
    assert "model tiny" in log, log[-3000:]
    assert len({j for j, _ in starts[:3]}) == 3  # three different clips
    assert rec.count >= need, (rec.count, need)
    # From the first clip that started after recording began: the pool's audio is playing.
    played_from = next(f for _, f in starts if f >= first) - first
    assert np.abs(np.nan_to_num(audio[:, played_from:need])).max() > 0
    requests = re.search(r"remote generator: (\d+) requests, 0 failed", log)
    assert requests is not None, log[-3000:]
    assert sum(stats(WIDE)["batch_sizes"]) - before >= len(starts)


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
                      if f"::{ray_serve.APP_NAME}#{ray_serve.GENERATOR}#" in a["name"]]
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
