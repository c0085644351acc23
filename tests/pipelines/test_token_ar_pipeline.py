"""The autoregressive pipeline: a tiny random token model and VQ tokenizer, written with kinema's
own writers as a kinema-format model, loaded through load_pipeline like any other model."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import kinema
from kinema.checkpoints import token_ar as token_ar_ckpt
from kinema.checkpoints.io import save_safetensors
from kinema.checkpoints.vq_video import save_vq_tokenizer
from kinema.errors import CheckpointError, KinemaError
from kinema.models.fp8 import FP8Linear, fp8_state_bytes
from kinema.models.token_ar import TokenAR, TokenARConfig
from kinema.models.vae.vq_video import VQVideoConfig, VQVideoTokenizer
from kinema.pipelines.loading import check_before_loading, resolve_model
from kinema.pipelines.package import KINEMA_MODEL_FILE, write_kinema_model
from kinema.pipelines.token_ar import TokenARPipeline
from kinema.sampling.tokens import generate, guided_logits, token_picker
from kinema.text.minilm import MINILM_DIM
from tests.contracts import PipelineContract

PROMPT = "a red circle moving left"

# 16x16 pixels, 4x4 pixels per token, time compressed 4x: 5 frames are 2 token grids of 4x4.
TINY_VQ = VQVideoConfig(
    base_dim=4, z_dim=4, dim_mult=(1, 2, 2), num_res_blocks=1, temporal_downsample=(True, True), codebook_size=32, codebook_dim=4
)
# "ar-tiny" with the tokenizer's grid and codebook, and MiniLM's width; a 2-frame window so that
# 3 token grids (9 frames) go round the cache's ring.
TINY_AR = TokenARConfig(
    vocab_size=32, grid=(4, 4), dim=32, num_heads=4, num_kv_heads=2, ffn_dim=48, layers="STST", text_dim=MINILM_DIM, window_frames=2
)
CARD = dict(
    text_encoder={"kind": "minilm", "max_length": 16},
    sampler={"temperature": 1.0, "top_k": 0, "top_p": 1.0, "typical_p": 1.0},
    defaults={"num_frames": 5, "guidance_scale": 3.0, "fps": 8},
    pipeline="token-ar",
)


def save_token_ar_components(root: Path, vq: VQVideoConfig = TINY_VQ, ar: TokenARConfig = TINY_AR, seed: int = 0) -> tuple[Path, Path]:
    """A random tiny token model and VQ tokenizer, each exported as `kinema train` does (config.json +
    diffusion_pytorch_model.safetensors): returns (token model dir, tokenizer dir)."""
    torch.manual_seed(seed)
    tokenizer = VQVideoTokenizer(vq)
    vq_dir = save_vq_tokenizer(root / "tokenizer-run" / "model", vq, tokenizer.state_dict())
    model = TokenAR(ar)  # PyTorch's default init: larger weights than init_weights, so the logits are far from uniform
    ar_dir = root / "ar-run" / "model"
    ar_dir.mkdir(parents=True)
    save_safetensors(model.state_dict(), ar_dir / "diffusion_pytorch_model.safetensors")
    (ar_dir / "config.json").write_text(json.dumps(token_ar_ckpt.to_json(ar), indent=2))
    return ar_dir, vq_dir


def save_token_ar_model(root: Path) -> Path:
    """A tiny kinema-format token-ar model (minilm text), written by write_kinema_model."""
    ar_dir, vq_dir = save_token_ar_components(root)
    return write_kinema_model(root / "model", ar_dir, vq_dir, **CARD)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_token_ar_model(tmp_path_factory.mktemp("token-ar"))


@pytest.fixture(scope="module")
def pipe(model_dir):
    p = kinema.load_pipeline(model_dir, device="cpu")
    return p


def _tokens(pipe, **kw):
    return pipe(PROMPT, output_type="latent", **kw).latents


# ------------------------------------------------------------------------------------------------
# Generation
# ------------------------------------------------------------------------------------------------
def test_generates_the_cards_defaults(pipe):
    assert isinstance(pipe, TokenARPipeline) and pipe.frame_size == (16, 16)
    out = pipe(PROMPT, seed=0)  # size, frames, guidance and fps from the card
    assert out.frames.dtype == np.uint8 and out.frames.shape == (1, 5, 16, 16, 3) and out.fps == 8
    assert out.latents.dtype == torch.long and out.latents.shape == (1, 2, 4, 4)
    assert set(out.timings) == {"text", "tokens", "decode"}


def test_batch_of_prompts_and_per_video_generators(pipe):
    prompts = [PROMPT, "a blue square moving up"]
    gens = lambda: [torch.Generator().manual_seed(10 + i) for i in range(2)]  # noqa: E731
    both = pipe(prompts, generator=gens(), num_frames=9)
    assert both.frames.shape == (2, 9, 16, 16, 3) and both.latents.shape == (2, 3, 4, 4)
    # each video samples with its own generator: the second alone is the same video
    alone = pipe(prompts[1], generator=[torch.Generator().manual_seed(11)], num_frames=9)
    assert torch.equal(alone.latents[0], both.latents[1])
    two = pipe(PROMPT, num_videos_per_prompt=2, generator=gens(), output_type="pt")
    assert isinstance(two.frames, torch.Tensor) and two.frames.shape == (2, 5, 16, 16, 3)


def test_cache_gives_the_same_tokens_as_recomputing(pipe):
    kw = dict(num_frames=9, seed=3, guidance_scale=2.0, negative_prompt="blurry")  # 3 grids: past the 2-frame window
    assert torch.equal(_tokens(pipe, use_cache=False, **kw), _tokens(pipe, use_cache=True, **kw))


def test_guidance_runs_the_negative_prompt_as_unconditional_text(pipe):
    guided = _tokens(pipe, seed=0, guidance_scale=3.0, negative_prompt="a blue square moving up")
    assert not torch.equal(guided, _tokens(pipe, seed=0, guidance_scale=3.0))  # negative "" by default
    # the same wiring by hand: cond and uncond states, guided log-probs, the seeded picker
    cond, uncond = pipe.encode_text([PROMPT]), pipe.encode_text(["a blue square moving up"])
    rule = pipe.sampling_rule(guidance_scale=3.0)
    pick = token_picker(rule, torch.Generator().manual_seed(0))
    ref = generate(
        pipe.transformer, cond.states, None, 2, pick, uncond_text=uncond.states, guidance=lambda c, u: guided_logits(c, u, 3.0), progress=False
    )
    assert torch.equal(guided, ref)


def test_guidance_one_is_the_unguided_path(pipe):
    plain = _tokens(pipe, seed=5, guidance_scale=1.0)
    assert torch.equal(plain, _tokens(pipe, seed=5, guidance_scale=1.0, negative_prompt="a blue square moving up"))  # no uncond pass
    pick = token_picker(pipe.sampling_rule(guidance_scale=1.0), torch.Generator().manual_seed(5))
    ref = generate(pipe.transformer, pipe.encode_text([PROMPT]).states, None, 2, pick, progress=False)
    assert torch.equal(plain, ref)


def test_top_k_one_is_greedy(pipe):
    greedy = _tokens(pipe, temperature=0, num_frames=9)
    assert torch.equal(greedy, _tokens(pipe, top_k=1, seed=0, num_frames=9))
    assert torch.equal(greedy, _tokens(pipe, temperature=0, seed=123, num_frames=9))  # greedy draws nothing
    assert torch.equal(greedy, _tokens(pipe, top_k=1, top_p=0.9, typical_p=0.9, temperature=0.5, seed=1, num_frames=9))


def test_precomputed_text_states(pipe):
    states = pipe.encode_text([PROMPT]).states
    negative = pipe.encode_text([""]).states
    a = pipe(prompt_embeds=states, negative_prompt_embeds=negative, seed=2, output_type="latent").latents
    assert torch.equal(a, _tokens(pipe, seed=2))


def test_progress_bar_per_frame_and_switch(pipe, capsys):
    pipe(PROMPT, seed=0, output_type="latent")
    assert "frames" in capsys.readouterr().err
    pipe(PROMPT, seed=0, output_type="latent", progress_bar=False)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(num_frames=6), "num_frames must be 4k\\+1 for this tokenizer.*try 5 or 9"),
        (dict(height=32), "height and width must be 16 and 16 for this model \\(its 4x4 token grid at 4 pixels per token\\)"),
        (dict(temperature=-1), "temperature must be"),
        (dict(top_p=1.5), "top_p must be"),
        (dict(top_k=-2), "top_k must be"),
        (dict(guidance_scale=float("nan")), "guidance_scale must be a finite number"),
        (dict(output_type="gif"), "output_type"),
        (dict(seed=1, generator=torch.Generator()), "either generator= or seed="),
    ],
)
def test_bad_requests_are_one_line_errors(pipe, kw, message):
    with pytest.raises(KinemaError, match=message):
        pipe(PROMPT, **kw)


def test_loading_imports_no_dynamo(model_dir):
    """The model is built on the meta device; an init op there would import torch._dynamo, about
    0.9 s of every load (kinema.models.layers.randn_parameter)."""
    import subprocess
    import sys

    code = f"import sys, kinema; kinema.load_pipeline({str(model_dir)!r}, device='cpu'); print('torch._dynamo' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "False"


def test_request_checked_before_loading(model_dir):
    layout = resolve_model(model_dir)
    assert layout.pipeline == "token-ar" and set(layout.components) == {"transformer", "tokenizer"}
    check_before_loading(layout)  # the card's defaults are a valid request
    check_before_loading(layout, 16, 16, 9, temperature=0.5, top_k=4)
    with pytest.raises(KinemaError, match="try 5 or 9"):
        check_before_loading(layout, num_frames=7)
    with pytest.raises(KinemaError, match="height and width must be 16 and 16"):
        check_before_loading(layout, 32, 32)
    with pytest.raises(KinemaError, match="num_inference_steps does not apply to a token-ar model"):
        check_before_loading(layout, num_inference_steps=4)
    with pytest.raises(KinemaError, match="typical_p must be"):
        check_before_loading(layout, typical_p=0)


# ------------------------------------------------------------------------------------------------
# FP8
# ------------------------------------------------------------------------------------------------
def test_fp8_load_stores_block_linears_in_fp8_and_mostly_agrees_with_bf16(model_dir):
    bf16 = kinema.load_pipeline(model_dir, device="cpu", dtype="bfloat16")
    fp8 = kinema.load_pipeline(model_dir, device="cpu", quantize="fp8")  # bf16 compute
    model = fp8.transformer
    block_linears = [m for m in model.blocks.modules() if isinstance(m, (FP8Linear, torch.nn.Linear))]
    assert block_linears and all(isinstance(m, FP8Linear) for m in block_linears)
    assert type(model.head) is torch.nn.Linear and model.head.weight.dtype == torch.bfloat16  # the head is not quantised
    assert model.compute_dtype == torch.bfloat16 and model.norm_out.weight.dtype == torch.float32
    assert fp8.tokenizer.dtype == torch.float32  # the tokenizer keeps the CPU default dtype
    size = fp8_state_bytes(model)
    assert size.fp8_weights == sum(m.weight.numel() for m in block_linears)

    out = fp8(PROMPT, temperature=0, num_frames=9)  # runs end to end
    assert out.frames.shape == (1, 9, 16, 16, 3)
    ref = bf16(PROMPT, temperature=0, num_frames=9, output_type="latent").latents
    free_running = float((out.latents == ref).float().mean())
    # teacher-forced: the next-token argmax of both models on the same (bf16) tokens
    text = bf16.encode_text([PROMPT]).states
    flat = ref.flatten(1)  # (1, N)
    a, b = bf16.transformer(flat, text).argmax(-1), fp8.transformer(flat, text).argmax(-1)
    teacher_forced = float((a == b).float().mean())
    print(f"\nFP8 vs bf16 greedy token agreement: free-running {free_running:.3f}, teacher-forced {teacher_forced:.3f} of {flat.numel()}")
    assert teacher_forced >= 0.75


def test_fp8_is_refused_for_a_model_that_has_no_fp8_path(tmp_path):
    from kinema.pipelines.loading import check_quantize

    layout = resolve_model(save_token_ar_model(tmp_path))
    check_quantize(layout, "fp8")
    with pytest.raises(KinemaError, match="unknown quantize 'int4'"):
        check_quantize(layout, "int4")
    layout = layout.__class__("diffusers", "wan-t2v", tmp_path)
    with pytest.raises(KinemaError, match="fp8 quantisation is available for token-ar models; .* is a wan-t2v model"):
        check_quantize(layout, "fp8")


# ------------------------------------------------------------------------------------------------
# The model directory
# ------------------------------------------------------------------------------------------------
def test_card_and_layout(model_dir):
    card = json.loads((model_dir / KINEMA_MODEL_FILE).read_text())
    assert card["pipeline"] == "token-ar" and card["sampler"] == CARD["sampler"]
    assert sorted(p.name for p in model_dir.iterdir()) == [KINEMA_MODEL_FILE, "tokenizer", "transformer"]
    defaults = resolve_model(model_dir).defaults()
    assert (defaults.height, defaults.width, defaults.num_frames, defaults.fps) == (16, 16, 5, 8)  # size from the grid


@pytest.mark.parametrize(
    "change, message",
    [
        ({"sampler": {"temperature": 1.0, "shift": 3.0}}, "unknown sampler keys \\['shift'\\] for a token-ar model"),
        ({"sampler": {"temperature": -1.0}}, "sampler: temperature must be"),
        ({"defaults": {"num_inference_steps": 3}}, "unknown defaults keys \\['num_inference_steps'\\]"),
        ({"defaults": {"height": 32}}, "is not this model's frame size 16x16"),
        ({"text_encoder": {"kind": "clip", "max_length": 16}}, "text_encoder must be"),
        ({"pipeline": "token-ar-2"}, "pipeline must be one of"),
    ],
)
def test_bad_cards_are_refused_and_leave_nothing(model_dir, tmp_path, change, message):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(CheckpointError, match=message):
        write_kinema_model(out / "bad", model_dir / "transformer", model_dir / "tokenizer", **{**CARD, **change})
    assert list(out.iterdir()) == []


def test_components_that_do_not_fit_are_refused(model_dir, tmp_path):
    ar_dir, _ = save_token_ar_components(tmp_path / "a")
    _, vq16 = save_token_ar_components(tmp_path / "b", vq=dataclasses.replace(TINY_VQ, codebook_size=16))
    with pytest.raises(CheckpointError, match="predicts 32 ids but the tokenizer has 16 codes"):
        write_kinema_model(tmp_path / "bad", ar_dir, vq16, **CARD)
    narrow = dataclasses.replace(TINY_AR, text_dim=8)
    ar8, vq = save_token_ar_components(tmp_path / "c", ar=narrow)
    with pytest.raises(CheckpointError, match="takes 8-d text states but its text encoder gives 384-d"):
        write_kinema_model(tmp_path / "bad", ar8, vq, **CARD)
    assert not (tmp_path / "bad").exists()
    # a hand-edited card is checked when the model loads, too
    copy = tmp_path / "copy"
    shutil.copytree(model_dir, copy)
    shutil.rmtree(copy / "tokenizer")
    shutil.copytree(vq16, copy / "tokenizer")
    with pytest.raises(CheckpointError, match="16 codes"):
        kinema.load_pipeline(copy)


class TestTokenARPipelineContract(PipelineContract):
    """tests/contracts.py: the same video for the same seed, progress and cancellation."""

    call = dict(prompt=PROMPT)  # the card's defaults: 5 frames, 2 token grids, guidance 3
    stages = (("text", 1), ("tokens", 2), ("decode", 1))
