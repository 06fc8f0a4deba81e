"""Shared fixtures: a JACK server for tests that need one.

``scripts/test`` starts a private ``jackd -d dummy`` and names it in ``JACK_DEFAULT_SERVER``.
When run without it, tests marked ``jack`` start their own server for the session.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest


def _server_answers(name: str) -> bool:
    import jack

    try:
        client = jack.Client(f"probe-{uuid.uuid4().hex[:6]}", no_start_server=True,
                             servername=name)
    except jack.JackOpenError:
        return False
    client.close()
    return True


@pytest.fixture(autouse=True)
def _user_config_home(tmp_path_factory: pytest.TempPathFactory,
                      monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty ``XDG_CONFIG_HOME`` (subprocesses inherit it), so no test
    reads the developer's presets or writes into their config directory."""
    home = tmp_path_factory.mktemp("config-home")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def jack_server() -> Iterator[str]:
    """The name of a running JACK server (dummy backend, 48 kHz, 256 frames)."""
    os.environ["JACK_NO_START_SERVER"] = "1"
    name = os.environ.get("JACK_DEFAULT_SERVER")
    if name and _server_answers(name):
        yield name
        return
    if shutil.which("jackd") is None:
        pytest.skip("jackd is not installed")
    name = f"riff-pytest-{uuid.uuid4().hex[:8]}"
    proc = subprocess.Popen(
        ["jackd", "-n", name, "-d", "dummy", "-r", "48000", "-p", "256"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not _server_answers(name):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"jackd did not start (exit {proc.poll()})")
            time.sleep(0.05)
        yield name
    finally:
        proc.terminate()
        proc.wait(timeout=10)
