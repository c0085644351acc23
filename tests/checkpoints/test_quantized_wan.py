"""Quantised Wan 2.1 transformers as the community publishes them: GGUF (Q8_0, Q5_K, Q4_K, F16,
BF16; city96's layout for ComfyUI, the patch embedding flattened with its shape in the metadata)
and FP8 safetensors (ComfyUI's e4m3fn files, plain or scaled), in the original key names with or
without ComfyUI's ``model.diffusion_model.`` prefix. The blocks' linear weights stay quantised in
memory and are dequantised at each call; the model equals a float one holding the dequantised
weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kinema.checkpoints.io import build_on_meta, load_into
from kinema.checkpoints.wan import load_wan_transformer
from kinema.errors import CheckpointError
from kinema.models.fp8 import FP8Linear
from kinema.models.ggml import BLOCKS, Q4_K, Q5_K, Q8_0, GGMLLinear, dequantize
from kinema.models.wan import WanTransformer, WanTransformerConfig

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as T  # noqa: E402

PREFIX = "model.diffusion_model."


def tiny_config(width: int) -> WanTransformerConfig:
    return WanTransformerConfig(dim=width, ffn_dim=2 * width, num_heads=width // 128 or 1, num_layers=2, text_dim=32, freq_dim=32, in_dim=4, out_dim=4)


def random_model(config: WanTransformerConfig, seed: int = 0) -> WanTransformer:
    torch.manual_seed(seed)
    model = WanTransformer(config)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape) * 0.05)
    return model.eval()


def _k_blocks(rng: np.random.Generator, rows: int, cols: int, qtype: int) -> np.ndarray:
    """Random valid K-quant super-blocks (the gguf package cannot quantise to K types): scale and
    minimum small positive float16s, the rest random bits."""
    per, nbytes = BLOCKS[qtype]
    n = rows * cols // per
    blocks = rng.integers(0, 256, size=(n, nbytes), dtype=np.uint8)
    for lo in (0, 2):
        blocks[:, lo : lo + 2] = np.frombuffer(rng.uniform(2e-4, 2e-3, n).astype(np.float16).tobytes(), dtype=np.uint8).reshape(n, 2)
    return blocks.reshape(rows, cols // per * nbytes)


def _is_block_linear(name: str, t: torch.Tensor) -> bool:
    return name.startswith("blocks.") and name.endswith(".weight") and t.dim() == 2


def write_gguf(path: Path, model: WanTransformer, qtype: int, prefix: str = "") -> dict[str, torch.Tensor]:
    """``model`` as city96's converter writes it: block linears in ``qtype``, everything else F32
    (the 5-D patch embedding flattened, its shape in ``comfy.gguf.orig_shape.*``). Returns the
    float weights the file holds (block linears dequantised by the gguf package's reference)."""
    rng = np.random.default_rng(1)
    w = gguf.GGUFWriter(str(path), arch="wan")
    held = {}
    for name, t in model.state_dict().items():
        a = t.numpy().astype(np.float32)
        key = prefix + name
        if _is_block_linear(name, t) and qtype != T.F32:
            if qtype in (Q4_K, Q5_K):
                data = _k_blocks(rng, *a.shape, qtype)
            elif qtype == Q8_0:
                data = gguf.quants.quantize(a, T.Q8_0)
            else:  # F16 / BF16
                data = gguf.quants.quantize(a, T(qtype))
            w.add_tensor(key, data, raw_dtype=T(qtype))
            held[name] = torch.from_numpy(gguf.quants.dequantize(data, T(qtype)).astype(np.float32).reshape(a.shape))
        else:
            if a.ndim > 4:
                w.add_array(f"comfy.gguf.orig_shape.{key}", list(a.shape))
                a = a.reshape(a.shape[0], -1)
            w.add_tensor(key, a)
            held[name] = t.clone()
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return held


def float_twin(config: WanTransformerConfig, held: dict[str, torch.Tensor]) -> WanTransformer:
    model = build_on_meta(lambda: WanTransformer(config))
    return load_into(model, held, dtype=torch.float32).eval()


def inputs(config: WanTransformerConfig):
    g = torch.Generator().manual_seed(5)
    return torch.randn((1, config.in_dim, 2, 8, 8), generator=g), torch.tensor([700.0]), torch.randn((1, 7, config.text_dim), generator=g)


@pytest.mark.parametrize("qtype, width", [(Q8_0, 128), (Q5_K, 256), (Q4_K, 256), (int(T.F16), 128), (int(T.BF16), 128)])
@pytest.mark.parametrize("prefix", ["", PREFIX])
def test_gguf_loads_quantised_and_equals_the_dequantised_float_model(tmp_path, qtype, width, prefix):
    config = tiny_config(width)
    model = random_model(config)
    path = tmp_path / "wan-tiny.gguf"
    held = write_gguf(path, model, qtype, prefix)
    loaded = load_wan_transformer(path, dtype=torch.float32)  # no config.json: read off the shapes
    assert loaded.config == config
    ffn = loaded.blocks[0].ffn[0]
    if qtype in (Q8_0, Q5_K, Q4_K):  # kept as the file's bytes: a quarter to a half of bf16
        assert isinstance(ffn, GGMLLinear) and ffn.weight.dtype == torch.uint8
        assert ffn.weight.numel() < ffn.in_features * ffn.out_features * 2 * 0.6
    else:
        assert isinstance(ffn, torch.nn.Linear)
    x, t, ctx = inputs(config)
    with torch.no_grad():
        got, want = loaded(x, t, ctx), float_twin(config, held)(x, t, ctx)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_kinema_dequantisation_is_the_reference_bit_for_bit():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 512)).astype(np.float32)
    q = gguf.quants.quantize(a, T.Q8_0)
    assert np.array_equal(dequantize(torch.from_numpy(q), Q8_0, (4, 512)).numpy(), gguf.quants.dequantize(q, T.Q8_0))
    for qtype in (Q4_K, Q5_K):
        data = _k_blocks(rng, 4, 512, qtype)
        assert np.array_equal(dequantize(torch.from_numpy(data), qtype, (4, 512)).numpy(), gguf.quants.dequantize(data, T(qtype)))


def write_fp8(path: Path, model: WanTransformer, scaled: bool, prefix: str = PREFIX) -> dict[str, torch.Tensor]:
    """ComfyUI's FP8 files: block linears in float8_e4m3fn (``scaled``: divided by a per-tensor
    ``scale_weight`` first, with the ``scaled_fp8`` marker), the rest bf16."""
    from safetensors.torch import save_file

    state, held = {}, {}
    if scaled:
        state[prefix + "scaled_fp8"] = torch.zeros(0, dtype=torch.float8_e4m3fn)
    for name, t in model.state_dict().items():
        if _is_block_linear(name, t):
            scale = t.abs().max() / 448.0 if scaled else torch.tensor(1.0)
            q = (t / scale).to(torch.float8_e4m3fn)
            state[prefix + name] = q
            if scaled:
                state[prefix + name[: -len("weight")] + "scale_weight"] = scale.reshape(1)
                state[prefix + name[: -len("weight")] + "scale_input"] = torch.ones(1)
            held[name] = q.to(torch.float32) * scale
        else:
            state[prefix + name] = t.to(torch.bfloat16)
            held[name] = t.to(torch.bfloat16).to(torch.float32)
    save_file(state, str(path))
    return held


@pytest.mark.parametrize("scaled", [False, True])
def test_fp8_safetensors_stay_fp8_and_equal_the_dequantised_float_model(tmp_path, scaled):
    config = tiny_config(128)
    model = random_model(config)
    held = write_fp8(tmp_path / "wan_fp8.safetensors", model, scaled)
    loaded = load_wan_transformer(tmp_path / "wan_fp8.safetensors", dtype=torch.float32)
    ffn = loaded.blocks[1].ffn[2]
    assert isinstance(ffn, FP8Linear) and ffn.weight.dtype == torch.float8_e4m3fn and ffn.weight_scale.dtype == torch.float32
    x, t, ctx = inputs(config)
    with torch.no_grad():
        got, want = loaded(x, t, ctx), float_twin(config, held)(x, t, ctx)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)  # the scale multiplies the output, not the weight


def test_broken_gguf_is_one_line(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 7)
    with pytest.raises(CheckpointError) as e:
        load_wan_transformer(bad)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("kind", ["gguf", "fp8"])
def test_quantised_blocks_stream_under_the_planner_and_give_the_same_velocity(tmp_path, kind):
    """The planner counts and streams a quantised layer's stored tensors (GGML bytes, FP8 values
    and scales) as they are: no conversion, the same velocity bit for bit."""
    from kinema.pipelines.memory import apply_plan, measure, plan_memory

    config = tiny_config(128)
    model = random_model(config)
    path = tmp_path / ("wan.gguf" if kind == "gguf" else "wan_fp8.safetensors")
    write_gguf(path, model, Q8_0) if kind == "gguf" else write_fp8(path, model, scaled=True)
    x, t, ctx = inputs(config)
    with torch.no_grad():
        want = load_wan_transformer(path, dtype=torch.float32)(x, t, ctx)

    class Holder:
        transformer = load_wan_transformer(path, dtype=torch.float32)

    holder = Holder()
    sizes = measure(holder, torch.float32, torch.device("cpu"))
    quantised = holder.transformer.blocks[0].ffn[0]
    stored = sum(b.numel() * b.element_size() for b in quantised.buffers())
    assert sizes["transformer"].block >= stored  # counted in their own dtype
    plan = plan_memory(sizes, {"denoise": 0}, None, "block")
    off = apply_plan(holder, plan, torch.float32, torch.device("cpu"))
    with torch.no_grad():
        got = holder.transformer(x, t, ctx)
    assert torch.equal(got, want) and off.loads > len(holder.transformer.blocks)
    waiting = next(g for g in off.groups if g.block and not g.resident)
    assert any(s.value.dtype in (torch.uint8, torch.float8_e4m3fn) for s in waiting.slots)


def test_an_original_layout_with_a_gguf_transformer_generates_like_its_safetensors(tmp_path):
    """The original Wan release's folder with the transformer as a GGUF file (city96's name, ComfyUI's
    key prefix) instead of diffusion_pytorch_model.safetensors: the same model, the same frames."""
    from safetensors.torch import load_file

    import kinema
    from kinema.checkpoints.wan import ORIGINAL_KEYS
    from tests.helpers import save_diffusers_wan_pipeline, save_original_wan_layout

    save_diffusers_wan_pipeline(tmp_path / "diffusers")
    root = save_original_wan_layout(tmp_path / "diffusers", tmp_path / "original")
    call = dict(prompt="a red circle moving left", height=32, width=32, num_frames=5, num_inference_steps=3, seed=2, progress_bar=False)
    want = kinema.load_pipeline(root)(**call)
    config = kinema.load_pipeline(root).transformer.config
    model = build_on_meta(lambda: WanTransformer(config))
    load_into(model, ORIGINAL_KEYS.to_ours(load_file(root / "diffusion_pytorch_model.safetensors")))
    (root / "diffusion_pytorch_model.safetensors").unlink()
    write_gguf(root / "wan2.1-t2v-tiny-F32.gguf", model, int(T.F32), PREFIX)
    got = kinema.load_pipeline(root)(**call)
    assert np.array_equal(got.frames, want.frames)
