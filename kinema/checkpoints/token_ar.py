"""Token model checkpoints: kinema's own format, as a ``token-ar`` training run exports it.

A token model directory holds ``config.json`` (every field of
:class:`~kinema.models.token_ar.TokenARConfig`, with ``_class_name`` ``TokenAR``; the layer order
explicit) and ``diffusion_pytorch_model*.safetensors`` under kinema's own parameter names.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ..models.token_ar import TokenAR, TokenARConfig
from ..schema import dataclass_to_dict, read_dataclass
from .io import load_own_format, read_json

CLASS_NAME = "TokenAR"  # ``_class_name`` of the config.json
WEIGHTS_STEM = "diffusion_pytorch_model"  # weights file stem of an export (the training loop's ``model/``)


def from_json(raw: Any) -> TokenARConfig:
    """The config from its ``config.json`` form; another ``_class_name``, unknown or missing fields
    and bad values raise :class:`CheckpointError`."""
    return read_dataclass(TokenARConfig, raw, what=f"{CLASS_NAME} config", class_name=CLASS_NAME, check_types=False)


def to_json(config: TokenARConfig) -> dict[str, Any]:
    """The config.json content (``_class_name`` plus every field; the layer order is explicit)."""
    return dataclass_to_dict(config, CLASS_NAME)


def load_token_ar(
    path: str | os.PathLike,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    config: TokenARConfig | None = None,
) -> TokenAR:
    """Load a token model from a directory (config.json and ``diffusion_pytorch_model*.safetensors``)
    or a weights file with that config.json beside it.

    Args:
        dtype: cast floating-point weights to this dtype (None keeps the file's); the modules in
            ``TokenAR._keep_in_fp32`` stay float32.
        device: where the weights go (None: stay memory-mapped on the CPU).
        config: if given, must equal the stored config (:func:`~kinema.checkpoints.io.resolve_config`).

    Returns:
        The model in eval mode.
    """
    return load_own_format(path, from_json, TokenAR, config=config, dtype=dtype, device=device, what="token AR model", stem=WEIGHTS_STEM)


# ------------------------------------------------------------------------------------------------
# The family's parts (kinema layout only: transformer/ + tokenizer/)
# ------------------------------------------------------------------------------------------------
FP8_COMPUTE_DTYPE = torch.bfloat16  # FP8Linear's default: what an FP8 model computes in unless dtype= says otherwise


def generator_config(layout: Any) -> TokenARConfig:
    """The token model's config, from its config.json."""
    return from_json(read_json(layout.components["transformer"] / "config.json"))


def load_generator(layout: Any, dtype: torch.dtype | None = None, device: Any = None, quantize: Any = None) -> TokenAR:
    """The token model; ``quantize`` ("fp8") stores its blocks' linear layers in FP8.

    bf16 (or ``dtype``) first, then each block's linears to FP8 one block at a time (the peak is
    the unquantised model plus one block). The head stays: its logits are sampled directly, and it
    is a small share of the weights (0.8% of AR-8B). The token embedding is a lookup table, not a
    linear, and its dtype is the model's compute dtype.
    """
    path = layout.components["transformer"]
    if quantize is None:
        return load_token_ar(path, dtype=dtype, device=device)
    from ..models.fp8 import quantize_linears_fp8

    compute = dtype or FP8_COMPUTE_DTYPE
    model = load_token_ar(path, dtype=compute, device=device)
    for block in model.blocks:
        quantize_linears_fp8(block, compute_dtype=compute)
    return model
