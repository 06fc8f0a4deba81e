"""A tiny random diffusion model with Stable Diffusion 1.x shapes, built offline from configs.

It runs the same pipeline code as the real Riffusion model (4-channel latents, VAE scale factor
8, a CLIP text encoder, a cross-attention UNet, the Riffusion model's PNDM scheduler), but its
weights are random: it makes noise, not music. It exists so tests and smoke runs work on
machines without a GPU or the model hub. Everything is seeded, so two builds are identical.

The tokenizer is a real byte-level BPE in CLIP's format, with merges learnt from a small
built-in word list instead of CLIP's 49k-entry vocabulary (which is not available offline).
"""

from __future__ import annotations

import collections
import itertools
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

#: Seed of every random weight in the tiny model.
TINY_SEED = 0

#: Riffusion model v1's scheduler (PNDM with PLMS steps only, steps offset 1).
RIFFUSION_SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
}

_BOS = "<|startoftext|>"
_EOS = "<|endoftext|>"
_MAX_TOKENS = 77
_MERGES = 400

#: Words the tokenizer's merges are learnt from: music prompt vocabulary.
_CORPUS = """
jazz jazzy rapping rap hip hop funk funky rock metal techno house trance ambient drum bass
drums beat beats guitar piano violin cello saxophone trumpet synth synthesizer vocals voice
singing choir orchestra orchestral classical acoustic electric electronic dance disco reggae
blues soul country folk lofi chill chillwave dubstep garage breakbeat jungle ska punk indie
pop latin salsa samba bossa nova afrobeat gospel opera church organ harp flute clarinet
the a an of and with in on at by for from to slow fast loud soft deep dark bright warm
happy sad epic dreamy groovy heavy smooth sweet dirty distorted reverb delay echo rhythm
melody harmony chord chords minor major solo loop groove bpm tempo kick snare hat hihat
clap cymbal tom percussion bongo conga marimba xylophone bell bells strings brass horn
sunset sunrise night morning rain ocean space cosmic city street club party festival
""".split()


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's (and GPT-2's) reversible map from bytes to printable unicode characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, [chr(c) for c in codes], strict=True))


def _learn_merges(words: list[str], count: int) -> list[tuple[str, str]]:
    """Greedy byte-pair merges over ``words`` (ties broken alphabetically: deterministic)."""
    byte_map = _bytes_to_unicode()
    freq = collections.Counter(words)
    splits: dict[str, list[str]] = {}
    for word in freq:
        symbols = [byte_map[b] for b in word.encode()]
        symbols[-1] += "</w>"
        splits[word] = symbols
    merges: list[tuple[str, str]] = []
    for _ in range(count):
        pairs: collections.Counter[tuple[str, str]] = collections.Counter()
        for word, symbols in splits.items():
            for pair in itertools.pairwise(symbols):
                pairs[pair] += freq[word]
        if not pairs:
            break
        best = max(pairs.items(), key=lambda item: (item[1], [-ord(c) for c in "".join(item[0])]))
        pair = best[0]
        merges.append(pair)
        for word, symbols in splits.items():
            out: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
                    out.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            splits[word] = out
    return merges


def write_tokenizer_files(folder: Path) -> None:
    """Write ``vocab.json``, ``merges.txt`` and ``tokenizer_config.json`` in CLIP's format."""
    chars = list(_bytes_to_unicode().values())
    merges = _learn_merges(_CORPUS, _MERGES)
    tokens = chars + [c + "</w>" for c in chars] + ["".join(pair) for pair in merges]
    tokens += [_BOS, _EOS]
    vocab: dict[str, int] = {}
    for token in tokens:
        vocab.setdefault(token, len(vocab))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = {
        "model_max_length": _MAX_TOKENS,
        "bos_token": _BOS,
        "eos_token": _EOS,
        "unk_token": _EOS,
        "pad_token": _EOS,
        "tokenizer_class": "CLIPTokenizer",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")


@dataclass
class TinyComponents:
    """The five diffusers/transformers components of the tiny model."""

    vae: Any
    text_encoder: Any
    tokenizer: Any
    unet: Any
    scheduler: Any


def build_tiny_components() -> TinyComponents:
    """Build the tiny model from configs with seeded weights (no files, no network)."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    with tempfile.TemporaryDirectory(prefix="riff-tiny-tok-") as tmp:
        write_tokenizer_files(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp, model_max_length=_MAX_TOKENS)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        unet = UNet2DConditionModel(
            sample_size=64,
            in_channels=4,
            out_channels=4,
            # Attention only at the coarsest level keeps a 512 x 512 step fast on a CPU.
            down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
            block_out_channels=(32, 32, 64),
            layers_per_block=1,
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=32,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8, 8, 16, 16),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=512,
            scaling_factor=0.18215,
        )
        text_config = CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=_MAX_TOKENS,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            layer_norm_eps=1e-5,
        )
        text_encoder = CLIPTextModel(text_config)
    scheduler = PNDMScheduler(**RIFFUSION_SCHEDULER_CONFIG)
    modules: tuple[Any, ...] = (unet, vae, text_encoder)
    for module in modules:
        module.eval()
        module.requires_grad_(False)
    return TinyComponents(vae, text_encoder, tokenizer, unet, scheduler)


def save_tiny_model(folder: Path) -> Path:
    """Save the tiny model as a local diffusers folder (``model_index.json`` + subfolders)."""
    parts = build_tiny_components()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    parts.vae.save_pretrained(folder / "vae")
    parts.unet.save_pretrained(folder / "unet")
    parts.text_encoder.save_pretrained(folder / "text_encoder")
    parts.tokenizer.save_pretrained(folder / "tokenizer")
    parts.scheduler.save_pretrained(folder / "scheduler")
    index = {
        "_class_name": "StableDiffusionPipeline",
        "vae": ["diffusers", "AutoencoderKL"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", type(parts.scheduler).__name__],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    return folder
