"""JACK callback cost and xruns: a C reference client, the engine idle, the engine under GIL
stress, on one private dummy server in one run; prints JSON.

Default (``--cases``): for ``--seconds`` each, on the same private ``jackd -d dummy``
(48 kHz, ``--period`` frames), one after the other:

- ``c_reference``: ``jack_simple_client`` from jackd2's examples (a sine into two ports);
- ``engine_idle``: the engine's real-time path in this process, configured as ``riff run``
  does (``gc.freeze()`` after start-up, switch interval 0.5 ms): ``JackOutput`` with its
  compiled player (the callback mixes the clips from the voice table, published 2048 frames
  ahead) playing a ``Player`` that loops a clip, clips arriving from a test-tones worker
  process through shared memory every 2 s;
- ``engine_stressed``: the same while the process is stressed: a thread holding the GIL in
  pure-Python loops (allocating), 12 MB clips (8 bars at 60 BPM) arriving every 0.3 s and
  scheduled on the player, and a full ``gc.collect()`` every second;
- ``hosted_stressed`` (and ``hosted_idle`` by name): ``engine_stressed`` with the compiled
  callback also serving a JACK MIDI input (8 events a period from ``jack_midiseq``), JACK
  transport and a capture window on the audio input;
- ``ring_idle`` / ``ring_stressed``: the same with the compiled callback copying a ring that a
  Python thread fills with ``Player.render`` (``compiled_player=False``);
- ``python_callback_idle`` / ``python_callback_stressed``: the same two with the Python
  process callback (``render_ahead=0``, ``riff run --render-ahead 0``).

More cases by name (``--cases``): the stressed ones without ``gc.freeze()``, with the ring's
adaptive look-ahead (up to 8192 frames), with Python's default switch interval.

Measured for each: xruns (a watcher client without a process callback counts them), the
server's DSP load sampled every 50 ms (``jack_cpu_load``: the graph's cycle time against the
period, comparable between a C and a Python client), and for the engine its own callback
durations and cycle finish times, every garbage collection's pause, and what held the Python
thread feeding the callback up: its gaps over 20 ms and how many a full collection overlaps.
With the ring, ``ring_underruns`` are the periods that found it short (the render thread fell
more than the look-ahead behind: a gap in the sound, not an xrun). With the voice table
there is no such gap: ``render_skips`` counts the times the callback ran past what was
published (it went on with the voices in force; the player's decisions moved on from there)
and ``render_late_records`` the records it adopted after their first sample. Goal of issue
12: ``engine_stressed`` no more xruns than ``c_reference`` and its DSP load p99 within 2x.

``--daemon`` runs the older soak instead: ``riff run`` as a subprocess against a trivial
Python client (``--minutes 5`` for the README's soak table).

    python bench/bench_jack.py [--seconds 20] [--period 256] [--server NAME]
    python bench/bench_jack.py --daemon [--seconds 20 | --minutes 5] [--model test-tones|tiny]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RATE = 48000
TIMING = re.compile(r"JACK callback: (\d+) calls, duration p50 (\d+) us, p99 (\d+) us, "
                    r"max (\d+) us; finished within the cycle by at most (\d+) us")
STOPPED = re.compile(r"stopped: (\d+) clips started, (\d+) late, (\d+) xruns, (\d+) worker")


def start_server(period: int) -> tuple[str, subprocess.Popen[bytes]]:
    import jack

    name = f"riff-bench-{uuid.uuid4().hex[:8]}"
    proc = subprocess.Popen(["jackd", "-n", name, "-d", "dummy", "-r", str(RATE), "-p",
                             str(period)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            jack.Client("probe", no_start_server=True, servername=name).close()
            return name, proc
        except jack.JackOpenError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("jackd did not start") from None
            time.sleep(0.05)


def baseline(server: str, seconds: float) -> dict[str, float]:
    """A trivial Python client: zero-fill two ports per callback."""
    import jack

    client = jack.Client(f"bench-base-{uuid.uuid4().hex[:4]}", no_start_server=True,
                         servername=server)
    ports = [client.outports.register(n) for n in ("out_L", "out_R")]
    durations = np.zeros(1 << 20, np.int64)
    state = {"n": 0, "xruns": 0}

    def process(frames: int) -> None:
        t0 = time.perf_counter_ns()
        for port in ports:
            port.get_array()[:] = 0.0
        durations[state["n"] & ((1 << 20) - 1)] = time.perf_counter_ns() - t0
        state["n"] += 1

    def xrun(delay: float) -> None:
        state["xruns"] += 1

    client.set_process_callback(process)
    client.set_xrun_callback(xrun)
    client.activate()
    time.sleep(seconds)  # the measurement window itself
    client.deactivate()
    client.close()
    d = durations[: min(state["n"], 1 << 20)] / 1e3
    return {"callbacks": int(d.size), "duration_p50_us": float(np.percentile(d, 50)),
            "duration_p99_us": float(np.percentile(d, 99)), "duration_max_us": float(d.max()),
            "xruns": state["xruns"], "xruns_per_min": state["xruns"] * 60.0 / seconds}


def engine_run(server: str, seconds: float, model: str) -> dict[str, float]:
    env = {**os.environ, "JACK_NO_START_SERVER": "1", "PYTHONUNBUFFERED": "1"}
    surfaces_off = ["--osc-port", "0"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "protocols.cli", "run", "--model", model, "--tempo", "240",
         "--bars", "1", "--steps", "30" if model == "test-tones" else "2",
         "--jack-server", server, "--client-name", f"riff-bench-{uuid.uuid4().hex[:4]}",
         "--no-connect", *surfaces_off], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    started = None
    lines: list[str] = []
    for line in proc.stdout:
        lines.append(line)
        if "JACK: playing on" in line:
            started = time.monotonic()
            break
    if started is None:
        raise SystemExit("riff run did not start:\n" + "".join(lines[-20:]))
    time.sleep(seconds)  # the measurement window itself
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    log = "".join(lines) + out
    timing, stopped = TIMING.search(log), STOPPED.search(log)
    if proc.returncode != 0 or timing is None or stopped is None:
        raise SystemExit(f"riff run failed ({proc.returncode}):\n{log[-3000:]}")
    calls, p50, p99, mx, finish = (int(x) for x in timing.groups())
    clips, late, xruns, restarts = (int(x) for x in stopped.groups())
    return {"callbacks": calls, "duration_p50_us": p50, "duration_p99_us": p99,
            "duration_max_us": mx, "finish_max_us": finish, "clips": clips, "late": late,
            "worker_restarts": restarts, "xruns": xruns, "xruns_per_min": xruns * 60.0 / seconds}


class Watcher:
    """A client with no process callback: counts the server's xruns and samples its DSP load
    (its notification thread and a sampling thread; it adds nothing to the graph's work)."""

    def __init__(self, server: str) -> None:
        import threading

        import jack

        self.client = jack.Client(f"bench-watch-{uuid.uuid4().hex[:4]}", no_start_server=True,
                                  servername=server)
        self.xruns = 0
        self.loads: list[float] = []
        self.client.set_xrun_callback(self._xrun)
        self.client.activate()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _xrun(self, delay: float) -> None:
        self.xruns += 1

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.loads.append(float(self.client.cpu_load()))

    def window(self, seconds: float) -> dict[str, float]:
        """Count and sample for ``seconds``; the window's figures."""
        self.xruns, self.loads = 0, []
        self._stop.clear()
        import threading

        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        time.sleep(seconds)
        self._stop.set()
        self._thread.join()
        loads = np.asarray(self.loads or [0.0])
        return {"xruns": self.xruns, "dsp_load_p50_pct": round(float(np.percentile(loads, 50)), 2),
                "dsp_load_p99_pct": round(float(np.percentile(loads, 99)), 2),
                "dsp_load_max_pct": round(float(loads.max()), 2)}

    def close(self) -> None:
        self.client.deactivate()
        self.client.close()


def c_reference(server: str, watcher: Watcher, seconds: float) -> dict[str, float]:
    """jack_simple_client (C, from jackd2's examples) alone on the server."""
    exe = shutil.which("jack_simple_client")
    if exe is None:
        return {"skipped": 1.0}
    env = {**os.environ, "JACK_NO_START_SERVER": "1", "JACK_DEFAULT_SERVER": server}
    proc = subprocess.Popen([exe, f"bench-c-{uuid.uuid4().hex[:4]}", server], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)  # connected and running
        if proc.poll() is not None:
            raise SystemExit(f"jack_simple_client exited with {proc.returncode}")
        return watcher.window(seconds)
    finally:
        proc.terminate()
        proc.wait(10)


def engine_case(server: str, watcher: Watcher, seconds: float, stressed: bool,
                ahead: int = 2048, freeze: bool = True, max_ahead: int | None = None,
                switch: float | None = 0.0005, compiled_player: bool = True,
                hosted: bool = False) -> dict[str, Any]:
    """The engine's real-time path in this process (see the module docstring).

    ``freeze``: ``gc.freeze()`` once everything long-lived exists (as ``riff run`` does), so
    the stress's full collections skip it; ``max_ahead``: the render thread's adaptive
    look-ahead limit; ``switch``: ``sys.setswitchinterval`` (None: Python's default);
    ``compiled_player``: the callback mixes the voice table (False: it copies the ring the
    render thread fills); ``hosted``: the client also serves, in the same callback, a JACK
    MIDI input fed 8 events a period by ``jack_midiseq`` (a C client), JACK transport
    following and the audio input with a capture window armed over the whole run (as
    ``riff run --midi-in jack --jack-transport --input``). Every
    collection's pause is timed (``gc.callbacks``) and each render-thread gap over 20 ms is
    matched against them: what starved it."""
    import asyncio
    import gc
    import threading

    from engine.live.jobs import ClipSpec, GenerationJob
    from engine.live.player import Player, PlayerConfig
    from engine.live.worker import TEST_TONES, WorkerClient, WorkerConfig
    from engine.model.request import InferenceRequest
    from protocols.audio.jack_output import JackOutput

    old_switch = sys.getswitchinterval()
    if switch is not None:
        sys.setswitchinterval(switch)  # riff run sets 0.0005
    out = JackOutput(f"bench-riff-{uuid.uuid4().hex[:4]}", server=server, render_ahead=ahead,
                     max_render_ahead=max_ahead, compiled_player=compiled_player,
                     follow_transport=hosted)
    player = Player(PlayerConfig(sample_rate=out.sample_rate))
    sender: Any = None
    tap: Any = None
    midi_events = [0]
    if hosted:
        from engine.live.capture import CaptureTap
        from protocols.audio.jack_input import JackAudioInput

        tap = CaptureTap(2, int(out.sample_rate * (seconds + 10)))
        out.add_ports(JackAudioInput(out, tap, 2))
        # A C client (jackd2's example sequencer), so that no Python callback of the
        # benchmark's own is in the graph: a 256-frame loop of four notes, 8 events.
        seq_name = f"bench-midi-{uuid.uuid4().hex[:4]}"
        sender = subprocess.Popen(
            ["jack_midiseq", seq_name, "256", "0", "60", "16", "64", "62", "16", "128", "64",
             "16", "192", "65", "16"], env={**os.environ, "JACK_DEFAULT_SERVER": server},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not out.client.get_ports(f"^{seq_name}:"):
            if time.monotonic() > deadline or sender.poll() is not None:
                raise SystemExit("jack_midiseq did not start")
            time.sleep(0.05)
    bars, tempo = (8, 60.0) if stressed else (2, 120.0)
    every = 0.3 if stressed else 2.0
    stop = threading.Event()
    counts = {"clips": 0, "gc": 0, "spins": 0}

    def spin() -> None:
        """Hold the GIL in pure-Python loops (allocating), as busy control code would."""
        while not stop.is_set():
            junk: list[Any] = [{"i": i, "s": str(i)} for i in range(2000)]
            junk.append(junk)  # a cycle: work for the collector
            counts["spins"] += 1

    async def feed() -> None:
        client = WorkerClient(WorkerConfig(model=TEST_TONES, tone_step_s=0.0))
        await client.start()
        midi_in: Any = None
        if sender is not None:
            from protocols.midi.jack_input import JackMidiInput

            def count(data: bytes, t: float) -> None:
                midi_events[0] += 1

            midi_in = JackMidiInput(count, host=out, connect=(f"{seq_name}:out",))
            midi_in.start()
            tap.arm(player.position() + out.sample_rate,
                    player.position() + int(out.sample_rate * (seconds + 5)))
        try:
            n = round(bars * 4 * 60.0 / tempo * out.sample_rate)
            spec = ClipSpec(tempo=tempo, bars=bars, beats_per_bar=4,
                            sample_rate=out.sample_rate, num_samples=n)
            job_id = 0
            next_gc = time.monotonic() + 1.0
            end = time.monotonic() + seconds + 1.0
            while time.monotonic() < end:
                t0 = time.monotonic()
                job_id += 1
                request = InferenceRequest.from_dict({
                    "alpha": 0.25, "num_inference_steps": 1, "seed_image_id": "og_beat",
                    "start": {"prompt": "x", "seed": job_id},
                    "end": {"prompt": "x", "seed": job_id + 1}})
                clip = await client.generate(GenerationJob(job_id, request, spec, 0, 0.0))
                player.schedule(clip, player.position() + out.sample_rate // 10)
                player.poll()
                counts["clips"] += 1
                if stressed and time.monotonic() >= next_gc:
                    gc.collect()
                    counts["gc"] += 1
                    next_gc += 1.0
                await asyncio.sleep(max(0.0, every - (time.monotonic() - t0)))
        finally:
            if midi_in is not None:
                midi_in.close()
            await client.close()

    gc.collect()
    gc.unfreeze()
    if freeze:
        gc.freeze()
    pauses: list[tuple[float, float, int]] = []  # (start, end, generation)
    began = [0.0]

    def timed(phase: str, info: dict[str, int]) -> None:
        """gc.callbacks hook: time each collection (whichever thread triggered it)."""
        if phase == "start":
            began[0] = time.monotonic()
        else:
            pauses.append((began[0], time.monotonic(), info["generation"]))

    gc.callbacks.append(timed)
    out.start(player, connect=True)
    threads = [threading.Thread(target=spin, daemon=True)] if stressed else []
    for t in threads:
        t.start()
    feeder = threading.Thread(target=lambda: asyncio.run(feed()), daemon=True)
    feeder.start()
    try:
        time.sleep(1.0)  # the first clip plays
        figures = watcher.window(seconds)
    finally:
        stop.set()
        feeder.join(60)
        for t in threads:
            t.join(10)
        timing = out.timing_summary()
        render = out.render_stats()
        gaps = list(getattr(out._render, "gaps", []))
        gc.callbacks.remove(timed)
        out.close()
        if sender is not None:
            sender.terminate()
            sender.wait(10)
        sys.setswitchinterval(old_switch)
        gc.unfreeze()
    full = [e - b for b, e, g in pauses if g == 2]
    young = [e - b for b, e, g in pauses if g < 2]
    in_gc = sum(1 for t, gap in gaps
                if any(b < t and e > t - gap for b, e, g in pauses if g == 2))
    starve = {"render_gaps_over_20ms": len(gaps),
              "render_gaps_over_20ms_with_a_full_gc": in_gc,
              "render_gap_p50_ms": round(float(np.median([g for _, g in gaps])) * 1e3, 1)
              if gaps else 0.0,
              "full_gc_pauses": len(full),
              "full_gc_pause_p50_ms": round(float(np.median(full)) * 1e3, 1) if full else 0.0,
              "full_gc_pause_max_ms": round(max(full) * 1e3, 1) if full else 0.0,
              "young_gc_pauses": len(young),
              "young_gc_pause_max_ms": round(max(young) * 1e3, 2) if young else 0.0}
    mixer = ("python callback" if not ahead else "compiled player (voice table)"
             if compiled_player else "compiled ring copy (render thread)")
    return {**figures, "mixer": mixer, "gc_freeze": freeze,
            "switch_interval_s": sys.getswitchinterval() if switch is None else switch,
            **{f"render_{k}": v for k, v in render.items()},
            **starve, "callbacks": int(timing["callbacks"]),
            "duration_p50_us": round(timing["duration_p50_us"], 1),
            "duration_p99_us": round(timing["duration_p99_us"], 1),
            "duration_max_us": round(timing["duration_max_us"], 1),
            "finish_p99_us": round(timing["finish_p99_us"], 1),
            "finish_max_us": round(timing["finish_max_us"], 1),
            "clips_arrived": counts["clips"], "gc_collects": counts["gc"],
            "clip_mb": round(bars * 4 * 60.0 / tempo * out.sample_rate * 8 / 2**20, 1),
            "render_ahead_frames": ahead, "ring_underruns": out.ring_underruns,
            "player_xruns": player.counters()["xruns"],
            "player_underruns": player.counters()["underruns"],
            "player_late": player.counters()["late"],
            "player_short_fades": player.counters()["short_fades"],
            **({"midi_events": midi_events[0], "capture_frames": tap.written}
               if hosted else {})}


#: Each case: (stressed, keyword arguments of engine_case); ``engine_*`` is the daemon's
#: configuration (``riff run``: gc.freeze, switch interval 0.5 ms, render-ahead 2048), the
#: ``stressed_*`` variants take one mitigation away or change it, in the same run.
ENGINE_CASES: dict[str, tuple[bool, dict[str, object]]] = {
    "engine_idle": (False, {}),
    "engine_stressed": (True, {}),
    "python_callback_idle": (False, {"ahead": 0}),
    "python_callback_stressed": (True, {"ahead": 0}),
    "hosted_idle": (False, {"hosted": True}),
    "hosted_stressed": (True, {"hosted": True}),
    "ring_idle": (False, {"compiled_player": False}),
    "ring_stressed": (True, {"compiled_player": False}),
    "stressed_no_freeze": (True, {"freeze": False}),
    "ring_stressed_no_freeze": (True, {"freeze": False, "compiled_player": False}),
    "ring_stressed_no_freeze_adaptive": (True, {"freeze": False, "max_ahead": 8192,
                                                "compiled_player": False}),
    "ring_stressed_adaptive": (True, {"max_ahead": 8192, "compiled_player": False}),
    "ring_stressed_default_switch": (True, {"switch": None, "compiled_player": False}),
}
DEFAULT_CASES = ["c_reference", "engine_idle", "engine_stressed", "hosted_stressed",
                 "ring_idle", "ring_stressed",
                 "python_callback_idle", "python_callback_stressed"]


def cases(server: str, seconds: float, period: int,
          names: list[str] | None = None) -> dict[str, object]:
    names = names or DEFAULT_CASES
    unknown = set(names) - set(ENGINE_CASES) - {"c_reference"}
    if unknown:
        raise SystemExit(f"unknown case(s) {sorted(unknown)}; known: c_reference, "
                         + ", ".join(ENGINE_CASES))
    watcher = Watcher(server)
    results: dict[str, dict[str, Any]] = {}
    try:
        for name in names:
            if name == "c_reference":
                results[name] = c_reference(server, watcher, seconds)
                continue
            stressed, kw = ENGINE_CASES[name]
            results[name] = engine_case(server, watcher, seconds, stressed=stressed,
                                        **kw)  # type: ignore[arg-type]
    finally:
        watcher.close()
    ref, hot = results.get("c_reference", {}), results.get("engine_stressed", {})
    goal = {}
    if "xruns" in ref and "xruns" in hot:
        goal = {"xruns_not_above_reference": hot["xruns"] <= ref["xruns"],
                "dsp_load_p99_within_2x": hot["dsp_load_p99_pct"]
                <= 2 * max(ref["dsp_load_p99_pct"], 0.01)}
    return {"benchmark": "jack_rt_path", "seconds": seconds, "period_frames": period,
            "period_us": round(period / RATE * 1e6, 1), "results": results, "goal": goal}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--minutes", type=float, help="soak length (overrides --seconds)")
    ap.add_argument("--model", default="test-tones", help="test-tones (default) or tiny")
    ap.add_argument("--period", type=int, default=256)
    ap.add_argument("--cases", help="comma-separated cases (default: "
                    + ",".join(DEFAULT_CASES) + "; also " + ",".join(
                        n for n in ENGINE_CASES if n not in DEFAULT_CASES) + ")")
    ap.add_argument("--server", help="use this running JACK server instead of a private one")
    ap.add_argument("--daemon", action="store_true",
                    help="the older soak: riff run against a trivial Python client")
    args = ap.parse_args()
    seconds = args.minutes * 60 if args.minutes else args.seconds
    server_proc = None
    if args.server:
        server = args.server
    else:
        if shutil.which("jackd") is None:
            raise SystemExit("jackd is not installed")
        server, server_proc = start_server(args.period)
    try:
        if not args.daemon:
            names = args.cases.split(",") if args.cases else None
            print(json.dumps(cases(server, seconds, args.period, names), indent=2))
            return
        base = baseline(server, seconds)
        eng = engine_run(server, seconds, args.model)
    finally:
        if server_proc is not None:
            server_proc.terminate()
            server_proc.wait(10)
    period_us = args.period / RATE * 1e6
    print(json.dumps({
        "benchmark": "jack_callback",
        "seconds": seconds, "model": args.model, "period_frames": args.period,
        "period_us": round(period_us, 1),
        "engine": eng, "baseline_trivial_client": base,
        "engine_p99_fraction_of_period": round(eng["duration_p99_us"] / period_us, 4),
        "engine_p99_over_baseline_us": round(eng["duration_p99_us"]
                                             - base["duration_p99_us"], 1),
    }, indent=2))


if __name__ == "__main__":
    main()
