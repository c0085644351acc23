"""Wan 2.1 transformer checkpoints: key maps, config translation and the loader.

kinema's parameter names are the original Wan 2.1 names (``Wan-Video/Wan2.1``,
``wan/modules/model.py``), so :data:`ORIGINAL_KEYS` is the identity on exactly the keys the
original model has (anything else raises), and :data:`DIFFUSERS_KEYS` renames to diffusers'
``WanTransformer3DModel``. Both come from one table. Note the swap: the original ``norm3`` (the
affine cross-attention norm) is diffusers' ``norm2``; the parameter-free norms have no keys.

Configs come in two forms, diffusers' ``config.json`` (:func:`from_diffusers` /
:func:`to_diffusers`) and the original ``WanModel`` ``config.json`` (:func:`from_original` /
:func:`to_original`); a single weights file without either gives its config from its tensor shapes
(:func:`from_weights`).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from ..errors import CheckpointError
from ..models.wan import WAN_CLIP_DIM, WanTransformer, WanTransformerConfig
from ..schema import Key, must, read, read_table
from .gguf import GGUF_SUFFIXES, read_gguf
from .io import (
    build_on_meta,
    component_dir,
    load_into,
    load_sharded_safetensors,
    load_weights,
    read_json,
    resolve_config,
)
from .keymap import KeyMap

# ------------------------------------------------------------------------------------------------
# Key maps
# ------------------------------------------------------------------------------------------------
# (kinema = original Wan, diffusers WanTransformer3DModel)
_RULES: list[tuple[str, str]] = [
    # embeddings
    ("patch_embedding.{leaf}", "patch_embedding.{leaf}"),
    ("text_embedding.0.{leaf}", "condition_embedder.text_embedder.linear_1.{leaf}"),
    ("text_embedding.2.{leaf}", "condition_embedder.text_embedder.linear_2.{leaf}"),
    ("time_embedding.0.{leaf}", "condition_embedder.time_embedder.linear_1.{leaf}"),
    ("time_embedding.2.{leaf}", "condition_embedder.time_embedder.linear_2.{leaf}"),
    ("time_projection.1.{leaf}", "condition_embedder.time_proj.{leaf}"),
    # image-to-video: CLIP feature MLP (LayerNorm, Linear, GELU, Linear, LayerNorm)
    ("img_emb.proj.0.{leaf}", "condition_embedder.image_embedder.norm1.{leaf}"),
    ("img_emb.proj.1.{leaf}", "condition_embedder.image_embedder.ff.net.0.proj.{leaf}"),
    ("img_emb.proj.3.{leaf}", "condition_embedder.image_embedder.ff.net.2.{leaf}"),
    ("img_emb.proj.4.{leaf}", "condition_embedder.image_embedder.norm2.{leaf}"),
    # blocks: self-attention
    ("blocks.{i}.self_attn.q.{leaf}", "blocks.{i}.attn1.to_q.{leaf}"),
    ("blocks.{i}.self_attn.k.{leaf}", "blocks.{i}.attn1.to_k.{leaf}"),
    ("blocks.{i}.self_attn.v.{leaf}", "blocks.{i}.attn1.to_v.{leaf}"),
    ("blocks.{i}.self_attn.o.{leaf}", "blocks.{i}.attn1.to_out.0.{leaf}"),
    ("blocks.{i}.self_attn.norm_q.{leaf}", "blocks.{i}.attn1.norm_q.{leaf}"),
    ("blocks.{i}.self_attn.norm_k.{leaf}", "blocks.{i}.attn1.norm_k.{leaf}"),
    # blocks: cross-attention (text, and image keys/values for i2v)
    ("blocks.{i}.norm3.{leaf}", "blocks.{i}.norm2.{leaf}"),
    ("blocks.{i}.cross_attn.q.{leaf}", "blocks.{i}.attn2.to_q.{leaf}"),
    ("blocks.{i}.cross_attn.k.{leaf}", "blocks.{i}.attn2.to_k.{leaf}"),
    ("blocks.{i}.cross_attn.v.{leaf}", "blocks.{i}.attn2.to_v.{leaf}"),
    ("blocks.{i}.cross_attn.o.{leaf}", "blocks.{i}.attn2.to_out.0.{leaf}"),
    ("blocks.{i}.cross_attn.norm_q.{leaf}", "blocks.{i}.attn2.norm_q.{leaf}"),
    ("blocks.{i}.cross_attn.norm_k.{leaf}", "blocks.{i}.attn2.norm_k.{leaf}"),
    ("blocks.{i}.cross_attn.k_img.{leaf}", "blocks.{i}.attn2.add_k_proj.{leaf}"),
    ("blocks.{i}.cross_attn.v_img.{leaf}", "blocks.{i}.attn2.add_v_proj.{leaf}"),
    ("blocks.{i}.cross_attn.norm_k_img.{leaf}", "blocks.{i}.attn2.norm_added_k.{leaf}"),
    # blocks: feed-forward and modulation
    ("blocks.{i}.ffn.0.{leaf}", "blocks.{i}.ffn.net.0.proj.{leaf}"),
    ("blocks.{i}.ffn.2.{leaf}", "blocks.{i}.ffn.net.2.{leaf}"),
    ("blocks.{i}.modulation", "blocks.{i}.scale_shift_table"),
    # output head
    ("head.head.{leaf}", "proj_out.{leaf}"),
    ("head.modulation", "scale_shift_table"),
]

#: kinema <-> diffusers ``WanTransformer3DModel``.
DIFFUSERS_KEYS = KeyMap("diffusers Wan transformer", _RULES)

#: kinema <-> original Wan 2.1 (identity on the original's keys; a ``model.diffusion_model.``
#: prefix, as in repackaged single files, is the loader's to strip).
ORIGINAL_KEYS = KeyMap("original Wan transformer", [(ours, ours) for ours, _ in _RULES])

#: diffusers keys that carry nothing and are dropped on load: an image query norm that older
#: diffusers versions created and saved but never used (diffusers itself ignores it on load).
DIFFUSERS_IGNORED_KEYS = KeyMap(
    "ignored diffusers Wan keys", [("blocks.{i}.attn2.norm_added_q.{leaf}", "blocks.{i}.attn2.norm_added_q.{leaf}")]
)

# ------------------------------------------------------------------------------------------------
# Configs
# ------------------------------------------------------------------------------------------------
DIFFUSERS_CLASS = "WanTransformer3DModel"
ORIGINAL_CLASS = "WanModel"
DIFFUSERS_QK_NORM = "rms_norm_across_heads"
WAN_HEAD_DIM = 128  # head width of every released Wan 2.1 model; used only to infer a config from weights
ORIGINAL_TEXT_LEN = 512  # diffusers' WanTransformer3DModel hard-codes 512 text tokens
ORIGINAL_ROPE_LEN = 1024  # the original WanModel hard-codes rope_max_seq_len 1024

# diffusers WanTransformer3DModel.__init__ (diffusers 0.42): each field, its default, and how kinema takes it.
_DIFFUSERS: dict[str, Key] = {
    "patch_size": read((1, 2, 2), convert=tuple),
    "num_attention_heads": read(40),
    "attention_head_dim": read(128),
    "in_channels": read(16),
    "out_channels": read(16),
    "text_dim": read(4096),
    "freq_dim": read(256),
    "ffn_dim": read(13824),
    "num_layers": read(40),
    "cross_attn_norm": read(True, convert=bool),
    # diffusers applies this norm whatever the field says; kinema implements that one
    "qk_norm": must(DIFFUSERS_QK_NORM),
    "eps": read(1e-6),
    "image_dim": read(None),
    "added_kv_proj_dim": read(None),
    "rope_max_seq_len": read(1024),
    "pos_embed_seq_len": must(None),  # first-last-frame models (Wan 2.1 FLF2V)
}
_MODEL_TYPES = ("t2v", "i2v")


def _model_type(value: Any) -> str:
    if value not in _MODEL_TYPES:
        raise ValueError(f"kinema supports {' and '.join(map(repr, _MODEL_TYPES))}")
    return value


# original WanModel.__init__ (Wan-Video/Wan2.1 wan/modules/model.py); its config.json omits
# patch_size, cross_attn_norm, qk_norm, text_dim and window_size (``ignore_for_config``).
_ORIGINAL: dict[str, Key] = {
    "model_type": read("t2v", convert=_model_type),
    "patch_size": read((1, 2, 2), convert=tuple),
    "text_len": read(512),
    "in_dim": read(16),
    "dim": read(2048),
    "ffn_dim": read(8192),
    "freq_dim": read(256),
    "text_dim": read(4096),
    "out_dim": read(16),
    "num_heads": read(16),
    "num_layers": read(32),
    "window_size": must((-1, -1)),  # only global attention
    "qk_norm": read(True, convert=bool),
    "cross_attn_norm": read(True, convert=bool),
    "eps": read(1e-6),
}


def from_diffusers(config: Mapping[str, Any]) -> WanTransformerConfig:
    """From a diffusers ``WanTransformer3DModel`` config.json (missing fields take diffusers'
    defaults); fields or values kinema does not implement raise :class:`CheckpointError`."""
    name = config.get("_class_name", DIFFUSERS_CLASS) if isinstance(config, Mapping) else None
    if name != DIFFUSERS_CLASS:
        raise CheckpointError(f"expected a diffusers {DIFFUSERS_CLASS} config; got _class_name {name!r}")
    c = read_table(config, _DIFFUSERS, what="diffusers Wan transformer config", hint="use a Wan 2.1 t2v or i2v checkpoint")
    dim = c["num_attention_heads"] * c["attention_head_dim"]
    if (c["image_dim"] is None) != (c["added_kv_proj_dim"] is None) or c["added_kv_proj_dim"] not in (None, dim):
        raise CheckpointError(
            f"diffusers Wan config has image_dim={c['image_dim']} and added_kv_proj_dim={c['added_kv_proj_dim']}; "
            f"kinema supports both None (t2v) or image_dim set with added_kv_proj_dim == {dim} (i2v)"
        )
    return WanTransformerConfig(
        dim=dim,
        ffn_dim=c["ffn_dim"],
        num_heads=c["num_attention_heads"],
        num_layers=c["num_layers"],
        patch_size=c["patch_size"],
        in_dim=c["in_channels"],
        out_dim=c["out_channels"] or c["in_channels"],
        freq_dim=c["freq_dim"],
        text_dim=c["text_dim"],
        eps=c["eps"],
        cross_attn_norm=c["cross_attn_norm"],
        qk_norm=True,
        image_dim=c["image_dim"],
        rope_max_seq_len=c["rope_max_seq_len"],
    )


def to_diffusers(config: WanTransformerConfig) -> dict[str, Any]:
    """The diffusers ``WanTransformer3DModel`` config.json for ``config``."""
    if not config.qk_norm:
        raise CheckpointError("diffusers' WanTransformer3DModel always applies q/k norms; qk_norm=False has no such form")
    if config.text_len != ORIGINAL_TEXT_LEN:
        raise CheckpointError(f"diffusers' WanTransformer3DModel hard-codes {ORIGINAL_TEXT_LEN} text tokens; text_len is {config.text_len}")
    return {
        "_class_name": DIFFUSERS_CLASS,
        "patch_size": list(config.patch_size),
        "num_attention_heads": config.num_heads,
        "attention_head_dim": config.head_dim,
        "in_channels": config.in_dim,
        "out_channels": config.out_dim,
        "text_dim": config.text_dim,
        "freq_dim": config.freq_dim,
        "ffn_dim": config.ffn_dim,
        "num_layers": config.num_layers,
        "cross_attn_norm": config.cross_attn_norm,
        "qk_norm": DIFFUSERS_QK_NORM,
        "eps": config.eps,
        "image_dim": config.image_dim,
        "added_kv_proj_dim": config.dim if config.image_dim is not None else None,
        "rope_max_seq_len": config.rope_max_seq_len,
        "pos_embed_seq_len": None,
    }


def from_original(config: Mapping[str, Any]) -> WanTransformerConfig:
    """From an original Wan 2.1 ``WanModel`` config.json (missing fields take ``WanModel``'s
    defaults); unsupported model types or values raise :class:`CheckpointError`."""
    c = read_table(config, _ORIGINAL, what="original Wan transformer config", hint="use a Wan 2.1 t2v or i2v checkpoint")
    return WanTransformerConfig(
        dim=c["dim"],
        ffn_dim=c["ffn_dim"],
        num_heads=c["num_heads"],
        num_layers=c["num_layers"],
        patch_size=c["patch_size"],
        in_dim=c["in_dim"],
        out_dim=c["out_dim"],
        freq_dim=c["freq_dim"],
        text_dim=c["text_dim"],
        eps=c["eps"],
        cross_attn_norm=c["cross_attn_norm"],
        qk_norm=c["qk_norm"],
        image_dim=WAN_CLIP_DIM if c["model_type"] == "i2v" else None,
        text_len=c["text_len"],
    )


def to_original(config: WanTransformerConfig) -> dict[str, Any]:
    """The original Wan ``WanModel`` config.json for ``config``."""
    if config.image_dim not in (None, WAN_CLIP_DIM):
        raise CheckpointError(f"the original Wan i2v model hard-codes image_dim {WAN_CLIP_DIM}; got {config.image_dim}")
    if config.rope_max_seq_len != ORIGINAL_ROPE_LEN:
        raise CheckpointError(f"the original Wan model hard-codes rope_max_seq_len {ORIGINAL_ROPE_LEN}; got {config.rope_max_seq_len}")
    return {
        "_class_name": ORIGINAL_CLASS,
        "model_type": "t2v" if config.image_dim is None else "i2v",
        "patch_size": list(config.patch_size),
        "text_len": config.text_len,
        "in_dim": config.in_dim,
        "dim": config.dim,
        "ffn_dim": config.ffn_dim,
        "freq_dim": config.freq_dim,
        "text_dim": config.text_dim,
        "out_dim": config.out_dim,
        "num_heads": config.num_heads,
        "num_layers": config.num_layers,
        "window_size": [-1, -1],
        "qk_norm": config.qk_norm,
        "cross_attn_norm": config.cross_attn_norm,
        "eps": config.eps,
    }


def from_weights(state: Mapping[str, torch.Tensor]) -> WanTransformerConfig:
    """The config of kinema-named weights (a single file without a config.json).

    Everything is read from tensor shapes except the head count, which shapes cannot give: it
    assumes Wan's head width of 128 (true for all released Wan 2.1 models).
    """
    try:
        patch = state["patch_embedding.weight"]  # (dim, in_dim, pt, ph, pw)
        dim, in_dim, patch_size = patch.shape[0], patch.shape[1], tuple(patch.shape[2:])
        num_layers = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
        image = state.get("img_emb.proj.0.weight")
        return WanTransformerConfig(
            dim=dim,
            ffn_dim=state["blocks.0.ffn.0.weight"].shape[0],
            num_heads=dim // WAN_HEAD_DIM,
            num_layers=num_layers,
            patch_size=patch_size,
            in_dim=in_dim,
            out_dim=state["head.head.weight"].shape[0] // math.prod(patch_size),
            freq_dim=state["time_embedding.0.weight"].shape[1],
            text_dim=state["text_embedding.0.weight"].shape[1],
            cross_attn_norm="blocks.0.norm3.weight" in state,
            qk_norm="blocks.0.self_attn.norm_q.weight" in state,
            image_dim=None if image is None else image.shape[0],
        )
    except (KeyError, ValueError, IndexError) as e:
        raise CheckpointError(
            f"cannot infer a Wan transformer config from these weights (missing {e}); put its config.json beside them"
        ) from None


def is_wan_config(raw: Any) -> bool:
    """Whether a config.json mapping is a Wan transformer's (diffusers or original)."""
    return isinstance(raw, Mapping) and (raw.get("_class_name") in (DIFFUSERS_CLASS, ORIGINAL_CLASS) or "model_type" in raw)


def from_config_json(raw: Mapping[str, Any]) -> WanTransformerConfig:
    """Either form of a Wan transformer config.json."""
    if isinstance(raw, Mapping) and raw.get("_class_name") == DIFFUSERS_CLASS:
        return from_diffusers(raw)
    if is_wan_config(raw):
        return from_original(raw)
    raise CheckpointError(f"a config of _class_name {raw.get('_class_name') if isinstance(raw, Mapping) else raw!r} is neither a "
                          f"diffusers {DIFFUSERS_CLASS} nor an original Wan config")


# ------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------
WEIGHTS_STEM = "diffusion_pytorch_model"  # weights file stem in both the diffusers and the original layout
_PREFIXES = ("model.diffusion_model.",)  # prefixes of repackaged single-file checkpoints (ComfyUI)


def load_wan_transformer(
    path: str | os.PathLike,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    config: WanTransformerConfig | None = None,
) -> WanTransformer:
    """Load a Wan 2.1 transformer from a diffusers or an original checkpoint.

    Args:
        path: one of
            - a diffusers ``transformer/`` directory (config.json with ``_class_name``
              ``WanTransformer3DModel`` and ``diffusion_pytorch_model*.safetensors``), or a diffusers
              pipeline directory holding one;
            - an original Wan 2.1 directory (config.json with ``model_type`` and
              ``diffusion_pytorch_model*.safetensors`` with the original keys);
            - a single weights file (original or diffusers keys, optionally prefixed with
              ``model.diffusion_model.``), with the config read from a Wan config.json beside it or,
              failing that, inferred from the weights.
        dtype: cast floating-point weights to this dtype (None keeps the file's); the modules in
            ``WanTransformer._keep_in_fp32`` stay float32.
        device: where the weights go (None: stay memory-mapped on the CPU).
        config: the architecture, as every kinema loader takes it (:func:`~kinema.checkpoints.io.resolve_config`):
            a config stored with the weights is the truth and ``config`` must equal it; without one,
            ``config`` is used, else the weights' shapes decide.

    Returns:
        The model in eval mode.
    """
    path = Path(path)
    path = component_dir(path, "transformer")  # a diffusers pipeline directory: its transformer/
    quantized: dict[str, Any] = {}
    if path.is_dir() and not any(path.glob(f"{WEIGHTS_STEM}*.safetensors*")):
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:  # a GGUF file in the transformer's place (its config.json beside it)
            path = ggufs[0]
    if path.is_file() and path.suffix.lower() in GGUF_SUFFIXES:
        where = path.parent / "config.json"
        sibling = read_json(where) if where.is_file() else None
        stored = from_config_json(sibling) if is_wan_config(sibling) else None
        state, quantized = _split_gguf(_strip_prefixes(read_gguf(path)))
    elif path.is_dir():
        where = path / "config.json"
        stored = from_config_json(read_json(where))  # before the weights: a config kinema cannot run fails fast
        state = load_sharded_safetensors(path, WEIGHTS_STEM)
    elif path.is_file():
        where = path.parent / "config.json"
        sibling = read_json(where) if where.is_file() else None
        stored = from_config_json(sibling) if is_wan_config(sibling) else None
        state = load_weights(path)
    else:
        raise CheckpointError(f"Wan transformer checkpoint not found: {path}")

    state = _strip_prefixes(state)
    if not quantized:
        state, quantized = _split_fp8(state)
    if any(k.startswith("condition_embedder.") for k in state):
        state = DIFFUSERS_KEYS.to_ours({k: v for k, v in state.items() if DIFFUSERS_IGNORED_KEYS.our_key(k) is None})
    else:
        state = ORIGINAL_KEYS.to_ours(state)
    shapes = {**state, **{k: torch.empty(q.shape, device="meta") for k, q in quantized.items()}}
    config = resolve_config(stored, config, lambda: from_weights(shapes), where=where, what="Wan transformer")
    model = build_on_meta(lambda: WanTransformer(config))
    if quantized:
        state.update(_quantized_layers(model, quantized, state, dtype or torch.float32))
    return load_into(model, state, dtype=dtype, device=device, what="Wan transformer").eval()


# ------------------------------------------------------------------------------------------------
# Quantised checkpoints as the community publishes them: GGUF (city96) and FP8 (ComfyUI, Kijai)
# ------------------------------------------------------------------------------------------------
_BLOCK_LINEAR = re.compile(r"^blocks\.\d+\.(self_attn|cross_attn|ffn)\.[a-z0-9_]+\.weight$")


@dataclass
class _Quantized:
    kind: str  # "ggml" or "fp8"
    data: torch.Tensor  # GGML blocks (uint8) or float8 values
    shape: tuple[int, ...]
    qtype: int = 0  # GGML type
    scale: torch.Tensor | None = None  # FP8: the per-tensor scale (ComfyUI's scale_weight), None for 1


def _split_gguf(tensors: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, _Quantized]]:
    """GGUF tensors -> plain tensors (F32 / F16 / BF16 as stored; quantised ones outside the
    blocks' linear layers dequantised now) and the blocks' quantised linear weights, kept as bytes."""
    plain, quantized = {}, {}
    for k, t in tensors.items():
        if not t.quantized:
            plain[k] = t.stored()
        elif _BLOCK_LINEAR.match(k) and len(t.shape) == 2:
            quantized[k] = _Quantized("ggml", t.data.reshape(t.shape[0], -1), t.shape, qtype=t.qtype)
        else:
            plain[k] = t.dequantized(torch.float32)
    return plain, quantized


_FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)


def _split_fp8(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, _Quantized]]:
    """A safetensors state with float8 weights (ComfyUI's ``*_fp8_e4m3fn`` files, and its
    ``fp8_scaled`` ones with a ``scaled_fp8`` marker and a ``<layer>.scale_weight`` per weight):
    the blocks' linear weights kept in FP8 with their scale, other float8 tensors dequantised."""
    if not any(t.dtype in _FP8 for t in state.values()):
        return state, {}
    plain, quantized = {}, {}
    for k, t in state.items():
        if k == "scaled_fp8" or k.endswith((".scale_weight", ".scale_input")):
            continue
        if t.dtype not in _FP8:
            plain[k] = t
            continue
        scale = state.get(k[: -len("weight")] + "scale_weight") if k.endswith(".weight") else None
        if _BLOCK_LINEAR.match(k) and t.dim() == 2:
            quantized[k] = _Quantized("fp8", t, tuple(t.shape), scale=scale)
        else:
            plain[k] = t.to(torch.float32) * (scale.to(torch.float32) if scale is not None else 1.0)
    return plain, quantized


def _quantized_layers(model: WanTransformer, quantized: dict[str, _Quantized], state: dict[str, torch.Tensor],
                      compute_dtype: torch.dtype) -> dict[str, torch.Tensor]:  # fmt: skip
    """Swap the linear layers whose weights are quantised for layers that keep them so (GGML
    blocks or FP8 with row scales) and return their state entries."""
    from ..models.fp8 import FP8_DTYPE, FP8Linear, quantize_fp8_rows
    from ..models.ggml import GGMLLinear, swap_linears

    entries: dict[str, torch.Tensor] = {}
    kinds = {}
    for key, q in quantized.items():
        name = key[: -len(".weight")]
        has_bias = f"{name}.bias" in state

        if q.kind == "ggml":
            kinds[name] = lambda lin, q=q, b=has_bias: GGMLLinear(lin.in_features, lin.out_features, q.qtype, bias=b, compute_dtype=compute_dtype)
            entries[key] = q.data
        else:
            if q.data.dtype != FP8_DTYPE:  # e5m2: kinema's FP8 layer stores e4m3 with row scales; requantise
                values = q.data.to(torch.float32) * (q.scale.to(torch.float32) if q.scale is not None else 1.0)
                data, scale = quantize_fp8_rows(values)
            else:
                data = q.data
                scale = (q.scale.to(torch.float32).reshape(()) if q.scale is not None else torch.tensor(1.0)).expand(q.shape[0]).contiguous()
            kinds[name] = lambda lin, b=has_bias: FP8Linear(lin.in_features, lin.out_features, bias=b, compute_dtype=compute_dtype)
            entries[key] = data
            entries[f"{name}.weight_scale"] = scale
    swap_linears(model, kinds)
    return entries


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in _PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            return {k[len(prefix) :]: v for k, v in state.items()}
    return state


# ------------------------------------------------------------------------------------------------
# Model directories: the original Wan 2.1 release, and the family's parts by layout
# ------------------------------------------------------------------------------------------------
# Files of the original Wan 2.1 release (Wan-Video/Wan2.1, wan/configs/wan_t2v_*.py).
ORIGINAL_VAE = ("Wan2.1_VAE.pth", "Wan2.1_VAE.safetensors")
ORIGINAL_T5 = ("models_t5_umt5-xxl-enc-bf16.pth", "models_t5_umt5-xxl-enc-bf16.safetensors")
ORIGINAL_TOKENIZER = "google/umt5-xxl"
ORIGINAL_CLIP = ("models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth", "models_clip_open-clip-xlm-roberta-large-vit-huge-14.safetensors")
ORIGINAL_SHIFT = {"t2v": 5.0, "i2v": 5.0}  # generate.py: sample_shift 5.0 ...
ORIGINAL_I2V_480P_SHIFT = 3.0  # ... but 3.0 for image-to-video at 832 x 480 (either orientation)
ORIGINAL_FAMILY = {"t2v": "wan-t2v", "i2v": "wan-i2v"}
# wan/configs/shared_config.py: sample_neg_prompt, what Wan's own generate uses when no negative prompt is given
ORIGINAL_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，残缺的，"
    "多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)


def detect(root: Path) -> Any:
    """The original Wan 2.1 layout at ``root`` (``config.json`` with ``model_type`` beside
    ``diffusion_pytorch_model*.safetensors`` or one ``*.gguf`` file, ``Wan2.1_VAE.pth``, ``models_t5_umt5-xxl-enc-bf16.pth``
    and ``google/umt5-xxl/``), or None when ``root`` is not one."""
    from .layouts import ModelLayout

    if not (root / "config.json").is_file():
        return None
    config = read_json(root / "config.json")
    model_type = config.get("model_type")
    if model_type not in ORIGINAL_FAMILY:
        return None

    def first(names: tuple[str, ...], what: str) -> Path:
        for n in names:
            if (root / n).is_file():
                return root / n
        raise CheckpointError(f"{root}: missing component {what!r} (expected {' or '.join(names)})")

    tokenizer = root / ORIGINAL_TOKENIZER
    if not tokenizer.is_dir():
        raise CheckpointError(f"{root}: missing component 'tokenizer' (expected the folder {ORIGINAL_TOKENIZER}/)")
    single = root / "diffusion_pytorch_model.safetensors"
    components = {
        "transformer": single if single.is_file() else root,  # one file, or the directory of its shards (or one .gguf file)
        "vae": first(ORIGINAL_VAE, "vae"),
        "text_encoder": first(ORIGINAL_T5, "text_encoder"),
        "tokenizer": tokenizer,
    }
    if model_type == "i2v":
        components["image_encoder"] = first(ORIGINAL_CLIP, "image_encoder")
    return ModelLayout("wan-original", ORIGINAL_FAMILY[model_type], root, components)


def generator_config(layout: Any) -> WanTransformerConfig:
    """The transformer's config, from the config.json beside its weights."""
    path = layout.components["transformer"]
    return from_config_json(read_json((path if path.is_dir() else path.parent) / "config.json"))


def load_generator(layout: Any, dtype: torch.dtype | None = None, device: Any = None, quantize: Any = None) -> WanTransformer:
    """The layout's transformer (``quantize`` is not offered for this family)."""
    return load_wan_transformer(layout.components["transformer"], dtype=dtype, device=device)


def text_encoder(layout: Any, dtype: torch.dtype | None = None, device: Any = None) -> Any:
    """UMT5 of a diffusers or original layout (512 tokens, Wan's text length)."""
    from ..text.t5 import T5TextEncoder

    c = layout.components
    if layout.format == "diffusers":
        return T5TextEncoder.from_diffusers(c["text_encoder"], c["tokenizer"], dtype=dtype, device=device)
    return T5TextEncoder.from_wan_original(c["text_encoder"], c["tokenizer"], dtype=dtype, device=device)


def layout_defaults(layout: Any) -> dict:
    """Defaults of a published layout: the original release's negative prompt, which Wan's own
    scripts use when none is given (diffusers' pipelines use none: "")."""
    return {"negative_prompt": ORIGINAL_NEGATIVE_PROMPT} if layout.format == "wan-original" else {}


def image_encoder(layout: Any, dtype: torch.dtype | None = None, device: Any = None) -> Any:
    """The CLIP vision tower of an image-to-video layout: diffusers' ``image_encoder/`` and
    ``image_processor/``, or the original ``models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth``."""
    from ..image.clip import CLIPImageEncoder

    c = layout.components
    if layout.format == "diffusers":
        return CLIPImageEncoder.from_diffusers(c["image_encoder"], c["image_processor"], dtype=dtype, device=device)
    return CLIPImageEncoder.from_wan_original(c["image_encoder"], dtype=dtype, device=device)


def sampler(layout: Any) -> Any:
    """The diffusers scheduler config's sampler; the original release's defaults: UniPC, shift 5,
    and for image-to-video 3 at 832 x 480 (Wan's generate.py picks it from the size)."""
    from ..sampling import SamplerSpec

    if layout.format == "diffusers":
        return SamplerSpec.from_diffusers(read_json(layout.components["scheduler"] / "scheduler_config.json"))
    if layout.pipeline == "wan-i2v":
        area_shift = ((480 * 832, ORIGINAL_I2V_480P_SHIFT), (480 * 832 + 1, ORIGINAL_SHIFT["i2v"]))
        return SamplerSpec(name="unipc", shift=ORIGINAL_SHIFT["i2v"], area_shift=area_shift)
    return SamplerSpec(name="unipc", shift=ORIGINAL_SHIFT["t2v"])
