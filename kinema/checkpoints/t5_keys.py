"""Key map between the original Wan 2.1 T5 encoder (``models_t5_umt5-xxl-enc-bf16.pth``) and
transformers' ``UMT5EncoderModel``, whose names kinema uses for its text encoder."""

from __future__ import annotations

from .keymap import KeyMap

# (kinema/transformers name, original Wan name)
WAN_T5_KEYS = KeyMap(
    "wan-original-t5",
    [
        ("shared.weight", "token_embedding.weight"),
        ("encoder.block.{i}.layer.0.layer_norm.weight", "blocks.{i}.norm1.weight"),
        ("encoder.block.{i}.layer.0.SelfAttention.q.weight", "blocks.{i}.attn.q.weight"),
        ("encoder.block.{i}.layer.0.SelfAttention.k.weight", "blocks.{i}.attn.k.weight"),
        ("encoder.block.{i}.layer.0.SelfAttention.v.weight", "blocks.{i}.attn.v.weight"),
        ("encoder.block.{i}.layer.0.SelfAttention.o.weight", "blocks.{i}.attn.o.weight"),
        (
            "encoder.block.{i}.layer.0.SelfAttention.relative_attention_bias.weight",
            "blocks.{i}.pos_embedding.embedding.weight",
        ),
        ("encoder.block.{i}.layer.1.layer_norm.weight", "blocks.{i}.norm2.weight"),
        ("encoder.block.{i}.layer.1.DenseReluDense.wi_0.weight", "blocks.{i}.ffn.gate.0.weight"),
        ("encoder.block.{i}.layer.1.DenseReluDense.wi_1.weight", "blocks.{i}.ffn.fc1.weight"),
        ("encoder.block.{i}.layer.1.DenseReluDense.wo.weight", "blocks.{i}.ffn.fc2.weight"),
        ("encoder.final_layer_norm.weight", "norm.weight"),
    ],
)
