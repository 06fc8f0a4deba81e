"""Loading model components: hub id, local diffusers folder or the tiny random model.

The engine never downloads at run time: a hub id is looked up in the local Hugging Face cache
only (no network call, so nothing can hang on an unreachable hub). When it is missing the error
says how to download it or which folder to pass instead.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.errors import InvalidRequest, ModelUnavailable

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "riffusion/riffusion-model-v1"
TINY = "tiny"

#: Scheduler names accepted by ``scheduler=`` and requests, with their diffusers classes.
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "lms": ("LMSDiscreteScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpmpp": ("DPMSolverMultistepScheduler", {}),
    "dpmpp_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "dpm_single": ("DPMSolverSinglestepScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
}
_ALIASES = {"dpm++": "dpmpp", "dpm++_sde": "dpmpp_sde", "euler-a": "euler_a", "k_lms": "lms"}
_COMPONENT_FOLDERS = ("vae", "unet", "text_encoder", "tokenizer", "scheduler")


@dataclass
class ModelParts:
    """Loaded components, on their device and dtype, plus where they came from."""

    vae: Any
    text_encoder: Any
    tokenizer: Any
    unet: Any
    scheduler: Any
    device: torch.device
    dtype: torch.dtype
    source: str


def scheduler_name(name: str) -> str:
    """The canonical scheduler name for ``name`` (``dpm++`` -> ``dpmpp``); InvalidRequest else."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in SCHEDULERS:
        raise InvalidRequest(
            f"unknown scheduler {name!r} (choose from: {', '.join(sorted(SCHEDULERS))})"
        )
    return key


def make_scheduler(base: Any, name: str | None) -> Any:
    """A fresh scheduler: the model's own (``name`` None) or ``name`` built from its config."""
    import diffusers

    if name is None:
        return type(base).from_config(base.config)
    class_name, extra = SCHEDULERS[scheduler_name(name)]
    cls = getattr(diffusers, class_name)
    return cls.from_config(base.config, **extra)


def pick_device(device: str) -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an explicit device must be available."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        out = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidRequest(f"unknown device {device!r} (use auto, cpu, cuda, mps)") from exc
    if out.type == "cuda" and not torch.cuda.is_available():
        raise ModelUnavailable(f"device {device!r} requested but no CUDA GPU is available")
    if out.type == "cuda" and (out.index or 0) >= torch.cuda.device_count():
        raise ModelUnavailable(
            f"device {device!r} requested but only {torch.cuda.device_count()} GPU(s) exist"
        )
    if out.type not in ("cpu", "cuda", "mps"):
        raise InvalidRequest(f"unsupported device {device!r} (use auto, cpu, cuda, mps)")
    if out.type == "mps" and not torch.backends.mps.is_available():
        raise ModelUnavailable("device 'mps' requested but MPS is not available")
    return out


def _hub_folder(model: str) -> Path:
    """The cached snapshot of hub id ``model``, without touching the network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(model, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError, OSError) as exc:
        logger.debug("hub cache lookup of %s failed: %r", model, exc)
        raise ModelUnavailable(
            f"model {model!r} is not in the local Hugging Face cache and the engine does not "
            f"download at run time; download it once with `hf download {model}` (about 4 GB), "
            "or pass --model PATH to a local diffusers folder (or --model tiny for a "
            "test run)"
        ) from None


def _looks_like_path(model: str) -> bool:
    return model.startswith((".", "/", "~")) or Path(model).exists() or model.count("/") > 1


def load_parts(model: str, device: str = "auto") -> ModelParts:
    """Load the components of ``model`` (hub id, folder or ``tiny``) onto ``device``."""
    dev = pick_device(device)
    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    if model == TINY:
        from engine.model.tiny import build_tiny_components

        logger.warning(
            "using the tiny random model: it makes noise, not music (for tests and smoke runs)"
        )
        tiny = build_tiny_components()
        parts = [tiny.vae, tiny.text_encoder, tiny.tokenizer, tiny.unet, tiny.scheduler]
        source = TINY
    else:
        folder = Path(model).expanduser() if _looks_like_path(model) else _hub_folder(model)
        parts = _load_folder(folder, dtype)
        source = str(model)
    vae, text_encoder, tokenizer, unet, scheduler = parts
    for module in (vae, text_encoder, unet):
        if module.dtype != dtype:
            module.to(dtype=dtype)
        module.to(device=dev)
        module.eval()
        module.requires_grad_(False)
    return ModelParts(vae, text_encoder, tokenizer, unet, scheduler, dev, dtype, source)


def _load_folder(folder: Path, dtype: torch.dtype) -> list[Any]:
    """Load the five components from a diffusers folder; ModelUnavailable if it is not one."""
    missing = [name for name in _COMPONENT_FOLDERS if not (folder / name).is_dir()]
    if not folder.is_dir() or missing:
        what = "does not exist" if not folder.is_dir() else f"lacks {', '.join(missing)}"
        raise ModelUnavailable(
            f"{folder} is not a diffusers model folder ({what}); it needs vae/, unet/, "
            "text_encoder/, tokenizer/ and scheduler/ subfolders"
        )
    import diffusers
    from transformers import CLIPTextModel, CLIPTokenizer

    # Without accelerate, say so up front instead of letting diffusers warn on every load.
    lean = importlib.util.find_spec("accelerate") is not None
    kwargs: dict[str, Any] = {"torch_dtype": dtype, "low_cpu_mem_usage": lean}
    try:
        config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        scheduler_cls = getattr(diffusers, str(config.get("_class_name", "PNDMScheduler")))
        return [
            diffusers.AutoencoderKL.from_pretrained(folder / "vae", **kwargs),
            CLIPTextModel.from_pretrained(folder / "text_encoder"),
            CLIPTokenizer.from_pretrained(folder / "tokenizer"),
            diffusers.UNet2DConditionModel.from_pretrained(folder / "unet", **kwargs),
            scheduler_cls.from_pretrained(folder / "scheduler"),
        ]
    except (OSError, ValueError, AttributeError, json.JSONDecodeError) as exc:
        raise ModelUnavailable(f"cannot load the model in {folder}: {exc}") from exc
