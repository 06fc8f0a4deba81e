"""The generation pipeline with the tiny random model: Riffusion's semantics and our fixes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from engine.dsp.spectrogram import TAG_LOOP_BPM, TAG_SAMPLE_RATE, LoopMeta, save_image
from engine.dsp.spectrogram import write_loop_meta as put_loop_meta
from engine.errors import Cancelled, InvalidRequest, ModelUnavailable, UnknownId
from engine.model.pipeline import RiffusionGenerator, slerp
from engine.model.prompt_weighting import parse_weights, tokenize_weighted, weighted_embedding
from engine.model.request import InferenceRequest, PromptInput
from engine.model.seed_images import SeedImageLibrary
from engine.model.tiny import save_tiny_model

WIDTH = 64
HEIGHT = 128


def _seed_image() -> Image.Image:
    """A structured 64 x 128 image: vertical gradient with beat-like stripes."""
    y = np.linspace(0, 255, HEIGHT, dtype=np.float32)[:, None]
    x = np.arange(WIDTH)[None, :]
    grey = np.clip(y * 0.6 + 90 * ((x // 8) % 2), 0, 255).astype(np.uint8)
    image = Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2))
    put_loop_meta(image, LoopMeta(bars=1, beats_per_bar=4, bpm=120.0))
    return image


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """The tiny model's small matrices run fastest on one thread (and on a busy CI box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def seed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("seeds")
    save_image(_seed_image(), folder / "beat.png")
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    mask[: HEIGHT // 2] = 255  # top half white: repaint; bottom half black: keep
    Image.fromarray(mask).save(folder / "mask_top.png")
    return folder


@pytest.fixture(scope="module")
def gen(seed_dir: Path) -> RiffusionGenerator:
    return RiffusionGenerator.load("tiny", device="cpu", seed_images=[seed_dir])


def _req(**changes: object) -> InferenceRequest:
    base = InferenceRequest(
        start=PromptInput("jazzy rapping", seed=42),
        end=PromptInput("church organ", seed=43),
        alpha=0.4,
        num_inference_steps=5,
        seed_image_id="beat",
    )
    return base.replace(**changes)


def _init_latents(gen: RiffusionGenerator, seed: int) -> torch.Tensor:
    plan = gen._plan(_req())
    generator = torch.Generator().manual_seed(seed)
    return gen.latent_scale * plan.init_dist.sample(generator=generator)


def test_same_request_same_output_and_seed_matters(gen: RiffusionGenerator) -> None:
    a = gen.generate(_req())
    b = RiffusionGenerator(gen.parts, gen.seed_images).generate(_req())  # empty caches
    assert torch.equal(a.latents, b.latents)
    assert a.image.tobytes() == b.image.tobytes()
    c = gen.generate(_req(start=PromptInput("jazzy rapping", seed=7)))
    assert not torch.allclose(a.latents, c.latents, atol=1e-3)
    assert a.image.size == (WIDTH, HEIGHT) and a.image.mode == "RGB"
    assert a.latents.shape == (1, 4, HEIGHT // 8, WIDTH // 8)


def test_image_carries_spectrogram_exif_and_seed_loop_meta(gen: RiffusionGenerator) -> None:
    exif = gen.generate(_req()).image.getexif()
    assert exif[TAG_SAMPLE_RATE] == 44100
    assert exif[TAG_LOOP_BPM] == pytest.approx(120.0)


def test_alpha_endpoints_equal_the_endpoints_own_renders(gen: RiffusionGenerator) -> None:
    start_only = gen.generate(_req(end=None, alpha=0.0))
    at_zero = gen.generate(_req(alpha=0.0))
    assert torch.equal(start_only.latents, at_zero.latents)
    # The seed latent is sampled with start.seed (as in Riffusion), so alpha 1 equals the end's
    # own render when both ends share a seed: the jam's prompt transitions.
    same_seed = _req(end=PromptInput("church organ", seed=42), alpha=1.0)
    at_one = gen.generate(same_seed)
    end_only = gen.generate(_req(start=PromptInput("church organ", seed=42), end=None, alpha=0))
    assert torch.allclose(at_one.latents, end_only.latents, atol=1e-4)
    middle = gen.generate(same_seed.replace(alpha=0.5))
    assert not torch.allclose(middle.latents, end_only.latents, atol=1e-3)


def test_denoising_near_zero_returns_nearly_the_seed(gen: RiffusionGenerator) -> None:
    init = _init_latents(gen, 42)
    calls = gen.unet_calls
    low = gen.generate(_req(start=PromptInput("x", seed=42, denoising=0.01), end=None))
    assert gen.unet_calls - calls == 1  # steps * strength < 1 still runs one step
    high = gen.generate(_req(start=PromptInput("x", seed=42, denoising=0.75), end=None))
    err_low = (low.latents - init).abs().mean().item()
    err_high = (high.latents - init).abs().mean().item()
    assert torch.isfinite(low.latents).all()
    assert err_low < 0.2 * err_high


def test_schedule_never_decodes_unrefined_noise(gen: RiffusionGenerator) -> None:
    from diffusers import DDIMScheduler

    no_offset = DDIMScheduler(steps_offset=0)
    timesteps, noise_t, begin = gen._schedule(no_offset, 50, 0.01)  # Riffusion: 0 steps
    assert len(timesteps) == 1 and noise_t == no_offset.timesteps[-1] and begin == 49
    timesteps, noise_t, _ = gen._schedule(no_offset, 50, 0.5)
    assert len(timesteps) == 25 and noise_t == timesteps[0]


def test_mask_keeps_its_black_area(gen: RiffusionGenerator) -> None:
    init = _init_latents(gen, 42)
    result = gen.generate(_req(mask_image_id="mask_top", alpha=0.0))
    rows = HEIGHT // 8 // 2
    repaint = (result.latents[..., :rows, :] - init[..., :rows, :]).abs().mean().item()
    kept = (result.latents[..., rows:, :] - init[..., rows:, :]).abs().mean().item()
    assert kept < 0.1 * repaint
    unmasked = gen.generate(_req(alpha=0.0))
    assert (unmasked.latents[..., rows:, :] - init[..., rows:, :]).abs().mean().item() > 5 * kept


def test_negative_prompt_is_honoured(gen: RiffusionGenerator) -> None:
    plain = gen.generate(_req(end=None))
    empty = gen.generate(_req(start=PromptInput("jazzy rapping", seed=42, negative_prompt="")))
    negative = gen.generate(
        _req(start=PromptInput("jazzy rapping", seed=42, negative_prompt="drums"), end=None)
    )
    assert torch.equal(plain.latents, gen.generate(_req(alpha=0.0)).latents)
    assert torch.allclose(empty.latents, gen.generate(_req()).latents)
    assert not torch.allclose(plain.latents, negative.latents, atol=1e-3)


def test_long_prompts_and_prompts_of_different_lengths(gen: RiffusionGenerator) -> None:
    long_prompt = " ".join(["funky bass with drums"] * 60)
    assert gen.chunks_needed(long_prompt) == 3  # > 225 tokens: cut at three chunks
    medium = " ".join(["jazz"] * 100)
    assert gen.chunks_needed(medium) == 2
    assert gen.text_embedding(medium, 2).shape == (1, 154, 32)
    result = gen.generate(_req(end=PromptInput(medium, seed=43), alpha=0.5))
    assert torch.isfinite(result.latents).all()


def test_progress_per_step_and_cancel_within_one_step(gen: RiffusionGenerator) -> None:
    seen: list[tuple[int, int]] = []
    gen.generate(_req(), progress=lambda i, n: seen.append((i, n)))
    assert seen == [(i, 4) for i in range(1, 5)]  # int(5 * 0.75) + offset 1 -> 4 steps
    seen.clear()
    calls = gen.unet_calls
    with pytest.raises(Cancelled):
        gen.generate(
            _req(), progress=lambda i, n: seen.append((i, n)), cancel=lambda: len(seen) >= 2
        )
    assert gen.unet_calls - calls == 2 and len(seen) == 2


def test_batched_alphas_equal_separate_renders(gen: RiffusionGenerator) -> None:
    alphas = [0.0, 0.3, 1.0]
    batched = gen.generate_alphas(_req(), alphas)
    for alpha, result in zip(alphas, batched, strict=True):
        single = gen.generate(_req(alpha=alpha))
        assert result.request.alpha == alpha
        assert torch.allclose(result.latents, single.latents, atol=1e-4)


def test_text_to_image_and_width(gen: RiffusionGenerator) -> None:
    txt = gen.generate(_req(seed_image_id=None, width=WIDTH))
    assert txt.image.size == (WIDTH, 512)  # a full spectrogram: 512 mel bins
    wider = gen.generate(_req(width=72))  # odd latent width (9): not a multiple of the UNet's 4
    assert wider.image.size == (72, HEIGHT) and wider.latents.shape[-1] == 9


@pytest.mark.parametrize("name", ["ddim", "euler", "dpmpp", "lms"])
def test_schedulers_by_name(gen: RiffusionGenerator, name: str) -> None:
    result = gen.generate(_req(scheduler=name, num_inference_steps=4))
    assert torch.isfinite(result.latents).all()
    assert not torch.allclose(result.latents, gen.generate(_req()).latents, atol=1e-3)


def test_bad_requests_are_rejected_clearly(gen: RiffusionGenerator) -> None:
    with pytest.raises(UnknownId, match=r"available: (\w+, )*beat, .*mask_top"):
        gen.generate(_req(seed_image_id="nope"))
    with pytest.raises(InvalidRequest, match="plain name"):
        InferenceRequest.from_dict({"start": {"prompt": "x"}, "seed_image_id": "../x"})
    with pytest.raises(InvalidRequest, match="alpha"):
        InferenceRequest.from_dict({"start": {"prompt": "x"}, "alpha": 1.5})
    with pytest.raises(InvalidRequest, match="num_inference_steps"):
        InferenceRequest.from_dict({"start": {"prompt": "x"}, "num_inference_steps": 0})
    with pytest.raises(UnknownId, match="unknown mask 'nomask'"):
        gen.generate(_req(mask_image_id="nomask"))
    with pytest.raises(InvalidRequest, match="mask needs a seed image"):
        gen.generate(_req(seed_image_id=None, mask_image_id="mask_top"))
    with pytest.raises(InvalidRequest, match="unknown scheduler"):
        gen.generate(_req(scheduler="nonsense"))


def test_slerp_endpoints_exact() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    assert torch.equal(slerp(0.0, a, b), a) and torch.equal(slerp(1.0, a, b), b)
    mid = slerp(0.5, a, b)
    assert abs(mid.norm().item() - a.norm().item()) < 0.1 * a.norm().item()  # stays on sphere


def test_seed_library_resolves_plain_ids_only(tmp_path: Path, seed_dir: Path) -> None:
    user = tmp_path / "user"
    user.mkdir()
    Image.new("RGB", (8, 8), "white").save(user / "beat.png")
    lib = SeedImageLibrary([user, seed_dir], builtin=False)
    assert lib.resolve("beat") == user / "beat.png"  # user folders first
    assert lib.ids() == ["beat", "mask_top"]
    assert lib.load("mask_top").size == (WIDTH, HEIGHT)
    for bad in ["../x", "/etc/passwd", "a/b", ""]:
        with pytest.raises(InvalidRequest):
            lib.resolve(bad)
    with pytest.raises(UnknownId, match=r"seed image 'missing' \(available: beat, mask_top"):
        lib.resolve("missing")
    # Masks share the library; the error names what was asked for.
    with pytest.raises(UnknownId, match="unknown mask 'missing'"):
        lib.resolve("missing", "mask")
    with pytest.raises(InvalidRequest, match="mask id"):
        lib.resolve("../x", "mask")
    assert SeedImageLibrary().folders[-1].name == "seed_images"


def test_parse_weights_syntax() -> None:
    assert parse_weights("normal text") == [("normal text", 1.0)]
    assert parse_weights("an (important) word") == [
        ("an ", 1.0),
        ("important", pytest.approx(1.1)),
        (" word", 1.0),
    ]
    assert parse_weights("(unbalanced") == [("unbalanced", pytest.approx(1.1))]
    assert parse_weights("\\(literal\\]") == [("(literal]", 1.0)]
    assert parse_weights("[quiet] (loud:1.5) x") == [
        ("quiet", pytest.approx(1 / 1.1)),
        (" ", 1.0),
        ("loud", 1.5),
        (" x", 1.0),
    ]
    nested = dict(parse_weights("a (((house:1.3)) [on] a (hill:0.5), sun"))
    assert nested["house"] == pytest.approx(1.3 * 1.1 * 1.1)
    assert nested["hill"] == pytest.approx(0.55)
    assert parse_weights("ratio 1:2)") == [("ratio 1:2)", 1.0)]
    assert parse_weights("") == [("", 1.0)]


def test_weighting_changes_only_the_weighted_tokens(gen: RiffusionGenerator) -> None:
    tok, enc = gen.parts.tokenizer, gen.parts.text_encoder
    plain_tokens = tokenize_weighted(tok, "jazzy rapping drums")
    weighted_tokens = tokenize_weighted(tok, "jazzy (rapping:1.5) drums")
    assert plain_tokens.tokens == weighted_tokens.tokens
    plain = weighted_embedding(tok, enc, "jazzy rapping drums")
    assert torch.allclose(plain, gen._plain_embedding("jazzy rapping drums"))
    weighted = weighted_embedding(tok, enc, "jazzy (rapping:1.5) drums")
    ratio = (weighted / plain)[0].mean(dim=-1)  # per position
    marked = torch.tensor([w != 1.0 for w in (1.0, *weighted_tokens.weights)])
    marked = torch.cat([marked, torch.zeros(77 - len(marked), dtype=torch.bool)])
    k = ratio[~marked]
    assert marked.sum() >= 1
    assert torch.allclose(k, k[0].expand_as(k), atol=1e-4)  # one rescale factor elsewhere
    assert torch.allclose(ratio[marked], 1.5 * k[0], atol=1e-4)
    before = plain.float().mean()
    assert weighted.float().mean().item() == pytest.approx(before.item(), abs=1e-6)


def test_saved_tiny_model_loads_as_a_local_folder(
    gen: RiffusionGenerator, tmp_path: Path, seed_dir: Path
) -> None:
    folder = save_tiny_model(tmp_path / "model")
    local = RiffusionGenerator.load(str(folder), device="cpu", seed_images=[seed_dir])
    assert type(local.parts.scheduler).__name__ == "PNDMScheduler"
    ours = gen.generate(_req())
    theirs = local.generate(_req())
    assert torch.allclose(ours.latents, theirs.latents, atol=1e-5)
    with pytest.raises(ModelUnavailable, match="not a diffusers model folder"):
        RiffusionGenerator.load(str(tmp_path), device="cpu")


def test_builtin_seed_and_mask_render(gen: RiffusionGenerator) -> None:
    builtin = RiffusionGenerator(gen.parts, SeedImageLibrary())
    assert "og_beat" in builtin.seed_images.ids()
    request = InferenceRequest.from_dict(
        {
            "alpha": 0.25,
            "num_inference_steps": 3,
            "seed_image_id": "og_beat",
            "mask_image_id": "mask_top_third_75",
            "start": {"prompt": "jazzy rapping", "seed": 42},
            "end": {"prompt": "jazzy rapping", "seed": 43},
        }
    )
    result = builtin.generate(request)
    assert result.image.size == (512, 512)
    assert result.image.getexif()[TAG_LOOP_BPM] == pytest.approx(93.75)


def _numpy_slerp(t: float, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
    a, b = v0.numpy(), v1.numpy()
    dot = np.sum(a * b / (np.linalg.norm(a) * np.linalg.norm(b)))
    if abs(dot) > 0.9995:
        return torch.from_numpy((1 - t) * a + t * b)
    theta = np.arccos(dot)
    out = (np.sin(theta - theta * t) * a + np.sin(theta * t) * b) / np.sin(theta)
    return torch.from_numpy(out.astype(np.float32))


def _reference_riffuse(
    gen: RiffusionGenerator, req: InferenceRequest, mask_id: str
) -> torch.Tensor:
    """Riffusion's img2img interpolation written out step by step: no caches, no batching."""
    from diffusers import PNDMScheduler

    p = gen.parts
    alpha, s, e = req.alpha, req.start, req.end_or_start
    guidance = s.guidance * (1.0 - alpha) + e.guidance * alpha
    gen_a = torch.Generator().manual_seed(s.seed)
    gen_b = torch.Generator().manual_seed(e.seed)
    emb_a = weighted_embedding(p.tokenizer, p.text_encoder, s.prompt)
    emb_b = weighted_embedding(p.tokenizer, p.text_encoder, e.prompt)
    text = emb_a + alpha * (emb_b - emb_a)
    pixels = np.asarray(_seed_image(), dtype=np.float32) / 255.0
    image = torch.from_numpy(pixels[None].transpose(0, 3, 1, 2).copy()) * 2.0 - 1.0
    dist = p.vae.encode(image).latent_dist
    init = 0.18215 * dist.sample(generator=torch.Generator().manual_seed(s.seed))
    small = (WIDTH // 8, HEIGHT // 8)
    mask_image = gen.seed_images.load(mask_id).convert("L").resize(small, Image.Resampling.NEAREST)
    mask = torch.from_numpy(np.tile(1 - np.asarray(mask_image, np.float32) / 255, (4, 1, 1)))
    scheduler = PNDMScheduler.from_config(p.scheduler.config)
    steps = req.num_inference_steps
    scheduler.set_timesteps(steps)
    ids = p.tokenizer([""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    embeddings = torch.cat([p.text_encoder(ids)[0], text])
    strength = (1 - alpha) * s.denoising + alpha * e.denoising
    offset = scheduler.config.steps_offset
    init_t = min(int(steps * strength) + offset, steps)
    noise_a = torch.randn(init.shape, generator=gen_a)
    noise_b = torch.randn(init.shape, generator=gen_b)
    noise = _numpy_slerp(alpha, noise_a, noise_b)
    latents = scheduler.add_noise(init, noise, torch.tensor([scheduler.timesteps[-init_t]]))
    for t in scheduler.timesteps[max(steps - init_t + offset, 0) :]:
        model_in = scheduler.scale_model_input(torch.cat([latents] * 2), t)
        uncond, cond = p.unet(model_in, t, encoder_hidden_states=embeddings).sample.chunk(2)
        latents = scheduler.step(uncond + guidance * (cond - uncond), t, latents).prev_sample
        kept = scheduler.add_noise(init, noise, torch.tensor([t]))
        latents = kept * mask + latents * (1 - mask)
    return latents


def test_matches_riffusions_algorithm_written_out(gen: RiffusionGenerator) -> None:
    req = _req(mask_image_id="mask_top", alpha=0.3, num_inference_steps=8)
    req = req.replace(end=PromptInput("church (organ:1.2)", seed=43, denoising=0.6, guidance=5))
    with torch.no_grad():
        expected = _reference_riffuse(gen, req, "mask_top")
    result = gen.generate(req)
    assert torch.allclose(result.latents, expected, atol=1e-4)
    batched = gen.generate_alphas(req, [0.0, 0.3])[1]
    assert torch.allclose(batched.latents, expected, atol=1e-4)


@given(st.text(alphabet="ab ([", max_size=40))
def test_parse_weights_keeps_the_text_and_brackets_scale(text: str) -> None:
    runs = parse_weights(text)  # unclosed brackets apply to the end of the prompt
    assert "".join(t for t, _ in runs) == "".join(c for c in text if c not in "([")
    for _, weight in runs:
        exponent = np.log(weight) / np.log(1.1)
        assert abs(exponent - round(exponent)) < 1e-6  # only 1.1 ** n weights


@given(st.text(max_size=60))
def test_parse_weights_never_fails(text: str) -> None:
    runs = parse_weights(text)
    assert runs and all(isinstance(t, str) and np.isfinite(w) for t, w in runs)


def test_device_choice() -> None:
    from engine.model.loading import pick_device

    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type in ("cuda", "mps", "cpu")
    with pytest.raises(InvalidRequest):
        pick_device("toaster")
    with pytest.raises(InvalidRequest):
        pick_device("meta")
    if torch.cuda.is_available():
        assert pick_device("cuda").type == "cuda"
    else:
        with pytest.raises(ModelUnavailable, match="no CUDA GPU"):
            pick_device("cuda")
    with pytest.raises(ModelUnavailable):
        pick_device(f"cuda:{max(torch.cuda.device_count(), 0) + 7}")


def test_long_prompt_chunks_are_encoded_separately(gen: RiffusionGenerator) -> None:
    tok, enc = gen.parts.tokenizer, gen.parts.text_encoder
    prompt = " ".join(["jazz", "organ", "drums", "bass"] * 25)
    tokens = list(tokenize_weighted(tok, prompt).tokens)
    assert 75 < len(tokens) <= 150
    bos, eos = tok.bos_token_id, tok.eos_token_id
    first = [bos, *tokens[:75], eos]
    rest = tokens[75:]
    second = [bos, *rest] + [eos] * (76 - len(rest))
    with torch.no_grad():
        expected = torch.cat([enc(torch.tensor([first]))[0], enc(torch.tensor([second]))[0]], dim=1)
        got = weighted_embedding(tok, enc, prompt)
    assert got.shape == (1, 154, 32)
    assert torch.allclose(got, expected, atol=1e-6)


def test_seed_latent_cache_follows_file_changes(gen: RiffusionGenerator, tmp_path: Path) -> None:
    own = RiffusionGenerator(gen.parts, SeedImageLibrary([tmp_path], builtin=False))
    save_image(_seed_image(), tmp_path / "beat.png")
    before = own.generate(_req())
    assert torch.equal(before.latents, own.generate(_req()).latents)  # cached: same result
    flipped = _seed_image().transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    save_image(flipped, tmp_path / "beat.png")
    os.utime(tmp_path / "beat.png", ns=(1, 1))  # a different modification time for sure
    after = own.generate(_req())
    assert not torch.allclose(before.latents, after.latents, atol=1e-3)
