"""riffusion-engine core: everything between a typed command and a buffer of audio.

Subpackages, in the order a control change travels through them:

- :mod:`engine.live`: state, transport, jam planner, scheduler, generator worker, clip
  conform, player. The control plane (one asyncio loop) and the hand-off to the audio thread.
- :mod:`engine.model`: requests, prompt weighting, seed images, model loading and the
  Riffusion pipeline. Runs in the generator process (or a server's generation thread).
- :mod:`engine.dsp`: Riffusion's spectrogram image format, STFT, phase reconstruction,
  audio files. Pure functions, callable from any thread.
- :mod:`engine.takes`: recording, control logs, offline rendering and re-rendering.

Beside them: :mod:`engine.errors` (the exceptions users see), :mod:`engine.presets` (TOML
presets, saved into the user's config folder, never the shipped one), :mod:`engine.resources`
(the shipped seed images, presets and MIDI maps, in a checkout or an installed wheel).

Nothing in this package imports :mod:`protocols`; wire formats (OSC, MIDI, JACK, HTTP, CLI)
translate into the typed commands defined here.
"""

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """``from engine import RiffusionPipeline`` (the guide's usage), imported lazily so that
    ``import engine`` stays free of torch (the daemon process never loads it)."""
    if name in ("RiffusionPipeline", "spectrogram_to_audio"):
        from engine.model import compat

        return getattr(compat, name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
