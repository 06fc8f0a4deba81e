"""OSC fuzz: malformed packets at the running daemon; it keeps playing, counts every one, and
its state does not change.

Starts ``riff run`` (test-tones, real-time file output, OSC on loopback), reads the state
(``/riff/state``), then sends ``--packets`` invalid packets, seeded and reproducible, of these
kinds (each is exactly one OSC error on the server):

- random bytes of random length; a valid message cut short; a type-tag string with unknown
  tags or none; a blob or string size running past the end;
- a known parameter address with the wrong type, the wrong arity, or a value out of range
  (NaN, infinities, beyond the limits); a string id that is a path;
- an unknown address, an address without ``/``; a bundle whose element size is wrong.

Sends in batches of ``--batch``, each closed with a ``/riff/ping`` whose pong paces the sender
(so the socket's receive buffer never overflows and every packet reaches the server). After
the last batch: the state again (must be equal), clips still starting, and the daemon's OSC
counters from its log at exit (``errors`` must equal the packets sent). Prints JSON.

    python bench/bench_osc_fuzz.py [--packets 100000] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import struct
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_soak import Daemon, OscClient, free_udp_port  # noqa: E402
from engine.live.state import PARAMETERS  # noqa: E402
from protocols.osc.server import build_message  # noqa: E402


def _pad(b: bytes) -> bytes:
    b += b"\0"
    return b + b"\0" * (-len(b) % 4)


def _raw(address: str, tags: str, payload: bytes = b"") -> bytes:
    return _pad(address.encode()) + _pad(("," + tags).encode()) + payload


def malformed(rng: random.Random) -> tuple[str, bytes]:
    """One invalid packet and its kind."""
    kind = rng.choice(("bytes", "truncated", "bad_tags", "overrun", "wrong_type", "arity",
                       "range", "path_id", "unknown", "no_slash", "bad_bundle"))
    specs = list(PARAMETERS.values())
    spec = rng.choice(specs)
    if kind == "bytes":
        data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 160)))
        if data.startswith(b"/") or data.startswith(b"#bundle"):
            data = b"\xff" + data[1:]
        return kind, data
    if kind == "truncated":
        full = build_message(spec.address, ("x" * rng.randrange(1, 40),))
        return kind, full[:rng.randrange(len(_pad(spec.address.encode())) + 1, len(full) - 1)]
    if kind == "bad_tags":
        # Unknown tags are skipped by the parser: what is left has the wrong arity.
        return kind, _raw(spec.address, rng.choice(("Q", "\x01", "ss\x7f")), b"\0" * 8) \
            if rng.random() < 0.8 else _pad(spec.address.encode()) + b"zzzz"
    if kind == "overrun":
        return kind, _raw(spec.address, "b", struct.pack(">i", rng.randrange(64, 10**6))
                          + b"\0" * 8)
    if kind == "wrong_type":
        if spec.kind in ("str", "id"):
            return kind, build_message(spec.address, (rng.choice((1, 2.5)),))
        return kind, build_message(spec.address, (rng.choice(("x", "0.5", "")),))
    if kind == "arity":
        value: Any = "a" if spec.kind in ("str", "id") else 1
        return kind, build_message(spec.address, rng.choice(((), (value, value))))
    if kind == "range":
        numeric = [s for s in specs if s.kind in ("int", "float")]
        spec = rng.choice(numeric)
        assert spec.lo is not None and spec.hi is not None
        bad = float(rng.choice((math.nan, math.inf, -math.inf, spec.hi + 1, spec.lo - 1)))
        return kind, build_message(spec.address, (bad,))
    if kind == "path_id":
        ids = [s for s in specs if s.kind == "id"]
        spec = rng.choice(ids)
        return kind, build_message(spec.address, (rng.choice(("../x", "/etc/passwd",
                                                              "a/../../b")),))
    if kind == "unknown":
        return kind, build_message(f"/riff/nope{rng.randrange(10**6)}", (1,))
    if kind == "no_slash":
        return kind, _raw(f"riff{rng.randrange(10**6)}", "")
    # bad_bundle: a bundle element claiming more bytes than there are
    inner = build_message(spec.address, (1,))
    return kind, (_pad(b"#bundle") + struct.pack(">Q", 1)
                  + struct.pack(">i", len(inner) + rng.randrange(4, 400)) + inner)


def read_state(client: OscClient, round_no: int) -> dict[str, Any]:
    """Every parameter the daemon replies to ``/riff/state`` with (the round_no-th ask)."""
    before = {a: client.count(a) for a in (s.address for s in PARAMETERS.values())}
    pongs = client.count("/riff/pong")
    client.send("/riff/state")
    client.send("/riff/ping")
    client.wait_reply("/riff/pong", pongs + 1)
    out = {}
    for spec in PARAMETERS.values():
        replies = client.replies.get(spec.address, [])
        if len(replies) > before[spec.address]:
            out[spec.address] = replies[-1][1]
    assert out, f"no state in round {round_no}"
    return out


def fuzz(packets: int, workdir: Path, *, seed: int = 1, batch: int = 200) -> dict[str, Any]:
    """Run the fuzz against a fresh daemon in ``workdir``; returns the figures."""
    port = free_udp_port()
    daemon = Daemon(["--model", "test-tones", "--tempo", "240", "--bars", "1", "--steps", "2",
                     "--output", str(workdir / "live.wav"), "--osc-host", "127.0.0.1",
                     "--osc-port", str(port)])
    rng = random.Random(seed)
    kinds: Counter[str] = Counter()
    client: OscClient | None = None
    try:
        daemon.wait_for("OSC listening")
        client = OscClient(port)
        daemon.wait_for("clip 1 started", timeout=300)
        state_before = read_state(client, 1)
        clips_before = len(re.findall(r"clip \d+ started", daemon.text()))
        t0 = time.monotonic()
        sent = 0
        pongs = client.count("/riff/pong")
        while sent < packets:
            for _ in range(min(batch, packets - sent)):
                kind, data = malformed(rng)
                kinds[kind] += 1
                client.sock.sendto(data, client.server)
                sent += 1
            client.send("/riff/ping")
            pongs += 1
            client.wait_reply("/riff/pong", pongs)
        elapsed = time.monotonic() - t0
        state_after = read_state(client, 2)
        wait_until = time.monotonic() + 10
        while len(re.findall(r"clip \d+ started", daemon.text())) < clips_before + 2:
            if time.monotonic() > wait_until:
                break
            time.sleep(0.1)
        clips_after = len(re.findall(r"clip \d+ started", daemon.text()))
        errors_seen = len(client.errors)
    finally:
        if client is not None:
            client.close()
        rc = daemon.finish()
    log = daemon.text()
    stats_lines = re.findall(r"OSC stopped: (\{.*\})", log)
    stats = json.loads(stats_lines[-1].replace("'", '"')) if stats_lines else {}
    changed = {a: (state_before[a], state_after.get(a)) for a in state_before
               if state_before[a] != state_after.get(a)}
    return {
        "packets": packets, "seed": seed, "exit_status": rc, "kinds": dict(sorted(kinds.items())),
        "seconds": round(elapsed, 2), "packets_per_s": round(packets / elapsed),
        "server_errors": stats.get("errors"), "server_received": stats.get("received"),
        "server_applied": stats.get("applied"), "server_dropped": stats.get("dropped"),
        "every_packet_counted": stats.get("errors") == packets,
        "error_replies_received": errors_seen,
        "state_unchanged": not changed, "state_changes": changed,
        "clips_during_and_after": clips_after - clips_before,
        "still_playing": clips_after >= clips_before + 2,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--batch", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="riff-fuzz-") as tmp:
        result = fuzz(args.packets, Path(tmp), seed=args.seed, batch=args.batch)
    print(json.dumps(result, indent=2))
    return 0 if result["every_packet_counted"] and result["state_unchanged"] \
        and result["still_playing"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
