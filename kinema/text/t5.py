"""T5 / UMT5 text encoders (Wan 2.1 uses UMT5-XXL) through transformers, from local files only.

Two layouts are read:
- diffusers: ``text_encoder/`` (config.json + safetensors) and ``tokenizer/``;
- original Wan 2.1: ``models_t5_umt5-xxl-enc-bf16.pth`` (read with ``weights_only=True``, keys
  renamed by :data:`kinema.checkpoints.t5_keys.WAN_T5_KEYS`, sizes inferred from the tensors) and
  the tokenizer directory ``google/umt5-xxl/``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..checkpoints.io import load_into, load_weights
from ..checkpoints.t5_keys import WAN_T5_KEYS
from ..errors import CheckpointError
from .encoder import TokenStateEncoder, _hf_call, load_tokenizer

# Wan 2.1 pads or truncates every prompt to 512 tokens (wan/configs: text_len).
WAN_TEXT_LEN = 512


def _encoder_classes() -> dict[str, type]:
    from transformers import T5EncoderModel, UMT5EncoderModel

    return {"umt5": UMT5EncoderModel, "t5": T5EncoderModel}


class T5TextEncoder(TokenStateEncoder):
    """A T5-family encoder (``UMT5EncoderModel`` or ``T5EncoderModel``) and its tokenizer."""

    # -- loading -------------------------------------------------------------------------------
    @classmethod
    def from_diffusers(
        cls,
        text_encoder_dir: str | os.PathLike,
        tokenizer_dir: str | os.PathLike,
        *,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        max_length: int = WAN_TEXT_LEN,
    ) -> "T5TextEncoder":
        """Load ``text_encoder/`` and ``tokenizer/`` of a diffusers-format model directory."""
        from transformers import AutoConfig

        text_encoder_dir = Path(text_encoder_dir)
        config = _hf_call(AutoConfig.from_pretrained, text_encoder_dir, what="text encoder config")
        classes = _encoder_classes()
        if config.model_type not in classes:
            raise CheckpointError(
                f"{text_encoder_dir}: text encoder type {config.model_type!r} is not supported; expected one of {sorted(classes)}"
            )
        if not any(text_encoder_dir.glob("*.safetensors")):
            raise CheckpointError(f"{text_encoder_dir}: no safetensors weights (kinema does not unpickle text encoder weights)")
        model = _hf_call(
            classes[config.model_type].from_pretrained,
            text_encoder_dir,
            what="text encoder",
            dtype=dtype or torch.float32,
            use_safetensors=True,
        )
        tokenizer = load_tokenizer(tokenizer_dir)
        return cls(model.to(device or "cpu"), tokenizer, max_length)

    @classmethod
    def from_wan_original(
        cls,
        weights: str | os.PathLike,
        tokenizer_dir: str | os.PathLike,
        *,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        max_length: int = WAN_TEXT_LEN,
    ) -> "T5TextEncoder":
        """Load Wan's own T5 checkpoint (``.pth`` weights only, or safetensors) and its tokenizer."""
        from transformers import UMT5Config, UMT5EncoderModel

        original = load_weights(weights)
        state = WAN_T5_KEYS.to_ours(original)
        config = UMT5Config(**_infer_umt5_config(state))
        with torch.device("meta"):
            model = UMT5EncoderModel(config)
        state["encoder.embed_tokens.weight"] = state["shared.weight"]
        load_into(model, state, dtype=dtype or torch.float32, device=device or "cpu", what="Wan T5 text encoder")
        model.tie_weights()
        return cls(model, load_tokenizer(tokenizer_dir), max_length)

def _infer_umt5_config(state: dict[str, torch.Tensor]) -> dict:
    """UMT5 sizes read off the tensors of an original Wan T5 checkpoint."""
    vocab, d_model = state["shared.weight"].shape
    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.block."))
    inner = state["encoder.block.0.layer.0.SelfAttention.q.weight"].shape[0]
    buckets, heads = state["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].shape
    d_ff = state["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"].shape[0]
    return dict(
        vocab_size=vocab,
        d_model=d_model,
        d_kv=inner // heads,
        d_ff=d_ff,
        num_layers=layers,
        num_heads=heads,
        relative_attention_num_buckets=buckets,
        relative_attention_max_distance=128,  # wan/modules/t5.py: T5RelativeEmbedding max_dist
        feed_forward_proj="gated-gelu",  # Wan's T5FeedForward: fc1(x) * gelu_tanh(gate(x))
        layer_norm_epsilon=1e-6,
        dropout_rate=0.0,
        is_encoder_decoder=False,
        use_cache=False,
    )
