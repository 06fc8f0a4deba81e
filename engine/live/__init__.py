"""The live engine: from a parameter change to a clip on the player's bar timeline.

``state`` (validated parameters) -> ``planner`` (which clip comes next) -> ``scheduler``
(look-ahead, latest wins, deadlines) -> ``worker`` (generator process) -> ``clip`` (tempo
lock, seamless loop) -> ``player`` (bar-line crossfades, repeat when late). ``transport`` is
the bar grid, ``jobs`` the typed job and clip records, ``wire`` their JSON form, ``control``
the :class:`~engine.live.control.Engine` facade that ties them together.

Threading model: ``control``, ``state``, ``planner``, ``scheduler`` and ``transport`` run on
one asyncio loop (the control plane) and never block it. ``worker`` runs the generator in a
separate process; the daemon side of it is called from the loop. ``player`` is the only
module the audio thread touches: it calls :meth:`Player.render <engine.live.player.Player.render>`
and nothing else, which reads preallocated buffers and never allocates or locks. This package
never imports torch on the daemon side (the worker process imports it).
"""
