"""Audio out: the JACK client, and the file output for offline runs.

``jack_output`` is the one ``riff`` client: its output ports (registered after activation, so
connectable at once), the JACK MIDI ports of hosted inputs, the latency and shutdown callbacks
and the reconnection after a server restart. ``jack_table`` is its compiled player (a numba
``cfunc`` process callback that never takes the GIL and mixes the clips from a table of voices
the player publishes ahead); ``jack_rt`` the older compiled callback that copies a ring a
render thread fills from the player; ``jack_c`` declares the libjack calls JACK-Client does not
wrap (latency, the raw process callback). ``file_output`` drives the same player against a
sample clock and writes a file, for ``riff run --offline`` and tests.

Threading model: JACK calls the process callback on its real-time thread. The compiled one
(default) mixes the clips named by the voice table into the port buffers and writes counters,
without the GIL; the "riff-plan" thread runs the player's decisions (``Player.plan``) ahead and
publishes them (with ``compiled_player=False``, the "riff-render" thread renders into a ring
the callback copies). The Python one (``render_ahead=0``, needed for JACK transport and hosted
MIDI ports) renders the player itself (no allocation of buffers, no locks, no I/O, but the
GIL). The latency and shutdown callbacks run on JACK's notification thread; everything else on
the control thread (the asyncio loop). The file output's render loop runs on its own thread,
which plays the audio thread's part.
"""
