"""Key maps of the LTX-Video transformer (kinema's Spectro-2B architecture).

kinema's names follow :mod:`kinema.models.wan` (``patch_embedding``, ``text_embedding.0``,
``blocks.{i}.self_attn.q``, ``head.head``...), so the two DiT families read alike.
:data:`DIFFUSERS_KEYS` renames to diffusers' ``LTXVideoTransformer3DModel`` and
:data:`ORIGINAL_KEYS` to the original ``Lightricks/LTX-Video`` ``Transformer3DModel`` (the
``model.diffusion_model.*`` part of the single-file releases; the prefix is the loader's to strip).
Both come from one table. The original names differ from diffusers' in four places only
(``patchify_proj`` / ``proj_in``, ``adaln_single`` / ``time_embed``, ``q_norm`` / ``norm_q``,
``k_norm`` / ``norm_k``: diffusers' ``convert_ltx_transformer_checkpoint_to_diffusers``). The
parameter-free RMSNorms and the output LayerNorm have no keys.
"""

from __future__ import annotations

from .keymap import KeyMap

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
