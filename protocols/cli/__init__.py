"""The ``riff`` command line: one module per group of subcommands.

``main`` builds the parser and maps errors to exit codes; ``run`` is the live daemon (JACK,
OSC, MIDI, the engine loop); ``render`` renders clips; ``codec`` converts audio and images;
``serve`` starts the HTTP server; ``rerender`` replays a take; ``control`` manages presets
and sends OSC.

Threading model: each command runs in the main thread of its own process; ``run`` starts an
asyncio loop there and leaves the audio to JACK's thread. Only this package prints.
"""
