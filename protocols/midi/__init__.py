"""MIDI: inputs, maps, learn, clock and feedback.

``jack_input`` (JACK MIDI ports) and ``rtmidi_input`` (ALSA, JACK or CoreMIDI through
python-rtmidi) deliver raw messages; ``router`` looks them up in a ``map`` (TOML: CC, notes,
program change) and drives the engine; ``clock`` turns MIDI clock into tempo and bar
positions for the transport; ``feedback`` echoes parameter changes as CC.

Threading model: the inputs' own threads (JACK's process callback, rtmidi's callback) only
copy events and hand them to the asyncio loop with ``call_soon_threadsafe``; routing, learn,
clock following and feedback run on the loop.
"""
