"""Many performers against one server: plain ``riff serve`` against ``riff serve --ray``; JSON.

For 1, 2, 4 and 8 concurrent performers (``--levels``), each performer is the client that
``riff run --generator URL`` uses (:class:`protocols.remote.RemoteClipGenerator`, ``/v1/clip``)
asking for its next clip as soon as it has the last one, with its own prompt and seed walk,
for ``--seconds``. Measured per level: clips per second (all performers together and per
performer) and the latency of one clip (p50, p95; per performer too), retries and failures.

The servers, one after the other, with the same model, request and machine:

- ``serve``: plain ``riff serve`` (a subprocess): one model, requests one at a time in
  arrival order. The baseline, measured first.
- ``ray``: the same app on a private local Ray Serve (started in this process, loopback only,
  as ``riff serve --ray`` does) with ``--replicas`` generator replicas batching up to
  ``--batch-size`` requests that arrive within ``--batch-wait-ms``; the batch sizes the pool
  formed are reported per level.

Both servers get ``--threads`` torch threads per model (Ray gives a 1-CPU replica one thread;
the plain server gets the same through ``OMP_NUM_THREADS``) and a queue of ``--queue``, so
no performer is turned away at 8. One server runs at a time. The table goes to stderr, the
JSON to stdout.

    python bench/bench_serve_scale.py [--model tiny] [--levels 1,2,4,8] [--seconds 30]
    python bench/bench_serve_scale.py --quick     # a few seconds per server (the test's run)
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.live.jobs import ClipSpec, GenerationJob  # noqa: E402
from engine.live.wire import parse_request  # noqa: E402
from protocols.remote import RemoteClipGenerator, RemoteConfig  # noqa: E402

PROMPTS = ("lo-fi hip hop beat", "church bells", "acid bass line", "jazz piano", "funk guitar",
           "808 drums", "string quartet", "ambient pads")


@dataclasses.dataclass(frozen=True)
class Workload:
    """What every performer asks for: one clip of ``bars`` bars at ``tempo`` BPM, 4/4, from a
    ``width`` px image in ``steps`` denoising steps."""

    width: int = 256
    steps: int = 4
    tempo: float = 120.0
    bars: int = 1
    sample_rate: int = 48000

    @property
    def spec(self) -> ClipSpec:
        samples = round(self.bars * 4 * 60.0 / self.tempo * self.sample_rate)
        return ClipSpec(tempo=self.tempo, bars=self.bars, beats_per_bar=4,
                        sample_rate=self.sample_rate, num_samples=samples)

    def job(self, performer: int, clip: int) -> GenerationJob:
        """Performer ``performer``'s ``clip``-th job: its own prompt, its own seed walk."""
        seed = 1000 * (performer + 1) + clip
        prompt = PROMPTS[performer % len(PROMPTS)]
        body = {"alpha": 0.5, "num_inference_steps": self.steps, "width": self.width,
                "seed_image_id": "og_beat", "start": {"prompt": prompt, "seed": seed},
                "end": {"prompt": prompt, "seed": seed + 1}}
        return GenerationJob(job_id=100_000 * performer + clip, request=parse_request(body),
                             spec=self.spec, start_bar=clip, created=0.0)


@dataclasses.dataclass
class Performer:
    """One performer's clips: each one's latency, and when it finished its last."""

    latencies: list[float] = dataclasses.field(default_factory=list)
    finished: float = 0.0
    retried: int = 0
    failed: int = 0


async def perform(url: str, index: int, workload: Workload, started: float,
                  deadline: float) -> Performer:
    """Ask for the next clip as soon as the last one is in, until ``deadline`` (the clip in
    flight then is finished and counted; at least one clip). Thread: this benchmark's
    asyncio loop."""
    gen = RemoteClipGenerator(RemoteConfig(url, read_timeout_s=600.0, retries=50,
                                           backoff_s=0.1, backoff_max_s=2.0))
    me = Performer()
    try:
        clip = 0
        while clip == 0 or time.perf_counter() < deadline:
            t0 = time.perf_counter()
            result = await gen.generate(workload.job(index, clip))
            me.latencies.append(time.perf_counter() - t0)
            if result.audio.shape != (workload.spec.num_samples, 2):
                raise RuntimeError(f"clip of shape {result.audio.shape}")
            clip += 1
        me.finished = time.perf_counter() - started
        me.retried, me.failed = gen.retried, gen.failures
        return me
    finally:
        await gen.aclose()


def p(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def run_level(url: str, performers: int, workload: Workload, seconds: float) -> dict[str, Any]:
    """``performers`` performers at once for ``seconds``; clips/s and latencies."""
    async def everyone() -> list[Performer]:
        started = time.perf_counter()
        return list(await asyncio.gather(*(perform(url, i, workload, started,
                                                   started + seconds)
                                           for i in range(performers))))

    t0 = time.perf_counter()
    them = asyncio.run(everyone())
    elapsed = time.perf_counter() - t0
    every = [lat for me in them for lat in me.latencies]
    per = [{"clips": len(me.latencies), "clips_per_s": len(me.latencies) / me.finished,
            "latency_p50_s": p(me.latencies, 50), "latency_p95_s": p(me.latencies, 95)}
           for me in them]
    return {"performers": performers, "clips": len(every), "elapsed_s": elapsed,
            "clips_per_s": len(every) / elapsed,
            "clips_per_s_per_performer": statistics.mean(x["clips_per_s"] for x in per),
            "latency_p50_s": p(every, 50), "latency_p95_s": p(every, 95),
            "worst_performer_latency_p95_s": max(x["latency_p95_s"] for x in per),
            "retried": sum(me.retried for me in them), "failed": sum(me.failed for me in them),
            "per_performer": per}


def warm_up(url: str, workload: Workload) -> None:
    """One clip first (a level of one performer and no time): the server's caches and
    encoders warm, not measured."""
    run_level(url, 1, workload, 0.0)


@contextmanager
def plain_serve(model: str, device: str, queue: int, threads: int
                ) -> Iterator[Callable[[], str]]:
    """``riff serve`` as a subprocess on a free loopback port; yields a function that waits
    for it to be up and returns its URL."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads)}
    env.pop("RIFF_TOKEN", None)
    proc = subprocess.Popen([sys.executable, "-m", "protocols.cli", "serve", "--model", model,
                             "--device", device, "--port", "0", "--queue", str(queue)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    found = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if re.search(r"riff serve: .* on http://", line):
                found.set()

    def url() -> str:
        if not found.wait(300):
            raise RuntimeError("riff serve did not start:\n" + "".join(lines[-20:]))
        match = re.search(r" on (http://[\d.]+:\d+)", "".join(lines))
        assert match is not None
        return match.group(1)

    threading.Thread(target=read, daemon=True).start()
    try:
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(60)


@contextmanager
def ray_serve_pool(model: str, device: str, queue: int, args: argparse.Namespace
                   ) -> Iterator[tuple[str, Callable[[], list[int]]]]:
    """A private local Ray with the app deployed; yields its URL and a function returning
    the batch sizes the pool formed so far (of every replica it can reach)."""
    from protocols.http import ray_serve
    from protocols.http.app import ServeConfig
    from protocols.http.guard import bind

    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by Ray's workers
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    sock.close()
    ray_serve.start_ray(ray_serve.RaySettings(num_cpus=args.ray_cpus,
                                              object_store_mb=args.ray_object_store_mb))
    try:
        ray_serve.serve_with_ray(
            ray_serve.ModelSettings(model=model, device=device),
            ray_serve.PoolSettings(replicas=args.replicas, max_batch_size=args.batch_size,
                                   batch_wait_s=args.batch_wait_ms / 1000.0,
                                   cpus_per_replica=args.threads),
            ServeConfig(queue=queue), host="127.0.0.1", port=port)

        def batch_sizes() -> list[int]:
            seen: dict[int, list[int]] = {}
            for _ in range(4 * args.replicas):  # the router picks a replica per call
                stats = ray_serve.generator_stats()[0]
                seen[int(stats["pid"])] = list(stats["batch_sizes"])
            return [size for sizes in seen.values() for size in sizes]

        yield f"http://127.0.0.1:{port}", batch_sizes
    finally:
        # The whole private Ray goes: no need for Serve's graceful shutdown (seconds) first.
        import ray

        ray.shutdown()


def levels_on(url: str, levels: Sequence[int], workload: Workload, seconds: float,
              batch_sizes: Callable[[], list[int]] | None = None) -> dict[str, Any]:
    """Every level against one server (after a warm-up clip)."""
    warm_up(url, workload)
    out: dict[str, Any] = {}
    for n in levels:
        before = len(batch_sizes()) if batch_sizes is not None else 0
        row = run_level(url, n, workload, seconds)
        if batch_sizes is not None:
            formed = batch_sizes()[before:]
            row["batches"] = {str(k): v for k, v in sorted(Counter(formed).items())}
            row["mean_batch_size"] = statistics.mean(formed) if formed else 0.0
        out[str(n)] = row
        print(f"  {n} performer(s): {row['clips']} clips, {row['clips_per_s']:.2f} clips/s, "
              f"p95 {row['latency_p95_s']:.2f} s", file=sys.stderr)
    return out


def table(result: dict[str, Any]) -> str:
    """The Markdown table of one run (the README's)."""
    rows = ["| performers | serve: clips/s (each) | serve: p95 latency (worst performer) "
            "| Ray + batching: clips/s (each) | Ray: p95 latency (worst performer) "
            "| Ray: batches formed (size: count) |",
            "|---|---|---|---|---|---|"]

    def cells(row: dict[str, Any]) -> str:
        return (f"{row['clips_per_s']:.2f} ({row['clips_per_s_per_performer']:.2f}) "
                f"| {row['latency_p95_s']:.2f} s ({row['worst_performer_latency_p95_s']:.2f} s)")

    for n in result["levels"]:
        s, r = result["serve"][str(n)], result["ray"][str(n)]
        batches = ", ".join(f"{k}: {v}" for k, v in r["batches"].items())
        rows.append(f"| {n} | {cells(s)} | {cells(r)} | {batches} |")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="model of both servers (default tiny)")
    parser.add_argument("--device", default="cpu", help="device of both servers (default cpu)")
    parser.add_argument("--levels", default="1,2,4,8",
                        help="concurrent performers, comma-separated (default 1,2,4,8)")
    parser.add_argument("--seconds", type=float, default=30.0,
                        help="how long each level asks for clips (default 30)")
    parser.add_argument("--width", type=int, default=256,
                        help="image width of each request, px (default 256)")
    parser.add_argument("--steps", type=int, default=4,
                        help="denoising steps of each request (default 4)")
    parser.add_argument("--tempo", type=float, default=120.0,
                        help="tempo of each clip, BPM, 4/4 (default 120)")
    parser.add_argument("--bars", type=int, default=1, help="bars per clip (default 1)")
    parser.add_argument("--queue", type=int, default=8,
                        help="requests that may wait in either server (default 8)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (and Ray CPUs) per model (default 1)")
    parser.add_argument("--replicas", type=int, default=1,
                        help="Ray generator replicas (default 1)")
    parser.add_argument("--batch-size", type=int, default=4, help="Ray batch size (default 4)")
    parser.add_argument("--batch-wait-ms", type=float, default=50.0,
                        help="Ray batch wait (default 50)")
    parser.add_argument("--ray-cpus", type=int, default=os.cpu_count() or 1,
                        help="CPUs of the local Ray (default: this machine's)")
    parser.add_argument("--ray-object-store-mb", type=int, default=200,
                        help="object store of the local Ray (default 200)")
    parser.add_argument("--servers", default="serve,ray",
                        help="which servers to measure: serve, ray or serve,ray (default; "
                             "the table needs both)")
    parser.add_argument("--quick", action="store_true",
                        help="1 and 2 performers, 1 s each, 64 px, 2 steps, 1 s clips")
    args = parser.parse_args(argv)
    if args.quick:
        args.levels, args.seconds, args.width, args.steps, args.tempo = "1,2", 1.0, 64, 2, 240.0
    servers = set(args.servers.split(","))
    if not servers or not servers <= {"serve", "ray"}:
        parser.error("--servers: serve, ray or serve,ray")
    levels = [int(n) for n in args.levels.split(",")]
    if not levels or min(levels) < 1 or max(levels) > len(PROMPTS) * 100:
        parser.error("--levels: counts of performers, at least 1")
    workload = Workload(width=args.width, steps=args.steps, tempo=args.tempo, bars=args.bars)
    # Ray copies its workers' log lines to this process's stdout: keep stdout for the JSON
    # and send everything else (Ray's processes inherit the descriptors) to stderr.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    result: dict[str, Any] = {
        "model": args.model, "device": args.device, "levels": levels,
        "seconds_per_level": args.seconds, "workload": dataclasses.asdict(workload),
        "clip_seconds": workload.spec.num_samples / workload.sample_rate,
        "queue": args.queue, "threads_per_model": args.threads,
        "ray_pool": {"replicas": args.replicas, "batch_size": args.batch_size,
                     "batch_wait_ms": args.batch_wait_ms, "ray_cpus": args.ray_cpus},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "loadavg_before": os.getloadavg()},
    }
    # One server at a time: neither runs beside the other's idle processes.
    if "serve" in servers:
        t0 = time.perf_counter()
        with plain_serve(args.model, args.device, args.queue, args.threads) as plain_url:
            url = plain_url()
            result["serve_start_s"] = time.perf_counter() - t0
            print(f"plain riff serve (up in {result['serve_start_s']:.1f} s):",
                  file=sys.stderr)
            result["serve"] = levels_on(url, levels, workload, args.seconds)
    if "ray" in servers:
        t0 = time.perf_counter()
        with ray_serve_pool(args.model, args.device, args.queue, args) as (url, batch_sizes):
            result["ray_start_s"] = time.perf_counter() - t0
            print(f"riff serve --ray (up in {result['ray_start_s']:.1f} s):", file=sys.stderr)
            result["ray"] = levels_on(url, levels, workload, args.seconds, batch_sizes)
    result["machine"]["loadavg_after"] = os.getloadavg()
    if servers == {"serve", "ray"}:
        result["ray_vs_serve_clips_per_s"] = {
            str(n): result["ray"][str(n)]["clips_per_s"]
            / result["serve"][str(n)]["clips_per_s"] for n in levels}
        print(table(result), file=sys.stderr)
    print(json.dumps(result, indent=2), file=out)
    out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
