"""LTX-Video transformer checkpoints (kinema's Spectro-2B): key maps, config translation, the
single-file metadata and the loader.

kinema's names follow :mod:`kinema.models.wan` (``patch_embedding``, ``text_embedding.0``,
``blocks.{i}.self_attn.q``, ``head.head``...), so the two DiT families read alike.
:data:`DIFFUSERS_KEYS` renames to diffusers' ``LTXVideoTransformer3DModel`` and
:data:`ORIGINAL_KEYS` to the original ``Lightricks/LTX-Video`` ``Transformer3DModel`` (the
``model.diffusion_model.*`` part of the single-file releases; the prefix is the loader's to strip).
Both come from one table. The original names differ from diffusers' in four places only
(``patchify_proj`` / ``proj_in``, ``adaln_single`` / ``time_embed``, ``q_norm`` / ``norm_q``,
``k_norm`` / ``norm_k``: diffusers' ``convert_ltx_transformer_checkpoint_to_diffusers``). The
parameter-free RMSNorms and the output LayerNorm have no keys.

The original single-file releases keep their configs (transformer, VAE, scheduler) as one JSON
object under ``"config"`` in the safetensors metadata: :func:`single_file_config` reads it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from ..errors import CheckpointError
from ..models.ltx import (
    FFN_MULT,
    ROPE_BASE_POSITIONS,
    ROPE_THETA,
    TIMESTEP_SCALE,
    LTXTransformer,
    LTXTransformerConfig,
)
from ..schema import Key, ignored, must, read, read_table
from .io import (
    build_on_meta,
    component_dir,
    load_into,
    load_sharded_safetensors,
    load_weights,
    read_json,
    resolve_config,
    safetensors_metadata,
)
from .keymap import KeyMap

# ------------------------------------------------------------------------------------------------
# Key maps
# ------------------------------------------------------------------------------------------------
# (kinema, diffusers LTXVideoTransformer3DModel, original LTX-Video Transformer3DModel)
_RULES: list[tuple[str, str, str]] = [
    # embeddings
    ("patch_embedding.{leaf}", "proj_in.{leaf}", "patchify_proj.{leaf}"),
    ("text_embedding.0.{leaf}", "caption_projection.linear_1.{leaf}", "caption_projection.linear_1.{leaf}"),
    ("text_embedding.2.{leaf}", "caption_projection.linear_2.{leaf}", "caption_projection.linear_2.{leaf}"),
    ("time_embedding.0.{leaf}", "time_embed.emb.timestep_embedder.linear_1.{leaf}", "adaln_single.emb.timestep_embedder.linear_1.{leaf}"),
    ("time_embedding.2.{leaf}", "time_embed.emb.timestep_embedder.linear_2.{leaf}", "adaln_single.emb.timestep_embedder.linear_2.{leaf}"),
    ("time_projection.1.{leaf}", "time_embed.linear.{leaf}", "adaln_single.linear.{leaf}"),
    # blocks: self-attention (attn1)
    ("blocks.{i}.self_attn.q.{leaf}", "transformer_blocks.{i}.attn1.to_q.{leaf}", "transformer_blocks.{i}.attn1.to_q.{leaf}"),
    ("blocks.{i}.self_attn.k.{leaf}", "transformer_blocks.{i}.attn1.to_k.{leaf}", "transformer_blocks.{i}.attn1.to_k.{leaf}"),
    ("blocks.{i}.self_attn.v.{leaf}", "transformer_blocks.{i}.attn1.to_v.{leaf}", "transformer_blocks.{i}.attn1.to_v.{leaf}"),
    ("blocks.{i}.self_attn.o.{leaf}", "transformer_blocks.{i}.attn1.to_out.0.{leaf}", "transformer_blocks.{i}.attn1.to_out.0.{leaf}"),
    ("blocks.{i}.self_attn.norm_q.{leaf}", "transformer_blocks.{i}.attn1.norm_q.{leaf}", "transformer_blocks.{i}.attn1.q_norm.{leaf}"),
    ("blocks.{i}.self_attn.norm_k.{leaf}", "transformer_blocks.{i}.attn1.norm_k.{leaf}", "transformer_blocks.{i}.attn1.k_norm.{leaf}"),
    # blocks: cross-attention to the text (attn2)
    ("blocks.{i}.cross_attn.q.{leaf}", "transformer_blocks.{i}.attn2.to_q.{leaf}", "transformer_blocks.{i}.attn2.to_q.{leaf}"),
    ("blocks.{i}.cross_attn.k.{leaf}", "transformer_blocks.{i}.attn2.to_k.{leaf}", "transformer_blocks.{i}.attn2.to_k.{leaf}"),
    ("blocks.{i}.cross_attn.v.{leaf}", "transformer_blocks.{i}.attn2.to_v.{leaf}", "transformer_blocks.{i}.attn2.to_v.{leaf}"),
    ("blocks.{i}.cross_attn.o.{leaf}", "transformer_blocks.{i}.attn2.to_out.0.{leaf}", "transformer_blocks.{i}.attn2.to_out.0.{leaf}"),
    ("blocks.{i}.cross_attn.norm_q.{leaf}", "transformer_blocks.{i}.attn2.norm_q.{leaf}", "transformer_blocks.{i}.attn2.q_norm.{leaf}"),
    ("blocks.{i}.cross_attn.norm_k.{leaf}", "transformer_blocks.{i}.attn2.norm_k.{leaf}", "transformer_blocks.{i}.attn2.k_norm.{leaf}"),
    # blocks: feed-forward and modulation
    ("blocks.{i}.ffn.0.{leaf}", "transformer_blocks.{i}.ff.net.0.proj.{leaf}", "transformer_blocks.{i}.ff.net.0.proj.{leaf}"),
    ("blocks.{i}.ffn.2.{leaf}", "transformer_blocks.{i}.ff.net.2.{leaf}", "transformer_blocks.{i}.ff.net.2.{leaf}"),
    ("blocks.{i}.modulation", "transformer_blocks.{i}.scale_shift_table", "transformer_blocks.{i}.scale_shift_table"),
    # output head
    ("head.head.{leaf}", "proj_out.{leaf}", "proj_out.{leaf}"),
    ("head.modulation", "scale_shift_table", "scale_shift_table"),
]  # fmt: skip

#: kinema <-> diffusers ``LTXVideoTransformer3DModel``.
DIFFUSERS_KEYS = KeyMap("diffusers LTX transformer", [(ours, diffusers) for ours, diffusers, _ in _RULES])

#: kinema <-> original LTX-Video ``Transformer3DModel`` (without the single file's
#: ``model.diffusion_model.`` prefix).
ORIGINAL_KEYS = KeyMap("original LTX transformer", [(ours, original) for ours, _, original in _RULES])

SINGLE_FILE_PREFIX = "model.diffusion_model."  # prefix of the transformer keys in the original single files

# ------------------------------------------------------------------------------------------------
# Configs
# ------------------------------------------------------------------------------------------------
DIFFUSERS_CLASS = "LTXVideoTransformer3DModel"
ORIGINAL_CLASS = "Transformer3DModel"
LTX_NUM_HEADS = 32  # heads of every released LTX-Video transformer (2B: 32 x 64, 13B: 32 x 128); to infer configs

# diffusers LTXVideoTransformer3DModel.__init__ (diffusers 0.42): defaults, and the one value of the
# fields kinema implements (the released models' values).
_DIFFUSERS: dict[str, Key] = {
    "in_channels": read(128),
    "out_channels": read(128),
    "patch_size": must(1),
    "patch_size_t": must(1),
    "num_attention_heads": read(32),
    "attention_head_dim": read(64),
    "cross_attention_dim": read(2048),
    "num_layers": read(28),
    "activation_fn": must("gelu-approximate"),
    "qk_norm": must("rms_norm_across_heads"),
    "norm_elementwise_affine": must(False),
    "norm_eps": read(1e-6),
    "caption_channels": read(4096),
    "attention_bias": must(True),
    "attention_out_bias": must(True),
}
# original Transformer3DModel.__init__ (Lightricks/LTX-Video ltx_video/models/transformers/transformer3d.py):
# the fields that change the computation, with the released 2B and 13B models' values where kinema
# implements one; the original reads its configs with diffusers' ConfigMixin, which drops keys it
# does not know, so those cannot change the computation and are ignored here too.
_ORIGINAL: dict[str, Key] = {
    "num_attention_heads": read(16),
    "attention_head_dim": read(88),
    "in_channels": read(None),
    "out_channels": read(None),
    "num_layers": read(1),
    "cross_attention_dim": read(None),
    "caption_channels": read(None),
    "norm_eps": read(1e-5),
    "attention_bias": must(True, False),
    "activation_fn": must("gelu-approximate", "geglu"),
    "only_cross_attention": must(False),
    "double_self_attention": must(False),
    "adaptive_norm": must("single_scale_shift"),
    "standardization_norm": must("rms_norm", "layer_norm"),
    "norm_elementwise_affine": must(False, True),
    "attention_type": must("default"),
    "qk_norm": must("rms_norm", None),
    "positional_embedding_type": must("rope"),
    "positional_embedding_theta": must(ROPE_THETA, None),
    "positional_embedding_max_pos": must(list(ROPE_BASE_POSITIONS), None),
    "timestep_scale_multiplier": must(TIMESTEP_SCALE, None),
    # run-time flags and fields of the PixArt base class that the released models leave inert
    **{k: ignored() for k in (
        "dropout", "norm_num_groups", "num_vector_embeds", "num_embeds_ada_norm", "use_linear_projection",
        "upcast_attention", "use_tpu_flash_attention", "use_chipmunk_attention", "causal_temporal_positioning",
        "project_to_2d_pos",
    )},
}  # fmt: skip


def _config(c: Mapping[str, Any], what: str) -> LTXTransformerConfig:
    """kinema's config from the fields diffusers' and the original config share (read by their tables)."""
    dim = c["num_attention_heads"] * c["attention_head_dim"]
    if c["cross_attention_dim"] != dim:
        raise CheckpointError(
            f"{what} has cross_attention_dim={c['cross_attention_dim']}, but the text is projected to the model width "
            f"{dim}; kinema supports only cross_attention_dim == num_attention_heads * attention_head_dim"
        )
    return LTXTransformerConfig(
        dim=dim,
        ffn_dim=FFN_MULT * dim,
        num_heads=c["num_attention_heads"],
        num_layers=c["num_layers"],
        in_dim=c["in_channels"],
        out_dim=c["out_channels"] or c["in_channels"],
        text_dim=c["caption_channels"],
        eps=c["norm_eps"],
    )


def from_diffusers(config: Mapping[str, Any]) -> LTXTransformerConfig:
    """From a diffusers ``LTXVideoTransformer3DModel`` config.json (missing fields take diffusers'
    defaults); fields or values kinema does not implement raise :class:`CheckpointError`."""
    name = config.get("_class_name", DIFFUSERS_CLASS) if isinstance(config, Mapping) else None
    if name != DIFFUSERS_CLASS:
        raise CheckpointError(f"expected a diffusers {DIFFUSERS_CLASS} config; got _class_name {name!r}")
    what = "diffusers LTX transformer config"
    c = read_table(config, _DIFFUSERS, what=what)
    return _config(c, what)


def _check_ffn(config: LTXTransformerConfig, target: str) -> None:
    if config.ffn_dim != FFN_MULT * config.dim:
        raise CheckpointError(f"{target} fixes the feed-forward width at {FFN_MULT} * dim = {FFN_MULT * config.dim}; got ffn_dim {config.ffn_dim}")


def to_diffusers(config: LTXTransformerConfig) -> dict[str, Any]:
    """The diffusers ``LTXVideoTransformer3DModel`` config.json for ``config``."""
    _check_ffn(config, "diffusers' LTXVideoTransformer3DModel")
    return {
        "_class_name": DIFFUSERS_CLASS,
        **{k: row.must for k, row in _DIFFUSERS.items() if not row.read},
        "in_channels": config.in_dim,
        "out_channels": config.out_dim,
        "num_attention_heads": config.num_heads,
        "attention_head_dim": config.head_dim,
        "cross_attention_dim": config.dim,
        "num_layers": config.num_layers,
        "norm_eps": config.eps,
        "caption_channels": config.text_dim,
    }


def from_original(config: Mapping[str, Any]) -> LTXTransformerConfig:
    """From an original LTX-Video ``Transformer3DModel`` config (missing fields take its defaults).
    Values that change the computation and that kinema does not implement raise
    :class:`CheckpointError`; the original's run-time flags (TPU attention, dropout...) are ignored."""
    what = "original LTX transformer config"
    c = read_table(config, _ORIGINAL, what=what, unknown_keys="ignore")
    if c["caption_channels"] is None or c["in_channels"] is None:
        raise CheckpointError(f"{what} has caption_channels={c['caption_channels']}, in_channels={c['in_channels']}; kinema needs both set")
    return _config(c, what)


def to_original(config: LTXTransformerConfig) -> dict[str, Any]:
    """The original LTX-Video ``Transformer3DModel`` config for ``config``."""
    _check_ffn(config, "the original LTX-Video Transformer3DModel")
    return {
        "_class_name": ORIGINAL_CLASS,
        **{k: row.must for k, row in _ORIGINAL.items() if not row.read and not row.ignored},
        "num_attention_heads": config.num_heads,
        "attention_head_dim": config.head_dim,
        "in_channels": config.in_dim,
        "out_channels": config.out_dim,
        "num_layers": config.num_layers,
        "cross_attention_dim": config.dim,
        "caption_channels": config.text_dim,
        "norm_eps": config.eps,
    }


def from_weights(state: Mapping[str, torch.Tensor]) -> LTXTransformerConfig:
    """The config of kinema-named weights (a single file without a config).

    Everything is read from tensor shapes except the head count, which shapes cannot give: it
    assumes the 32 heads of every released LTX-Video transformer; ``eps`` takes its default.
    """
    try:
        dim, in_dim = state["patch_embedding.weight"].shape  # (dim, in_dim)
        fields = dict(
            dim=dim,
            ffn_dim=state["blocks.0.ffn.0.weight"].shape[0],
            num_layers=1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks.")),
            in_dim=in_dim,
            out_dim=state["head.head.weight"].shape[0],
            text_dim=state["text_embedding.0.weight"].shape[1],
        )
    except (KeyError, ValueError, IndexError) as e:
        raise CheckpointError(f"cannot infer an LTX transformer config from these weights (missing {e}); pass config=") from None
    if dim % LTX_NUM_HEADS:
        raise CheckpointError(
            f"cannot infer the head count of an LTX transformer of width {dim} (released models have "
            f"{LTX_NUM_HEADS} heads); pass config="
        )
    return LTXTransformerConfig(num_heads=LTX_NUM_HEADS, **fields)


# ------------------------------------------------------------------------------------------------
# The single file's metadata
# ------------------------------------------------------------------------------------------------
def single_file_config(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON object under ``"config"`` in an original LTX-Video file's metadata ({} when absent):
    ``{"transformer": {...}, "vae": {...}, "scheduler": {...}}`` as the releases store it."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return {}
    raw = safetensors_metadata(path).get("config")
    if raw is None:
        return {}
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: the 'config' metadata is not valid JSON: {e}") from None
    if not isinstance(config, dict) or not all(isinstance(v, dict) or v is None for v in config.values()):
        raise CheckpointError(f"{path}: the 'config' metadata must be a JSON object of component configs")
    return config


def stored_config(path: str | os.PathLike) -> LTXTransformerConfig | None:
    """The transformer config a diffusers directory or an original single file stores, or None."""
    path = Path(path)
    if path.is_dir():
        return from_diffusers(read_json(path / "config.json"))
    transformer = single_file_config(path).get("transformer")
    if not transformer:
        return None
    return from_diffusers(transformer) if transformer.get("_class_name") == DIFFUSERS_CLASS else from_original(transformer)


# ------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------
WEIGHTS_STEM = "diffusion_pytorch_model"  # weights file stem of a diffusers transformer directory


def load_ltx_transformer(
    path: str | os.PathLike,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    config: LTXTransformerConfig | None = None,
) -> LTXTransformer:
    """Load an LTX-Video transformer from a diffusers directory or an original single file.

    Args:
        path: one of
            - a diffusers ``transformer/`` directory (config.json with ``_class_name``
              ``LTXVideoTransformer3DModel`` and ``diffusion_pytorch_model*.safetensors``, possibly
              sharded), or a diffusers pipeline directory holding one;
            - an original single file (``ltx-video-2b-v0.9*.safetensors``): the keys under
              ``model.diffusion_model.`` are the transformer's (the VAE's ``vae.*`` keys are
              skipped), and its config is the ``"transformer"`` entry of the JSON stored under
              ``"config"`` in the safetensors metadata, or, when absent, inferred from the weights;
            - any single weights file with diffusers or original keys (unprefixed).
        dtype: cast floating-point weights to this dtype (None keeps the file's); the modules in
            ``LTXTransformer._keep_in_fp32`` stay float32.
        device: where the weights go (None: stay memory-mapped on the CPU).
        config: the architecture where nothing stored tells it (e.g. a head count other than 32);
            a stored config must equal it (:func:`~kinema.checkpoints.io.resolve_config`).

    Returns:
        The model in eval mode.
    """
    path = Path(path)
    path = component_dir(path, "transformer")  # a diffusers pipeline directory: its transformer/
    if not path.exists():
        raise CheckpointError(f"LTX transformer checkpoint not found: {path}")
    stored = stored_config(path)  # before the weights: a config kinema cannot run fails fast
    if path.is_dir():
        state = load_sharded_safetensors(path, WEIGHTS_STEM)
    else:
        state = load_weights(path)
        if any(k.startswith(SINGLE_FILE_PREFIX) for k in state):
            state = {k[len(SINGLE_FILE_PREFIX) :]: v for k, v in state.items() if k.startswith(SINGLE_FILE_PREFIX)}
    keys = DIFFUSERS_KEYS if any(k.startswith("proj_in.") for k in state) else ORIGINAL_KEYS
    state = keys.to_ours(state)
    config = resolve_config(stored, config, lambda: from_weights(state), where=path, what="LTX transformer")
    model = build_on_meta(lambda: LTXTransformer(config))
    return load_into(model, state, dtype=dtype, device=device, what="LTX transformer").eval()


# ------------------------------------------------------------------------------------------------
# Model directories: the original single file, and the family's parts by layout
# ------------------------------------------------------------------------------------------------
# The T5 folders LTX-Video's inference.py loads (from the PixArt-alpha repository), and the
# schedule of its RectifiedFlowScheduler ("SD3" shifting: ltx_video/schedulers/rf.py get_normal_shift;
# the same numbers as the published diffusers scheduler_config.json), terminal from the metadata.
ORIGINAL_TEXT_REPO = "PixArt-alpha/PixArt-XL-2-1024-MS"
VAE_PREFIX = "vae."  # the VAE's keys in a single file
RESOLUTION_SHIFT = dict(base_seq_len=1024, max_seq_len=4096, base_shift=0.95, max_shift=2.05)
SHIFT_TERMINAL = 0.1


def is_single_file(path: Path) -> bool:
    """An original LTX-Video checkpoint: transformer keys under ``model.diffusion_model.`` and VAE
    keys under ``vae.`` in one safetensors file (only the header is read)."""
    from .io import safetensors_shapes

    keys = safetensors_shapes(path)
    return any(k.startswith(SINGLE_FILE_PREFIX) for k in keys) and any(k.startswith(VAE_PREFIX) for k in keys)


def detect(root: Path) -> Any:
    """The original LTX-Video layout at ``root``: one single-file checkpoint
    (``ltx-video-2b-v0.9*.safetensors``, recognised by its keys whatever its name) beside the T5
    folders ``text_encoder/`` and ``tokenizer/`` of ``PixArt-alpha/PixArt-XL-2-1024-MS`` that
    LTX-Video's inference.py loads (also accepted under that repository's name); None when
    ``root`` holds no such file."""
    from .layouts import ModelLayout

    single_files = [f for f in sorted(root.glob("*.safetensors")) if is_single_file(f)]
    if not single_files:
        return None
    if len(single_files) > 1:
        names = ", ".join(f.name for f in single_files)
        raise CheckpointError(f"{root} holds {len(single_files)} LTX-Video checkpoints ({names}); keep one per model directory")
    checkpoint = single_files[0]
    for base in (root, root / ORIGINAL_TEXT_REPO):
        if (base / "text_encoder").is_dir() and (base / "tokenizer").is_dir():
            text = {"text_encoder": base / "text_encoder", "tokenizer": base / "tokenizer"}
            break
    else:
        missing = [n for n in ("text_encoder", "tokenizer") if not (root / n).is_dir()]
        raise CheckpointError(
            f"{root}: missing component {missing[0]!r} (expected the folders text_encoder/ and tokenizer/ of "
            f"{ORIGINAL_TEXT_REPO} beside {checkpoint.name}, as LTX-Video's inference.py loads them)"
        )
    return ModelLayout("ltx-original", "ltx-video", root, {"transformer": checkpoint, "vae": checkpoint, **text})


def generator_config(layout: Any) -> LTXTransformerConfig:
    """The transformer's config: the diffusers config.json, the single file's metadata, or (with
    neither) its tensor shapes, read from the file's header as the loader would read the weights."""
    from .io import safetensors_shapes

    path = layout.components["transformer"]
    config = stored_config(path)
    if config is not None:
        return config
    shapes = {k[len(SINGLE_FILE_PREFIX) :]: v for k, v in safetensors_shapes(path).items() if k.startswith(SINGLE_FILE_PREFIX)}
    return from_weights(ORIGINAL_KEYS.to_ours({k: torch.empty(v, device="meta") for k, v in shapes.items()}))


def load_generator(layout: Any, dtype: torch.dtype | None = None, device: Any = None, quantize: Any = None) -> LTXTransformer:
    """The layout's transformer (``quantize`` is not offered for this family)."""
    return load_ltx_transformer(layout.components["transformer"], dtype=dtype, device=device)


def text_encoder(layout: Any, dtype: torch.dtype | None = None, device: Any = None) -> Any:
    """T5 as diffusers' LTXPipeline runs it (128 tokens, the padding masked), for both layouts."""
    from ..pipelines.ltx import LTX_TEXT_LEN
    from ..text.t5 import T5TextEncoder

    c = layout.components
    return T5TextEncoder.from_diffusers(c["text_encoder"], c["tokenizer"], dtype=dtype, device=device, max_length=LTX_TEXT_LEN)


def sampler(layout: Any) -> Any:
    """The diffusers scheduler config's sampler, or the single file's RectifiedFlowScheduler."""
    import dataclasses

    from ..sampling import ResolutionShift, SamplerSpec

    if layout.format != "diffusers":
        return original_sampler(single_file_config(layout.components["transformer"]).get("scheduler"))
    spec = SamplerSpec.from_diffusers(read_json(layout.components["scheduler"] / "scheduler_config.json"))
    if spec.resolution_shift is None and spec.name == "euler":
        # LTXPipeline passes its sigmas, linspace(1, 1/N, N), to the scheduler, which shifts them by
        # its static shift (then stretches them to its terminal): not the scheduler's own timesteps
        spec = dataclasses.replace(spec, resolution_shift=ResolutionShift.static(spec.shift))
    return spec


def original_sampler(config: Mapping[str, Any] | None) -> Any:
    """The sampler of an original LTX-Video ``RectifiedFlowScheduler`` config (a single file's
    metadata; None or {}: LTX-Video's defaults). Settings kinema does not implement raise."""
    from ..sampling import ResolutionShift, SamplerSpec

    c = dict(config or {})
    cls = c.get("_class_name", "RectifiedFlowScheduler")
    shifting, sampler_ = c.get("shifting", "SD3"), c.get("sampler", "Uniform")
    if cls != "RectifiedFlowScheduler" or shifting not in ("SD3", None) or sampler_ not in ("Uniform", None) or c.get("shift") is not None:
        raise CheckpointError(
            f"LTX-Video scheduler {cls} with shifting={shifting!r}, sampler={sampler_!r}, shift={c.get('shift')!r} is not "
            "supported; kinema implements RectifiedFlowScheduler with SD3 shifting and uniform timesteps"
        )
    terminal = c.get("target_shift_terminal", SHIFT_TERMINAL if not config else None)
    resolution = ResolutionShift(**RESOLUTION_SHIFT) if shifting == "SD3" else ResolutionShift.fixed(1.0)
    return SamplerSpec("euler", 1.0, int(c.get("num_train_timesteps", 1000)), resolution_shift=resolution, shift_terminal=terminal or None)
