"""``riff doctor``: what a new user trips over, checked and explained one line each.

Each check answers ``ok``, ``warn`` (works, but not as well as it could) or ``fail`` (``riff
run`` will not work like this), with the fix in the same line. The exit status is 1 when any
check fails. Checks never change anything: they connect, bind and look, then let go.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Finding:
    """One line of the report."""

    status: str  # "ok", "warn" or "fail"
    topic: str
    text: str


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``riff doctor``."""
    p = subparsers.add_parser(
        "doctor", help="check this machine for riff run: JACK, GPU, model, OSC port, limits",
        description="Check, one line each, what riff run needs: a JACK server (and its rate "
                    "and period), PipeWire's JACK, a GPU and its memory, the model in the "
                    "local cache, a free OSC port, real-time priority and memlock limits, a "
                    "writable numba cache. Changes nothing; exits 1 when a check fails.")
    p.add_argument("--jack-server", default=None,
                   help="JACK server name (default: $JACK_DEFAULT_SERVER or 'default')")
    p.add_argument("--model", default="riffusion/riffusion-model-v1",
                   help="model to look for in the local cache (default the Riffusion model)")
    p.add_argument("--osc-host", default="127.0.0.1")
    p.add_argument("--osc-port", type=int, default=9000)
    p.add_argument("--no-gpu", action="store_true", help="skip the GPU check (no torch import)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Handler of ``riff doctor``: print the findings, exit 1 on any failure."""
    checks: list[Callable[[], Finding]] = [
        lambda: check_jack(args.jack_server),
        check_pipewire,
        lambda: check_model(args.model),
        lambda: check_osc_port(args.osc_host, args.osc_port),
        check_rt_limits,
        check_numba_cache,
    ]
    if not args.no_gpu:
        checks.insert(2, check_gpu)
    failed = False
    for check in checks:
        finding = check()
        failed |= finding.status == "fail"
        print(f"{finding.status:<4}  {finding.topic:<10} {finding.text}")
    return 1 if failed else 0


def check_jack(server: str | None) -> Finding:
    """A JACK server to connect to, and its sample rate and period."""
    import jack

    name = server or os.environ.get("JACK_DEFAULT_SERVER") or None
    label = f"server '{name or 'default'}'"
    try:
        client = jack.Client("riff-doctor", no_start_server=True, servername=name)
    except jack.JackOpenError:
        return Finding("fail", "jack", f"no JACK {label} to connect to: start one "
                       "(jackd -d alsa -r 48000 -p 256, or -d dummy without a sound card) or "
                       "run under PipeWire's JACK (pw-jack riff run)")
    try:
        rate, period = client.samplerate, client.blocksize
    finally:
        client.close()
    latency = period / rate * 1000
    status = "ok" if period <= 1024 else "warn"
    advice = "" if status == "ok" else " (a long period: knobs and bar lines feel late)"
    return Finding(status, "jack", f"{label}: {rate} Hz, {period} frames per period "
                   f"({latency:.1f} ms){advice}")


def check_pipewire() -> Finding:
    """Whether PipeWire's JACK is there (its ``pw-jack`` wrapper)."""
    if shutil.which("pw-jack"):
        return Finding("ok", "pipewire", "pw-jack found: 'pw-jack riff run' uses PipeWire's "
                       "JACK when no jackd runs")
    return Finding("ok", "pipewire", "pw-jack not found: use jackd (or install "
                   "pipewire-jack to share the sound card with desktop apps)")


def check_gpu() -> Finding:
    """A CUDA (or MPS) device for the model, and its free memory."""
    import torch

    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        name = torch.cuda.get_device_name(0)
        status = "ok" if free >= 3 * 2**30 else "warn"
        return Finding(status, "gpu", f"{name}: {free / 2**30:.1f} of {total / 2**30:.1f} GiB "
                       "free (a clip needs about 3 GiB in fp16)")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return Finding("ok", "gpu", "Apple MPS: works, slower than CUDA")
    return Finding("warn", "gpu", "no GPU: the model runs on the CPU, minutes per clip; use "
                   "--model tiny for a smoke test, or riff run --generator URL with a GPU "
                   "machine running riff serve")


def check_model(model: str) -> Finding:
    """The model in the local Hugging Face cache (the engine never downloads while playing)."""
    if model == "tiny" or Path(model).is_dir():
        return Finding("ok", "model", f"{model}: available offline")
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(model, "model_index.json")
    except ValueError as exc:  # a malformed id: reported as the finding
        return Finding("fail", "model", f"{model}: cannot look it up ({exc})")
    if isinstance(found, str):
        return Finding("ok", "model", f"{model}: in the local cache")
    return Finding("fail", "model", f"{model}: not in the local cache; fetch it once with "
                   f"'hf download {model}'")


def check_osc_port(host: str, port: int) -> Finding:
    """The OSC port is free to bind (another riff run, or another app, may hold it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            return Finding("fail", "osc", f"UDP {host}:{port} is taken ({exc.strerror}): stop "
                           "what holds it, or riff run --osc-port N")
    return Finding("ok", "osc", f"UDP {host}:{port} is free")


def check_rt_limits() -> Finding:
    """Real-time priority and locked memory: what JACK's thread and a GIL holder may get."""
    rtprio = resource.getrlimit(resource.RLIMIT_RTPRIO)[0]
    memlock = resource.getrlimit(resource.RLIMIT_MEMLOCK)[0]
    root = hasattr(os, "geteuid") and os.geteuid() == 0
    rt_ok = root or rtprio == resource.RLIM_INFINITY or rtprio >= 70
    mem_ok = root or memlock == resource.RLIM_INFINITY or memlock >= 256 * 2**20
    text = (f"rtprio {'unlimited' if rtprio == resource.RLIM_INFINITY else rtprio}, memlock "
            f"{'unlimited' if memlock == resource.RLIM_INFINITY else f'{memlock // 1024} KiB'}")
    if rt_ok and mem_ok:
        return Finding("ok", "limits", text)
    return Finding("warn", "limits", text + ": add your user to the 'audio' group (Debian: "
                   "/etc/security/limits.d/audio.conf allows rtprio 95, memlock unlimited) "
                   "and log in again, or expect xruns under load")


def check_numba_cache() -> Finding:
    """numba caches its compiled DSP kernels on disk; without a writable cache every start
    compiles them again (seconds)."""
    configured = os.environ.get("NUMBA_CACHE_DIR")
    import engine.dsp

    folder = Path(configured) if configured else Path(engine.dsp.__file__).parent / "__pycache__"
    probe = folder if folder.exists() else folder.parent
    if _writable(probe):
        return Finding("ok", "numba", f"kernel cache writable ({folder})")
    return Finding("warn", "numba", f"{folder} is not writable: kernels compile at every start "
                   "(seconds); set NUMBA_CACHE_DIR to a writable folder")


def _writable(folder: Path) -> bool:
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False
