"""Key maps of the Wan 2.1 transformer (text-to-video and image-to-video).

kinema's parameter names are the original Wan 2.1 names (``Wan-Video/Wan2.1``,
``wan/modules/model.py``), so :data:`ORIGINAL_KEYS` is the identity on exactly the keys the
original model has (anything else raises), and :data:`DIFFUSERS_KEYS` renames to diffusers'
``WanTransformer3DModel``. Both come from one table. Note the swap: the original ``norm3`` (the
affine cross-attention norm) is diffusers' ``norm2``; the parameter-free norms have no keys.
"""

from __future__ import annotations

from .keymap import KeyMap

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
