"""Takes: recording a performance, and rendering it (again) offline.

``recorder`` writes the engine's output to an audio file through a preallocated ring;
``control_log`` writes and reads the JSON Lines log of commands, requests and clip starts;
``recording`` pairs them as one take; ``rerender`` replays a take's log with the model to
reproduce its audio; ``render`` is the one-shot request -> image + audio (or clip) renderer
that ``riff render`` and ``riff serve`` use; ``audio_to_audio`` riffs on a recording window by
window.

Threading model: the audio thread calls only ``Recording.write``/``Recorder.write`` (a copy
into the ring, no allocation, no lock); the recorder's writer thread drains the ring to disk
and reports write errors and ring overflows as they happen; a take's stop (joining the writer,
closing the files, encoding FLAC) runs in the loop's executor; everything else runs on the
control loop or in a command-line process. ``render`` runs on the
server's generation thread.
"""
