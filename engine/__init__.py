"""riffusion-engine core: spectrogram codec, generation pipeline, transport, planner, player.

Nothing in this package imports :mod:`protocols`; wire formats (OSC, MIDI, JACK, HTTP, CLI)
translate into the typed commands defined here.
"""

__version__ = "0.1.0"
