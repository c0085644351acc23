"""T5 / UMT5 text encoders (Wan 2.1 uses UMT5-XXL) through transformers, from local files only.

Two layouts are read:
- diffusers: ``text_encoder/`` (config.json + safetensors) and ``tokenizer/``;
- original Wan 2.1: ``models_t5_umt5-xxl-enc-bf16.pth`` (read with ``weights_only=True``, keys
  renamed by :data:`kinema.checkpoints.t5_keys.WAN_T5_KEYS`, sizes inferred from the tensors) and
  the tokenizer directory ``google/umt5-xxl/``.
"""

from __future__ import annotations

import html
import os
import re
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..checkpoints.io import load_into, load_weights
from ..checkpoints.t5_keys import WAN_T5_KEYS
from ..errors import CheckpointError

# Wan 2.1 pads or truncates every prompt to 512 tokens (wan/configs: text_len).
WAN_TEXT_LEN = 512


def clean_prompt(text: str) -> str:
    """Unescape HTML entities and collapse whitespace, as Wan's and diffusers' pipelines do."""
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


def _encoder_classes() -> dict[str, type]:
    from transformers import T5EncoderModel, UMT5EncoderModel

    return {"umt5": UMT5EncoderModel, "t5": T5EncoderModel}


class T5TextEncoder:
    """A T5-family encoder and its tokenizer, returning zero-padded token states.

    Args:
        model: a transformers ``UMT5EncoderModel`` or ``T5EncoderModel``.
        tokenizer: its tokenizer.
        max_length: positions per prompt in the output (longer prompts are truncated).
    """

    def __init__(self, model: nn.Module, tokenizer, max_length: int = WAN_TEXT_LEN):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.dim = int(model.config.d_model)

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

    # -- encoding ------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self, prompts: Sequence[str], *, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """Encode prompts to (batch, max_length, dim) states, zero past each prompt's last token.

        The encoder runs only over the longest prompt of the batch (padding tokens are masked, so
        the states of real tokens do not depend on how much padding follows) and the result is
        zero-padded to ``max_length``, as Wan expects.
        """
        tokens = self.tokenizer(
            [clean_prompt(p) for p in prompts],
            padding="longest",
            max_length=self.max_length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        model_device = next(self.model.parameters()).device
        ids = tokens.input_ids.to(model_device)  # (B, L)
        mask = tokens.attention_mask.to(model_device)  # (B, L)
        states = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, L, dim)
        states = states * mask.unsqueeze(-1).to(states.dtype)  # zero the padding positions
        out = states.new_zeros(states.shape[0], self.max_length, states.shape[2])  # (B, max_length, dim)
        out[:, : states.shape[1]] = states
        return out.to(device=device or out.device, dtype=dtype or out.dtype)


def load_tokenizer(tokenizer_dir: str | os.PathLike):
    """A transformers tokenizer from a local directory, with a one-line error when it fails."""
    from transformers import AutoTokenizer

    return _hf_call(AutoTokenizer.from_pretrained, Path(tokenizer_dir), what="tokenizer")


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


def _hf_call(fn, path: Path, *, what: str, **kwargs):
    if not path.exists():
        raise CheckpointError(f"{what} not found: {path}")
    from transformers.utils import logging as hf_logging

    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # loading a local file needs no bar of its own
    try:
        return fn(str(path), local_files_only=True, **kwargs)
    except (OSError, ValueError, KeyError, EnvironmentError) as e:
        raise CheckpointError(f"could not load the {what} from {path}: {' '.join(str(e).split())[:300]}") from None
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()
