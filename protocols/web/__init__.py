"""The web side of ``riff run --http``: the monitor page, OSCQuery and mDNS advertising.

- :mod:`protocols.web.server`: :class:`~protocols.web.server.WebConfig` and
  :func:`~protocols.web.server.start_web`, which ``protocols.surfaces`` calls: uvicorn on the
  daemon's own asyncio loop, without its signal handlers.
- :mod:`protocols.web.app`: the FastAPI app (routes, the WebSocket's guards and session).
- :mod:`protocols.web.monitor`: ``/monitor``, its status document and the page's commands,
  which take the OSC server's validation path.
- :mod:`protocols.web.pictures`: spectrogram pictures of the clips on the timeline.
- :mod:`protocols.web.oscquery`: the OSC address space as OSCQuery JSON, built from
  :data:`engine.live.state.PARAMETERS` with the current values.
- :mod:`protocols.web.advertise`: zeroconf (mDNS) records so OSCQuery clients find the engine.

Thread: everything runs on the daemon's asyncio loop; handlers only read the engine's state
and status or apply one command (cheap, non-blocking); pictures are drawn in a worker thread.
"""
