"""Key map between the vision tower of Wan's original CLIP checkpoint
(``models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth``, ``wan/modules/clip.py``'s
``XLMRobertaCLIP.visual``) and transformers' ``CLIPVisionModel``, whose names kinema uses.

The original fuses the attention's query, key and value in one ``to_qkv`` layer (rows: q, k, v);
transformers keeps three. The map renames ``to_qkv`` to a fused key of kinema's
(``self_attn.qkv_proj``), which :data:`FUSED` says how to split, so the table stays data.
Keys that Wan's image features never use are dropped on load (:data:`WAN_CLIP_UNUSED`): the text
tower, the logit scale, the vision head (a projection after the last layer).
"""

from __future__ import annotations

from typing import Mapping

import torch

from ..errors import CheckpointError
from .keymap import KeyMap

# (kinema/transformers name, original Wan name)
WAN_CLIP_KEYS = KeyMap(
    "wan-original-clip",
    [
        ("embeddings.patch_embedding.weight", "visual.patch_embedding.weight"),
        ("embeddings.class_embedding", "visual.cls_embedding"),  # (1, 1, dim) -> (dim,)
        ("embeddings.position_embedding.weight", "visual.pos_embedding"),  # (1, n, dim) -> (n, dim)
        ("pre_layrnorm.{leaf}", "visual.pre_norm.{leaf}"),
        ("encoder.layers.{i}.layer_norm1.{leaf}", "visual.transformer.{i}.norm1.{leaf}"),
        ("encoder.layers.{i}.self_attn.qkv_proj.{leaf}", "visual.transformer.{i}.attn.to_qkv.{leaf}"),
        ("encoder.layers.{i}.self_attn.out_proj.{leaf}", "visual.transformer.{i}.attn.proj.{leaf}"),
        ("encoder.layers.{i}.layer_norm2.{leaf}", "visual.transformer.{i}.norm2.{leaf}"),
        ("encoder.layers.{i}.mlp.fc1.{leaf}", "visual.transformer.{i}.mlp.0.{leaf}"),
        ("encoder.layers.{i}.mlp.fc2.{leaf}", "visual.transformer.{i}.mlp.2.{leaf}"),
        ("post_layernorm.{leaf}", "visual.post_norm.{leaf}"),
    ],
)

#: original keys that carry nothing Wan's image features use (matched, then dropped).
WAN_CLIP_UNUSED = KeyMap(
    "unused wan-original-clip keys",
    [("textual.{path}", "textual.{path}"), ("log_scale", "log_scale"), ("visual.head", "visual.head"),
     ("visual.head.{path}", "visual.head.{path}")],  # fmt: skip
)

#: fused key suffix -> the keys it splits into, in row order.
FUSED = {"self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")}

#: kinema keys whose original tensors carry leading singleton dimensions: key -> its dims in transformers.
SQUEEZED = {"embeddings.class_embedding": 1, "embeddings.position_embedding.weight": 2}


def from_wan_original(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An original Wan CLIP state dict -> transformers ``CLIPVisionModel`` names and shapes (the
    vision tower only; keys neither map knows raise a one-line CheckpointError)."""
    ours = WAN_CLIP_KEYS.to_ours({k: v for k, v in state.items() if WAN_CLIP_UNUSED.our_key(k) is None})
    out: dict[str, torch.Tensor] = {}
    for key, value in ours.items():
        fused = next((f for f in FUSED if key.rsplit(".", 1)[0].endswith(f)), None)
        if fused is not None:
            parts = FUSED[fused]
            if value.shape[0] % len(parts):
                raise CheckpointError(f"{key}: {tuple(value.shape)} does not split into {len(parts)} equal parts")
            for part, chunk in zip(parts, value.chunk(len(parts), dim=0)):
                out[key.replace(fused, part)] = chunk
        elif key in SQUEEZED:
            out[key] = value.reshape(-1) if SQUEEZED[key] == 1 else value.reshape(-1, value.shape[-1])
        else:
            out[key] = value
    return out


def to_wan_original(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers ``CLIPVisionModel`` weights -> the original Wan CLIP keys and shapes (the
    inverse of :func:`from_wan_original` on the vision tower; for tests and converters)."""
    joined: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        fused = next((f for f, parts in FUSED.items() if key.rsplit(".", 1)[0].endswith(parts[0])), None)
        if fused is not None:
            first = FUSED[fused][0]
            joined[key.replace(first, fused)] = torch.cat([state[key.replace(first, p)] for p in FUSED[fused]])
        elif any(key.rsplit(".", 1)[0].endswith(p) for parts in FUSED.values() for p in parts[1:]):
            continue  # joined with its first part
        elif key in SQUEEZED:
            joined[key] = value.reshape(1, 1, -1) if SQUEEZED[key] == 1 else value[None]
        else:
            joined[key] = value
    return WAN_CLIP_KEYS.to_theirs(joined)
