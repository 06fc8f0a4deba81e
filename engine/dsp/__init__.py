"""Signal processing: Riffusion's spectrogram images, STFT, phase reconstruction, audio files.

``spectrogram`` is the image codec (mel parameters, EXIF tags, loop metadata); ``stft`` and
``pghi`` the transforms; ``phase`` turns mel magnitudes back into audio (``fast``,
``quality``, ``riffusion``; circular for loops); ``kernels`` holds the numba loops they share;
``audio_io`` reads and writes audio files; ``tempo`` estimates a recording's tempo and first
beat.

Threading model: pure functions on arrays, callable from any thread except JACK's process
callback (they allocate). numba kernels release no locks of their own.
"""
