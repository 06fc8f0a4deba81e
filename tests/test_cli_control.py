"""``riff preset`` and ``riff osc`` against a running OSC server."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.control_surface_helpers import Served, served

ROOT = Path(__file__).resolve().parent.parent


def riff(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "protocols.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def osc(tmp_path: Path) -> Iterator[Served]:
    yield from served(tmp_path)


def test_osc_and_remote_presets(osc: Served, tmp_path: Path) -> None:
    port = str(osc.addr[1])
    assert riff("osc", "/riff/prompt", "cosmic disco", "--osc-port", port).returncode == 0
    assert riff("osc", "/riff/steps", "30", "--osc-port", port).returncode == 0
    assert osc.lt.call(lambda: (osc.engine.state.get("prompt"), osc.engine.state.get("steps"))
                       ) == ("cosmic disco", 30)
    bad = riff("osc", "/riff/steps", "3000", "--osc-port", port)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "steps" in bad.stderr
    state = riff("osc", "/riff/state", "--osc-port", port)
    assert "/riff/prompt cosmic disco" in state.stdout.splitlines()
    assert riff("preset", "save", "disco", "--osc-port", port).returncode == 0
    assert (tmp_path / "disco.toml").is_file()
    riff("osc", "/riff/prompt", "other", "--osc-port", port)
    assert riff("preset", "load", "disco", "--osc-port", port).returncode == 0
    assert osc.lt.call(lambda: osc.engine.state.get("prompt")) == "cosmic disco"
    missing = riff("preset", "load", "nope", "--osc-port", port)
    assert missing.returncode == 1 and "nope" in missing.stderr
    shown = riff("preset", "show", "disco", "--preset-dir", str(tmp_path))
    assert shown.returncode == 0 and 'prompt = "cosmic disco"' in shown.stdout
    listed = riff("preset", "list", "--preset-dir", str(tmp_path))
    assert "disco" in listed.stdout and "nanokontrol2" in listed.stdout


def test_no_engine_is_one_line_error() -> None:
    out = riff("osc", "/riff/ping", "--osc-port", "9", "--timeout", "0.3")
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "no answer" in out.stderr
    out = riff("preset", "show", "../etc")
    assert out.returncode == 1 and "Traceback" not in out.stderr
