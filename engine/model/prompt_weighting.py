"""Prompt weighting and long prompts, as Riffusion embeds its prompts.

Syntax (the "long prompt weighting" convention Riffusion uses): ``(words)`` multiplies the
weight of ``words`` by 1.1, ``[words]`` divides it by 1.1, ``(words:1.3)`` multiplies it by
1.3; brackets nest; ``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\\\`` are literal characters; unclosed
brackets apply to the end of the prompt.

A prompt is cut into chunks of 75 tokens (at most 3, so 225 tokens), each encoded separately as
``<bos> 75 tokens <eos>`` and concatenated (77 embeddings per chunk). Each token's embedding is
multiplied by its weight, then the whole embedding is rescaled so its mean equals the unweighted
mean. Riffusion fails when the two prompts of an interpolation need different numbers of chunks;
here both are encoded with the larger number, which leaves every single-chunk result unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

logger = logging.getLogger(__name__)

#: Content tokens per chunk (the text encoder's 77 minus the start and end tokens).
CHUNK_TOKENS = 75
MAX_CHUNKS = 3
_UP = 1.1
_ESCAPES = {"\\(": "(", "\\)": ")", "\\[": "[", "\\]": "]", "\\\\": "\\"}


def parse_weights(text: str) -> list[tuple[str, float]]:
    """Split ``text`` into (text, weight) runs; neighbouring runs of equal weight are merged."""
    runs: list[list[Any]] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def scale(start: int, factor: float) -> None:
        for run in runs[start:]:
            run[1] *= factor

    i = 0
    n = len(text)
    while i < n:
        pair = text[i : i + 2]
        ch = text[i]
        if pair in _ESCAPES:
            runs.append([_ESCAPES[pair], 1.0])
            i += 2
        elif ch == "\\":
            i += 1  # a lone backslash is dropped, as in Riffusion's parser
        elif ch == "(":
            round_open.append(len(runs))
            i += 1
        elif ch == "[":
            square_open.append(len(runs))
            i += 1
        elif ch == ":":
            end = text.find(")", i)
            weight = _float_or_none(text[i + 1 : end]) if end > i else None
            if weight is not None and round_open:
                scale(round_open.pop(), weight)
                i = end + 1
            else:
                runs.append([":", 1.0])
                i += 1
        elif ch == ")":
            if round_open:
                scale(round_open.pop(), _UP)
            else:
                runs.append([")", 1.0])
            i += 1
        elif ch == "]":
            if square_open:
                scale(square_open.pop(), 1 / _UP)
            else:
                runs.append(["]", 1.0])
            i += 1
        else:
            j = i
            while j < n and text[j] not in "\\()[]:":
                j += 1
            runs.append([text[i:j], 1.0])
            i = j
    for start in round_open:
        scale(start, _UP)
    for start in square_open:
        scale(start, 1 / _UP)
    if not runs:
        runs = [["", 1.0]]
    merged: list[list[Any]] = [runs[0]]
    for run in runs[1:]:
        if run[1] == merged[-1][1]:
            merged[-1][0] += run[0]
        else:
            merged.append(run)
    return [(str(t), float(w)) for t, w in merged]


def _float_or_none(text: str) -> float | None:
    """A weight as Riffusion's pattern accepts it: optional sign, digits and dots only."""
    body = text[1:] if text[:1] in "+-" else text
    if not body or any(c not in "0123456789." for c in body):
        return None
    try:
        return float(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class TokenizedPrompt:
    """Content tokens (no start/end tokens) and their weights, at most 225 long."""

    tokens: tuple[int, ...]
    weights: tuple[float, ...]

    @property
    def chunks(self) -> int:
        """How many 77-token chunks the prompt needs (1 to 3)."""
        return max(1, min(MAX_CHUNKS, (len(self.tokens) - 1) // CHUNK_TOKENS + 1))


def tokenize_weighted(tokenizer: Any, prompt: str) -> TokenizedPrompt:
    """Tokenize each weighted run separately and cut the result at 225 tokens."""
    limit = CHUNK_TOKENS * MAX_CHUNKS
    tokens: list[int] = []
    weights: list[float] = []
    for text, weight in parse_weights(prompt):
        ids = list(tokenizer(text, verbose=False).input_ids[1:-1])
        tokens += ids
        weights += [weight] * len(ids)
        if len(tokens) > limit:
            break
    if len(tokens) > limit:
        logger.warning("prompt cut at %d tokens: %.60r...", limit, prompt)
    return TokenizedPrompt(tuple(tokens[:limit]), tuple(weights[:limit]))


def padded_ids_and_weights(
    prompt: TokenizedPrompt, chunks: int, bos: int, eos: int
) -> tuple[list[int], list[float]]:
    """Token ids ``[bos] + tokens + [eos]*`` (75*chunks + 2 long) and per-embedding weights.

    The weights line up with the concatenated chunk embeddings (77 per chunk): 1.0 at each
    chunk's start and end token and at padding.
    """
    length = CHUNK_TOKENS * chunks + 2
    ids = [bos, *prompt.tokens] + [eos] * (length - 1 - len(prompt.tokens))
    weights: list[float] = []
    for j in range(chunks):
        part = prompt.weights[j * CHUNK_TOKENS : (j + 1) * CHUNK_TOKENS]
        weights += [1.0, *part, 1.0]
    weights += [1.0] * (chunks * (CHUNK_TOKENS + 2) - len(weights))
    return ids, weights


def encode_chunks(text_encoder: Any, ids: list[int], chunks: int, device: Any) -> torch.Tensor:
    """Encode ``ids`` chunk by chunk; returns (1, 77 * chunks, hidden)."""
    tensor = torch.tensor([ids], dtype=torch.long, device=device)
    if chunks == 1:
        return text_encoder(tensor)[0]
    parts = []
    for i in range(chunks):
        chunk = tensor[:, i * CHUNK_TOKENS : (i + 1) * CHUNK_TOKENS + 2].clone()
        chunk[:, 0] = tensor[0, 0]
        chunk[:, -1] = tensor[0, -1]
        parts.append(text_encoder(chunk)[0])
    return torch.cat(parts, dim=1)


def weighted_embedding(
    tokenizer: Any, text_encoder: Any, prompt: str, chunks: int | None = None
) -> torch.Tensor:
    """The weighted, mean-rescaled embedding of ``prompt`` with at least ``chunks`` chunks."""
    tokenized = tokenize_weighted(tokenizer, prompt)
    n = max(tokenized.chunks, chunks or 1)
    device = text_encoder.device
    ids, weights = padded_ids_and_weights(
        tokenized, n, tokenizer.bos_token_id, tokenizer.eos_token_id
    )
    with torch.no_grad():
        embedding = encode_chunks(text_encoder, ids, n, device)
        weight = torch.tensor(weights, dtype=embedding.dtype, device=device)
        before = embedding.float().mean(dim=[-2, -1]).to(embedding.dtype)
        embedding = embedding * weight[None, :, None]
        after = embedding.float().mean(dim=[-2, -1]).to(embedding.dtype)
        # A mean of exactly 0 (a layer-normed encoder with zero biases, as the tiny model's)
        # would give 0/0 = NaN: the rescale is then the identity, as it is for equal means.
        ratio = torch.where(after == 0, torch.ones_like(after), before / after)
        embedding = embedding * ratio[:, None, None]
    return embedding
