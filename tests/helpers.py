"""Tiny random components for tests: a word-level tokenizer and small UMT5 encoders.

Nothing here downloads anything: every component is built in-process and saved locally.
"""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = (
    "a red green blue yellow purple cyan orange white circle square triangle moving left right up down "
    "the cat dog walks on grass in snow city night day fast slow blurry low quality"
).split()


def make_tokenizer(directory: Path | None = None):
    """A T5-like word-level fast tokenizer (pad=0, eos=1, unk=2), saved to ``directory`` if given."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    if directory is not None:
        fast.save_pretrained(str(directory))
    return fast


def make_umt5(seed: int = 0, d_model: int = 32, vocab: int = 64):
    """A tiny random transformers UMT5EncoderModel in float32."""
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    config = UMT5Config(
        vocab_size=vocab,
        d_model=d_model,
        d_kv=8,
        d_ff=48,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=32,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
    )
    model = UMT5EncoderModel(config).eval()
    # random init leaves norms at one; perturb them so that a wrong key map cannot pass
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


TINY_WAN_TRANSFORMER = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=12,
    in_channels=16,
    out_channels=16,
    text_dim=32,
    freq_dim=256,
    ffn_dim=32,
    num_layers=2,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    rope_max_seq_len=32,
)
# Wan 2.1's VAE structure (dim_mult 1,2,4,4, two res blocks, time halved twice) at base width 4,
# so that the original-layout loader, which assumes that structure, reads it too.
TINY_WAN_VAE = dict(base_dim=4, z_dim=16)


def make_diffusers_wan_pipeline(scheduler: str = "unipc", shift: float = 3.0, seed: int = 0):
    """A tiny random diffusers ``WanPipeline`` (fp32), built the way diffusers' own tests build it."""
    from diffusers import (
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        UniPCMultistepScheduler,
        WanPipeline,
        WanTransformer3DModel,
    )

    torch.manual_seed(seed)
    vae = AutoencoderKLWan(**TINY_WAN_VAE)
    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(**TINY_WAN_TRANSFORMER)
    text_encoder = make_umt5(seed, d_model=32)
    if scheduler == "unipc":
        sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift)
    else:
        sched = FlowMatchEulerDiscreteScheduler(shift=shift)
    return WanPipeline(tokenizer=None, text_encoder=text_encoder, transformer=transformer, vae=vae, scheduler=sched)


def save_diffusers_wan_pipeline(directory: Path, scheduler: str = "unipc", shift: float = 3.0, seed: int = 0):
    """Write a tiny diffusers-format Wan model directory and return the diffusers pipeline."""
    pipe = make_diffusers_wan_pipeline(scheduler, shift, seed)
    directory.mkdir(parents=True, exist_ok=True)
    pipe.register_modules(tokenizer=make_tokenizer())
    pipe.save_pretrained(str(directory), safe_serialization=True)
    return pipe


class Evil:
    """Unpickling this runs code: a checkpoint holding it must be refused, never executed."""

    def __reduce__(self):
        return (print, ("this must never run",))


def save_original_wan_layout(diffusers_dir: Path, root: Path) -> Path:
    """Rewrite a diffusers-format Wan directory in the original Wan 2.1 release layout.

    Uses kinema's key maps in the other direction: transformer safetensors with original keys and
    the original config.json, ``Wan2.1_VAE.pth``, ``models_t5_umt5-xxl-enc-bf16.pth`` with Wan's
    own T5 names, and the tokenizer under ``google/umt5-xxl/``.
    """
    import dataclasses
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    from kinema.checkpoints.t5_keys import WAN_T5_KEYS
    from kinema.checkpoints.wan_transformer_keys import DIFFUSERS_KEYS, ORIGINAL_KEYS
    from kinema.checkpoints.wan_vae_keys import diffusers_keys, original_keys
    from kinema.models.vae.wan_vae import WanVAEConfig
    from kinema.models.wan import WanTransformerConfig

    root.mkdir(parents=True, exist_ok=True)
    tcfg = WanTransformerConfig.from_diffusers(json.loads((diffusers_dir / "transformer" / "config.json").read_text()))
    # rope_max_seq_len only bounds the positions; the original code fixes it at 1024
    (root / "config.json").write_text(json.dumps(dataclasses.replace(tcfg, rope_max_seq_len=1024).to_original()))
    sd = load_file(diffusers_dir / "transformer" / "diffusion_pytorch_model.safetensors")
    save_file(ORIGINAL_KEYS.to_theirs(DIFFUSERS_KEYS.to_ours(sd)), root / "diffusion_pytorch_model.safetensors")

    vcfg = WanVAEConfig.from_diffusers(json.loads((diffusers_dir / "vae" / "config.json").read_text()))
    vsd = load_file(diffusers_dir / "vae" / "diffusion_pytorch_model.safetensors")
    torch.save(original_keys(vcfg).to_theirs(diffusers_keys(vcfg).to_ours(vsd)), root / "Wan2.1_VAE.pth")

    t5 = {k: v for k, v in load_file(diffusers_dir / "text_encoder" / "model.safetensors").items() if k != "encoder.embed_tokens.weight"}
    torch.save(WAN_T5_KEYS.to_theirs(t5), root / "models_t5_umt5-xxl-enc-bf16.pth")
    shutil.copytree(diffusers_dir / "tokenizer", root / "google" / "umt5-xxl")
    return root
