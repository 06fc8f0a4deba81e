"""Front ends: how the outside world reaches the engine, and how its audio leaves.

- :mod:`protocols.osc`: the ``/riff`` OSC namespace over UDP, with error replies and feedback.
- :mod:`protocols.midi`: MIDI input (JACK MIDI, rtmidi), maps, learn, MIDI clock, feedback.
- :mod:`protocols.http`: ``riff serve``, Riffusion's HTTP inference API and the engine's own.
- :mod:`protocols.audio`: the JACK client and the offline file output.
- :mod:`protocols.cli`: the ``riff`` command line.

Beside them: :mod:`protocols.control_target` (the commands OSC and MIDI share),
:mod:`protocols.surfaces` (starts OSC and MIDI for ``riff run``) and :mod:`protocols.remote`
(the client of a remote ``riff serve`` generator). Each module translates messages into
:mod:`engine` calls; the engine never imports this package.
"""
