"""The live web side of ``riff run``: OSCQuery, mDNS advertising and the monitor page.

- :mod:`protocols.web.http`: a small HTTP/1.1 responder on the daemon's asyncio loop (GET and
  HEAD, JSON and static text; no framework, so it starts with the control surfaces and never
  touches signal handling or threads).
- :mod:`protocols.web.oscquery`: the OSC address space as OSCQuery JSON, built from
  :data:`engine.live.state.PARAMETERS` with the current values.
- :mod:`protocols.web.advertise`: zeroconf (mDNS) records so OSCQuery clients find the engine.
- :mod:`protocols.web.monitor`: ``/monitor``, a page that polls ``/monitor/status``.
- :mod:`protocols.web.server`: :class:`~protocols.web.server.WebConfig` and
  :func:`~protocols.web.server.start_web`, which ``protocols.surfaces`` calls.

Thread: everything runs on the daemon's asyncio loop; handlers only read the engine's state
and status (cheap, non-blocking).
"""
