"""HTTP: ``riff serve``, Riffusion's ``/run_inference/`` and the engine's ``/v1`` API.

``app`` builds the FastAPI application; ``models`` are its pydantic request bodies; ``guard``
checks size, JSON shape and the bearer token; ``queue`` is the bounded in-order generation
queue (503 with Retry-After when full); ``media`` encodes JPEG, PNG and audio data URIs;
``metrics`` counts for ``/metrics``; ``upload`` and ``audio_routes`` serve
``/v1/audio_to_audio``; ``cog`` answers Replicate's ``/predictions``; ``ray_serve`` serves the
same app from a Ray Serve pool of generator replicas (``riff serve --ray``, needs the ``ray``
extra; imported only then).

Threading model: handlers run on uvicorn's asyncio loop; generation runs one request at a time
on the queue's single generation thread, never on the loop.
"""
