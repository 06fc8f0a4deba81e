"""The parts of libjack's C API that JACK-Client does not wrap, through cffi (ABI mode).

JACK-Client (the ``jack`` module) covers clients, ports and callbacks but not port latency.
This module declares the latency functions itself and calls them on the raw pointers of
JACK-Client's objects (``client._ptr``, ``port._ptr``), so both share one libjack.

Threads: :func:`set_latency_callback` runs on the control thread; the callback it installs
runs on JACK's notification thread (never the process thread), where
:func:`set_port_latency` and :func:`port_latency` may be called.
"""

from __future__ import annotations

import ctypes.util
from collections.abc import Callable
from typing import Any

import cffi

CAPTURE, PLAYBACK = 0, 1  # jack_latency_callback_mode_t

_CDEF = """
typedef struct _jack_client jack_client_t;
typedef struct _jack_port jack_port_t;
typedef uint32_t jack_nframes_t;
typedef enum { JackCaptureLatency, JackPlaybackLatency } jack_latency_callback_mode_t;
typedef struct { jack_nframes_t min; jack_nframes_t max; } jack_latency_range_t;
typedef void (*JackLatencyCallback)(jack_latency_callback_mode_t mode, void *arg);
int jack_set_latency_callback(jack_client_t *client, JackLatencyCallback cb, void *arg);
void jack_port_set_latency_range(jack_port_t *port, jack_latency_callback_mode_t mode,
                                 jack_latency_range_t *range);
void jack_port_get_latency_range(jack_port_t *port, jack_latency_callback_mode_t mode,
                                 jack_latency_range_t *range);
int jack_recompute_total_latencies(jack_client_t *client);
typedef int (*JackProcessCallback)(jack_nframes_t nframes, void *arg);
int jack_set_process_callback(jack_client_t *client, JackProcessCallback cb, void *arg);
"""

ffi = cffi.FFI()
ffi.cdef(_CDEF)
lib: Any = ffi.dlopen(ctypes.util.find_library("jack") or "libjack.so.0")


def _ptr(obj: Any, ctype: str) -> Any:
    """The raw pointer of a JACK-Client object (client or port) as a pointer of this FFI."""
    import jack

    return ffi.cast(ctype, int(jack._ffi.cast("uintptr_t", obj._ptr)))


def set_latency_callback(client: Any, callback: Callable[[int], None]) -> Any:
    """Install ``callback(mode)`` (``CAPTURE`` or ``PLAYBACK``) as ``client``'s latency
    callback; returns the cffi handle, which the caller must keep alive as long as the client.
    Control thread, before the client is activated."""
    handle = ffi.callback("JackLatencyCallback",
                          lambda mode, arg: callback(int(mode)),
                          onerror=_report_error)
    if lib.jack_set_latency_callback(_ptr(client, "jack_client_t *"), handle, ffi.NULL):
        raise RuntimeError("jack_set_latency_callback failed")
    return handle


def _report_error(exc_type: Any, exc: BaseException, tb: Any) -> None:
    """A latency callback raised: log it (notification thread)."""
    import logging

    logging.getLogger(__name__).error("JACK latency callback failed: %r", exc,
                                      exc_info=(exc_type, exc, tb))


def set_port_latency(port: Any, mode: int, lo: int, hi: int) -> None:
    """Set ``port``'s latency range for ``mode`` (notification thread, in the callback)."""
    rng = ffi.new("jack_latency_range_t *", {"min": lo, "max": hi})
    lib.jack_port_set_latency_range(_ptr(port, "jack_port_t *"), mode, rng)


def port_latency(port: Any, mode: int) -> tuple[int, int]:
    """``port``'s latency range ``(min, max)`` in frames for ``mode`` (any non-real-time
    thread; works for other clients' ports too)."""
    rng = ffi.new("jack_latency_range_t *")
    lib.jack_port_get_latency_range(_ptr(port, "jack_port_t *"), mode, rng)
    return int(rng.min), int(rng.max)


def recompute_latencies(client: Any) -> None:
    """Ask the server to recompute every port's latency (control thread)."""
    lib.jack_recompute_total_latencies(_ptr(client, "jack_client_t *"))
