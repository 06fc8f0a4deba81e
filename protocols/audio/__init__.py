"""Audio out: the JACK client, and the file output for offline runs.

``jack_output`` registers the ``riff`` client's ports and renders the player into them;
``file_output`` drives the same player against a sample clock and writes a file, for
``riff run --offline`` and tests.

Threading model: JACK calls the process callback on its real-time thread; that callback only
renders the player into the port buffers and counts (no allocation, no locks, no I/O). The
file output's render loop runs on its own thread, which plays the audio thread's part.
"""
