"""Unit tests of kinema's autoregressive video token model: presets, masks and causality, the KV
cache against the full computation, generation with and without the cache, inputs."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from kinema.checkpoints import token_ar as token_ar_ckpt
from kinema.checkpoints.io import build_on_meta, save_safetensors
from kinema.checkpoints.token_ar import load_token_ar
from kinema.errors import CheckpointError, KinemaError
from kinema.models.attention import attention
from kinema.models.rope import rope_3d
from kinema.models.token_ar import (
    TOKEN_AR_PRESETS,
    TokenAR,
    TokenARConfig,
    interleave_layers,
    spatial_mask,
    temporal_mask,
)
from kinema.sampling.tokens import generate, new_generation_cache
from tests.contracts import ModelContract

TINY = TOKEN_AR_PRESETS["ar-tiny"]()  # grid 2x3 (6 tokens a frame), window 3, layers "STST", GQA 4 -> 2
HW = TINY.tokens_per_frame


def _model(config: TokenARConfig = TINY, seed: int = 0, dtype: torch.dtype = torch.float64) -> TokenAR:
    torch.manual_seed(seed)
    return TokenAR(config).to(dtype).eval()


def _text(config: TokenARConfig = TINY, batch: int = 2, length: int = 5, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(batch, length, config.text_dim, generator=g, dtype=torch.float64)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[0, 3:] = False  # the first sample has 3 text tokens and 2 of padding
    return text, mask


def _tokens(n: int, batch: int = 2, config: TokenARConfig = TINY, seed: int = 2) -> torch.Tensor:
    return torch.randint(0, config.vocab_size, (batch, n), generator=torch.Generator().manual_seed(seed))


def _logits(model: TokenAR, tokens: torch.Tensor, text, mask) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens, text, mask)


def _greedy(logits: torch.Tensor) -> torch.Tensor:
    return logits.argmax(-1)


def _sampler(seed: int):
    g = torch.Generator().manual_seed(seed)
    return lambda logits: torch.multinomial(torch.softmax(logits, -1), 1, generator=g)[:, 0]


# ------------------------------------------------------------------------------------------------
# Presets and configs
# ------------------------------------------------------------------------------------------------
def test_ar_8b_parameter_count():
    config = TOKEN_AR_PRESETS["ar-8b"]()
    assert (config.dim, config.num_heads, config.grid, config.vocab_size, config.window_frames) == (4096, 32, (16, 16), 16384, 16)
    assert (config.layers.count("S"), config.num_temporal, config.text_dim) == (24, 16, 4096)
    count = build_on_meta(lambda: TokenAR(config)).num_parameters()
    assert count == 8_020_029_440  # the figure in the preset's comment
    assert abs(count - 8e9) < 0.1 * 8e9


def test_shapes_preset_size():
    config = TOKEN_AR_PRESETS["ar-shapes"]()
    assert config.grid == (8, 8) and config.text_dim == 384 and 1024 <= config.vocab_size <= 4096
    assert 5e6 <= build_on_meta(lambda: TokenAR(config)).num_parameters() <= 15e6


def test_layer_pattern():
    assert interleave_layers(24, 16) == "SSTST" * 8
    assert interleave_layers(3, 0) == "SSS" and interleave_layers(0, 2) == "TT"
    assert TINY.receptive_frames == 2 * (3 - 1) + 1


def test_config_json_round_trip():
    config = TOKEN_AR_PRESETS["ar-8b"]()
    saved = json.loads(json.dumps(token_ar_ckpt.to_json(config)))
    assert saved["layers"] == config.layers and saved["_class_name"] == "TokenAR"
    assert token_ar_ckpt.from_json(saved) == config
    with pytest.raises(CheckpointError, match="sliding"):
        token_ar_ckpt.from_json({**saved, "sliding": 4})
    with pytest.raises(CheckpointError, match="_class_name"):
        token_ar_ckpt.from_json({**saved, "_class_name": "WanModel"})


def test_bad_configs_raise():
    with pytest.raises(KinemaError, match="'S'"):
        replace(TINY, layers="SX")
    with pytest.raises(KinemaError, match="num_kv_heads"):
        replace(TINY, num_kv_heads=3)
    with pytest.raises(KinemaError, match="grid"):
        replace(TINY, grid=(0, 3))


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("num_heads", 0, "num_heads must be an integer >= 1; got 0"),  # was a ZeroDivisionError
        ("num_kv_heads", 0, "num_kv_heads must be an integer >= 1; got 0"),
        ("dim", "32", "dim must be an integer >= 1; got '32'"),
        ("vocab_size", True, "vocab_size must be an integer"),
        ("window_frames", 0, "window_frames must be an integer >= 1"),
        ("grid", 8, r"grid \(h, w\) must be a list of 2 integers >= 1; got 8"),
        ("grid", [2, 3, 4], "grid"),
        ("layers", ["S", "T"], "layers must be a non-empty string"),
        ("eps", 0.0, "eps must be a number > 0"),
        ("rope_theta", "1e4", "rope_theta must be a number > 0"),
        ("qk_norm", 1, "qk_norm must be true or false"),
    ],
)
def test_bad_config_values_give_one_line_errors(field, value, message):
    with pytest.raises(KinemaError, match=message) as e:
        replace(TINY, **{field: value})
    assert "\n" not in str(e.value)
    with pytest.raises(CheckpointError, match=message) as e:  # reading a config.json
        token_ar_ckpt.from_json({**token_ar_ckpt.to_json(TINY), field: value})
    assert "\n" not in str(e.value)


def test_from_dict_names_what_is_missing():
    saved = token_ar_ckpt.to_json(TINY)
    del saved["dim"]
    with pytest.raises(CheckpointError, match=r"lacks required field\(s\) \['dim'\]"):
        token_ar_ckpt.from_json(saved)
    with pytest.raises(CheckpointError, match="must be a mapping"):
        token_ar_ckpt.from_json("TokenAR")


def test_load_round_trip(tmp_path):
    model = _model(dtype=torch.float32)
    (tmp_path / "config.json").write_text(json.dumps(token_ar_ckpt.to_json(TINY)))
    save_safetensors(model.state_dict(), tmp_path / "diffusion_pytorch_model.safetensors")
    loaded = load_token_ar(tmp_path)
    text, mask = _text()
    tokens = _tokens(8)
    assert torch.equal(_logits(loaded, tokens, text.float(), mask), _logits(model, tokens, text.float(), mask))


# ------------------------------------------------------------------------------------------------
# Shared helpers this model added (rope start, grouped-query attention)
# ------------------------------------------------------------------------------------------------
def test_rope_start_equals_slice():
    cos, sin = rope_3d((7, 2, 3), (4, 2, 2))
    cos5, sin5 = rope_3d((2, 2, 3), (4, 2, 2), start=(5, 0, 0))
    assert torch.equal(cos5, cos[5 * 6 :]) and torch.equal(sin5, sin[5 * 6 :])


@pytest.mark.parametrize("mask_shape", [None, (5, 7), (2, 1, 5, 7), (2, 6, 5, 7), (1, 1, 1, 7)])
def test_attention_gqa_matches_repeated_heads(mask_shape):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 6, 5, 4, generator=g, dtype=torch.float64)
    k, v = (torch.randn(2, 2, 7, 4, generator=g, dtype=torch.float64) for _ in range(2))
    mask = None if mask_shape is None else torch.rand(mask_shape, generator=g) > 0.3
    if mask is not None:
        mask[..., 0] = True  # every query sees a key
    expected = torch.nn.functional.scaled_dot_product_attention(q, k.repeat_interleave(3, 1), v.repeat_interleave(3, 1), attn_mask=mask)
    torch.testing.assert_close(attention(q, k, v, mask), expected, rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# Full computation: shapes, masks, causality
# ------------------------------------------------------------------------------------------------
def test_forward_shape_and_partial_frames():
    model = _model()
    text, mask = _text()
    tokens = _tokens(3 * HW + 2)
    logits = _logits(model, tokens, text, mask)
    assert logits.shape == (2, 3 * HW + 2, TINY.vocab_size) and logits.dtype == torch.float64
    assert torch.isfinite(logits).all()
    # A prefix (ending mid-frame) gives the prefix of the logits.
    torch.testing.assert_close(_logits(model, tokens[:, : HW + 4], text, mask), logits[:, : HW + 4], rtol=0, atol=1e-12)


def test_bf16_forward_gives_float32_logits():
    model = _model(dtype=torch.bfloat16)
    text, mask = _text()
    logits = _logits(model, _tokens(HW + 1), text, mask)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


def test_masks():
    s = spatial_mask(TINY)
    assert torch.equal(s, torch.ones(HW, HW, dtype=torch.bool).tril())
    t = temporal_mask(TINY, 5)  # window 3
    q_frame, k_frame = 4, 1  # frame 1 is 3 frames before frame 4: outside the window
    assert not t[q_frame * HW :, k_frame * HW : (k_frame + 1) * HW].any()
    assert t[q_frame * HW, (k_frame + 1) * HW : q_frame * HW + 1].all()  # frames 2, 3 and its own first token
    assert not t[q_frame * HW, q_frame * HW + 1 :].any()  # nothing after itself


def test_future_tokens_never_change_earlier_logits():
    model = _model()
    text, mask = _text()
    tokens = _tokens(4 * HW)
    base = _logits(model, tokens, text, mask)
    for p in (0, HW - 1, 2 * HW + 3, 4 * HW - 2):
        changed = tokens.clone()
        changed[:, p] = (changed[:, p] + 1) % TINY.vocab_size
        logits = _logits(model, changed, text, mask)
        assert torch.equal(logits[:, : p + 1], base[:, : p + 1])  # token p is first read at position p+1
        assert not torch.allclose(logits[:, p + 1], base[:, p + 1])


def _changed_positions(model: TokenAR, frames: int, p: int) -> torch.Tensor:
    """Which positions' logits change when token p changes: (frames*hw,) bool."""
    text, mask = _text(model.config)
    tokens = _tokens(frames * model.config.tokens_per_frame, config=model.config)
    changed = tokens.clone()
    changed[:, p] = (changed[:, p] + 1) % model.config.vocab_size
    diff = (_logits(model, changed, text, mask) - _logits(model, tokens, text, mask)).abs().amax(dim=(0, 2))  # (N,)
    return diff > 0


def test_spatial_layers_see_only_their_frame():
    model = _model(replace(TINY, layers="SS"))
    changed = _changed_positions(model, 3, 1)  # token (0, 0, 1): read at (0, 0, 2)
    assert changed[2:HW].all() and not changed[:2].any() and not changed[HW:].any()
    # the last token of a frame is the input of the next frame's first position, and only of its frame
    changed = _changed_positions(model, 3, HW - 1)
    assert changed[HW : 2 * HW].all() and not changed[: HW].any() and not changed[2 * HW :].any()


@pytest.mark.parametrize("layers", ["T", "STS", "TST"])
def test_temporal_window_bounds_what_a_frame_sees(layers):
    config = replace(TINY, layers=layers)
    frames = config.receptive_frames + 2
    changed = _changed_positions(_model(config), frames, 1)  # a token of frame 0 (not its last)
    reach = config.receptive_frames * HW  # frames 0 .. receptive_frames - 1 may see it
    assert changed[2:reach].all() and not changed[:2].any()
    assert not changed[reach:].any()  # frame receptive_frames and later are out of every window chain


def test_padding_text_positions_are_ignored():
    model = _model()
    text, mask = _text()
    tokens = _tokens(2 * HW)
    other = text.clone()
    other[0, 3:] = torch.randn(2, TINY.text_dim, dtype=torch.float64) * 100  # the first sample's padding
    base = _logits(model, tokens, text, mask)
    assert torch.equal(_logits(model, tokens, other, mask), base)
    torch.testing.assert_close(_logits(model, tokens[:1], text[:1, :3], None), base[:1], rtol=0, atol=1e-12)
    assert not torch.allclose(_logits(model, tokens, other, None), _logits(model, tokens, text, None))


# ------------------------------------------------------------------------------------------------
# KV cache
# ------------------------------------------------------------------------------------------------
def test_step_equals_forward_past_the_window():
    model = _model()
    text, mask = _text()
    n = 8 * HW + 3  # 8 frames and a bit: well past the 3-frame window and the 5-frame receptive field
    tokens = _tokens(n)
    full = _logits(model, tokens, text, mask)
    cache = model.new_cache(text, mask)
    steps = [model.step(None if p == 0 else tokens[:, p - 1], cache) for p in range(n)]
    assert cache.position == n
    torch.testing.assert_close(torch.stack(steps, dim=1), full, rtol=0, atol=1e-12)


def test_cache_memory_is_flat():
    model = _model()
    text, mask = _text()
    window = TINY.window_frames
    tokens = _tokens(3 * window * HW)
    cache = model.new_cache(text, mask)
    start_bytes, pointers = cache.kv_bytes(), [t.data_ptr() for t in cache.k + cache.v]
    sizes = {}
    for p in range(3 * window * HW):
        model.step(None if p == 0 else tokens[:, p - 1], cache)
        if (p + 1) % (window * HW) == 0:
            sizes[(p + 1) // (window * HW)] = (cache.kv_bytes(), cache.nbytes())
    assert sizes[1] == sizes[3] and sizes[1][0] == start_bytes
    assert [t.data_ptr() for t in cache.k + cache.v] == pointers  # written in place, never reallocated
    # temporal layers hold window_frames frames, spatial layers one
    assert [t.shape[2] for t in cache.k] == [HW if kind == "S" else window * HW for kind in TINY.layers]


# ------------------------------------------------------------------------------------------------
# Generation
# ------------------------------------------------------------------------------------------------
def test_generate_greedy_cache_equals_recompute():
    model = _model()
    text, mask = _text()
    with_cache = generate(model, text, mask, 7, _greedy, progress=False)
    without = generate(model, text, mask, 7, _greedy, use_cache=False, progress=False)
    assert with_cache.shape == (2, 7, *TINY.grid) and with_cache.dtype == torch.long
    assert torch.equal(with_cache, without)
    # greedy generation reproduces the argmax of the full forward over its own tokens
    flat = with_cache.flatten(1)
    assert torch.equal(_logits(model, flat, text, mask).argmax(-1), flat)


def test_generate_sampled_cache_equals_recompute():
    model = _model()
    text, mask = _text()
    with_cache = generate(model, text, mask, 6, _sampler(3), progress=False)
    without = generate(model, text, mask, 6, _sampler(3), use_cache=False, progress=False)
    assert torch.equal(with_cache, without)
    assert not torch.equal(with_cache, generate(model, text, mask, 6, _sampler(4), progress=False))


@pytest.mark.parametrize("given", [1, 3, 5])  # inside the 3-frame window, at its edge, past it (the ring slid)
@pytest.mark.parametrize("guided", [False, True])
def test_generate_resumes_from_given_frames_exactly(given, guided):
    """Extending a clip: the given frames fill the cache as if the model had made them, so greedy
    decoding continues exactly as one longer call (with and without the cache)."""
    model = _model()
    text, mask = _text()
    extra = {}
    if guided:
        extra = dict(uncond_text=torch.zeros(2, 2, TINY.text_dim, dtype=torch.float64), guidance=lambda c, u: u + 2.0 * (c - u))
    whole = generate(model, text, mask, 7, _greedy, progress=False, **extra)
    frames_done = []
    resumed = generate(model, text, mask, 7 - given, _greedy, prefix=whole[:, :given], on_frame=frames_done.append, progress=False, **extra)
    assert resumed.shape == whole.shape and torch.equal(resumed, whole)
    assert frames_done == list(range(1, 7 - given + 1))  # progress counts the new frames only
    recomputed = generate(model, text, mask, 7 - given, _greedy, prefix=whole[:, :given], use_cache=False, progress=False, **extra)
    assert torch.equal(recomputed, whole)
    # the prefix is kept as given, whatever the model would have made
    other = torch.randint(0, TINY.vocab_size, (2, given, *TINY.grid), generator=torch.Generator().manual_seed(9))
    assert torch.equal(generate(model, text, mask, 2, _greedy, prefix=other, progress=False, **extra)[:, :given], other)


@pytest.mark.parametrize("given", [1, 2, 4])  # the prompt changes inside the 3-frame window, at its edge, past it
@pytest.mark.parametrize("guided", [False, True])
def test_a_carried_cache_goes_on_under_a_new_text_without_feeding_the_past_again(given, guided):
    """A long video whose prompt changes: the cache of the first call goes on into the second. The
    past keeps the keys it was made with under the first text, and only what follows reads the
    second: the same as stepping the model by hand. With one text throughout, one call exactly."""
    model = _model()
    text, mask = _text()
    other, _ = _text(seed=7)
    extra = {}
    if guided:
        extra = dict(uncond_text=torch.zeros(2, 2, TINY.text_dim, dtype=torch.float64), guidance=lambda c, u: u + 2.0 * (c - u))
    uncond = {k: v for k, v in extra.items() if k == "uncond_text"}
    cache = new_generation_cache(model, text, mask, **uncond)
    first = generate(model, text, mask, given, _greedy, cache=cache, progress=False, **extra)
    assert torch.equal(first, generate(model, text, mask, given, _greedy, progress=False, **extra))
    assert cache.position == given * HW
    both = generate(model, other, mask, 5 - given, _greedy, prefix=first, cache=cache, progress=False, **extra)
    assert torch.equal(both[:, :given], first) and cache.position == 5 * HW

    # by hand: the first frames stepped under the first text, then the text swapped
    def texts(states):
        if not guided:
            return states, mask
        pad = torch.zeros(2, 5, TINY.text_dim, dtype=torch.float64)
        pad[:, :2] = extra["uncond_text"]
        pad_mask = torch.zeros(2, 5, dtype=torch.bool)
        pad_mask[:, :2] = True
        return torch.cat([states, pad]), torch.cat([mask, pad_mask])

    hand = model.new_cache(model.prepare_text(*texts(text)))
    flat = both.flatten(1)
    for p in range(5 * HW):
        if p == given * HW:
            hand.text = model.prepare_text(*texts(other))
        token = None if p == 0 else (flat[:, p - 1] if not guided else torch.cat([flat[:, p - 1]] * 2))
        logits = model.step(token, hand)
        if p >= given * HW:
            picked = (logits[2:] + 2.0 * (logits[:2] - logits[2:])) if guided else logits
            assert torch.equal(picked.argmax(-1), flat[:, p]), p
    # the past was not made again under the new text: feeding it again reads another continuation
    refed = generate(model, other, mask, 5 - given, _greedy, prefix=first, progress=False, **extra)
    assert not torch.equal(refed, both)
    # one text throughout: a carried cache is one call
    cache = new_generation_cache(model, text, mask, **uncond)
    head = generate(model, text, mask, given, _greedy, cache=cache, progress=False, **extra)
    tail = generate(model, text, mask, 5 - given, _greedy, prefix=head, cache=cache, progress=False, **extra)
    assert torch.equal(tail, generate(model, text, mask, 5, _greedy, progress=False, **extra))


def test_generate_refuses_a_cache_it_cannot_go_on_with():
    model = _model()
    text, mask = _text()
    cache = new_generation_cache(model, text, mask)
    made = generate(model, text, mask, 2, _greedy, cache=cache, progress=False)
    with pytest.raises(KinemaError, match="the cache to go on with holds a batch of 2 at token 12"):
        generate(model, text, mask, 1, _greedy, prefix=made[:, :1], cache=cache, progress=False)  # fewer given tokens than it consumed
    with pytest.raises(KinemaError, match="batch of 4 \\(guidance doubles it\\)"):
        generate(model, text, mask, 1, _greedy, prefix=made, cache=cache, progress=False,
                 uncond_text=torch.zeros(2, 2, TINY.text_dim, dtype=torch.float64), guidance=lambda c, u: c)  # fmt: skip
    with pytest.raises(KinemaError, match="needs use_cache=True"):
        generate(model, text, mask, 1, _greedy, prefix=made, cache=cache, use_cache=False, progress=False)


def test_generate_refuses_a_bad_prefix():
    model = _model()
    text, mask = _text()
    for prefix in (torch.zeros(2, 1, 3, 2, dtype=torch.long), torch.zeros(1, 1, *TINY.grid, dtype=torch.long),
                   torch.zeros(2, 1, *TINY.grid), torch.full((2, 1, *TINY.grid), TINY.vocab_size)):  # fmt: skip
        with pytest.raises(KinemaError, match="prefix"):
            generate(model, text, mask, 1, _greedy, prefix=prefix, progress=False)


def test_generate_with_guidance():
    model = _model()
    text, mask = _text()
    uncond = torch.zeros(2, 2, TINY.text_dim, dtype=torch.float64)  # another length: padded inside
    seen = []

    def guidance(cond, unc):
        seen.append((cond.shape, unc.shape))
        return unc + 3.0 * (cond - unc)

    guided = generate(model, text, mask, 4, _greedy, uncond_text=uncond, guidance=guidance, progress=False)
    recomputed = generate(model, text, mask, 4, _greedy, uncond_text=uncond, guidance=guidance, use_cache=False, progress=False)
    assert torch.equal(guided, recomputed) and seen[0] == ((2, TINY.vocab_size), (2, TINY.vocab_size))
    # guidance that returns the cond logits gives the unguided clip: the cond half is the first B
    plain = generate(model, text, mask, 4, _greedy, progress=False)
    assert torch.equal(generate(model, text, mask, 4, _greedy, uncond_text=uncond, guidance=lambda c, u: c, progress=False), plain)


def test_bad_inputs_raise():
    model = _model()
    text, mask = _text()
    with pytest.raises(KinemaError, match="token ids"):
        model(torch.full((2, 3), TINY.vocab_size), text, mask)
    with pytest.raises(KinemaError, match="token ids"):
        model(torch.full((2, 3), -1), text, mask)
    with pytest.raises(KinemaError, match="integer"):
        model(torch.zeros(2, 3), text, mask)
    with pytest.raises(KinemaError, match="text_dim"):
        model(_tokens(3), text[..., :-1], mask)
    with pytest.raises(KinemaError, match="batch"):
        model(_tokens(3, batch=3), text, mask)
    with pytest.raises(KinemaError, match="no text token"):
        model(_tokens(3), text, torch.zeros_like(mask))
    for frames in (0, -1, 2.0):
        with pytest.raises(KinemaError, match="num_frames"):
            generate(model, text, mask, frames, _greedy, progress=False)
    with pytest.raises(KinemaError, match="uncond_text and guidance"):
        generate(model, text, mask, 1, _greedy, guidance=lambda c, u: c, progress=False)
    with pytest.raises(KinemaError, match="pick"):
        generate(model, text, mask, 1, lambda logits: logits.argmax(-1, keepdim=True), progress=False)
    cache = model.new_cache(text, mask)
    with pytest.raises(KinemaError, match="start of the video"):
        model.step(torch.zeros(2, dtype=torch.long), cache)
    model.step(None, cache)
    with pytest.raises(KinemaError, match="start of the video"):
        model.step(None, cache)
    with pytest.raises(KinemaError, match="token ids"):
        model.step(torch.full((2,), TINY.vocab_size), cache)


# ------------------------------------------------------------------------------------------------
# The model contract (tests/contracts.py): meta build, strict load, determinism, golden values,
# bf16 with float32 norms (its own format: no external key map)
# ------------------------------------------------------------------------------------------------
class TestTokenARContract(ModelContract):
    keeps_fp32 = True
    bf16_output_dtype = torch.float32  # the residual stream and the logits stay float32
    golden = [
        0.92189467, -0.88613886, 0.40821537, 0.52280807,  # first sample: position 0 (the start vector)
        0.23273088, -0.27163792, 0.63374633, 0.23234570,  # a position of frame 1
        -1.28404725, 0.65029639, 0.50570893, -0.21096598,  # a position of the partial frame 2
        -1.45245659, -0.30978879, 0.89678687, 0.40186074,  # second sample: the last position's last logits
    ]  # fmt: skip

    def build(self) -> TokenAR:
        return TokenAR(TINY)

    def inputs(self):
        text, mask = _text()
        return _tokens(2 * HW + 3), text.float(), mask  # a partial third frame; the first prompt padded

    def golden_slice(self, logits):
        return torch.cat([logits[0, [0, HW + 1, 2 * HW + 2], :4].flatten(), logits[1, -1, -4:]])
