"""The model side: Riffusion requests, prompt weighting, seed images and the pipeline.

``request`` holds Riffusion's ``InferenceInput`` as frozen dataclasses; ``prompt_weighting``
parses ``(word:1.3)`` syntax; ``seed_images`` looks seed and mask ids up by name in folders;
``loading`` resolves a model name (hub id from the local cache, a folder, or ``tiny``);
``tiny`` builds the small random model used offline; ``pipeline`` is
:class:`~engine.model.pipeline.RiffusionGenerator`, Riffusion's algorithm on diffusers parts;
``compat`` shapes it as the guides' ``RiffusionPipeline`` and Replicate's request.

Threading model: a generator is used by one thread at a time (the worker process's main
thread, or a server's generation thread); its ``progress`` and ``cancel`` callbacks run on that
thread between denoising steps. ``request`` and ``seed_images`` import no torch and are safe
anywhere.
"""
