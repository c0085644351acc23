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
    pipe.set_progress_bar_config(disable=True)
    return pipe


# A CLIP vision tower as Wan's original layout can hold it: width 1,280 (the original WanModel's
# image MLP hard-codes it) in heads of 80, but two layers, a narrow feed-forward and a 28-pixel
# picture (2 x 2 patches of 14, plus the class token: 5 tokens).
TINY_WAN_CLIP = dict(hidden_size=1280, intermediate_size=32, num_hidden_layers=2, num_attention_heads=16, image_size=28,
                     patch_size=14, hidden_act="gelu", layer_norm_eps=1e-5)  # fmt: skip


def make_clip_vision(seed: int = 0):
    """A tiny random transformers CLIPVisionModel (Wan's width) and the CLIPImageProcessor for it."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    model = CLIPVisionModel(CLIPVisionConfig(**TINY_WAN_CLIP)).eval()
    with torch.no_grad():  # norms start at one and zero: perturb them so that a wrong key map cannot pass
        for name, p in model.named_parameters():
            if "layer_norm" in name or "layrnorm" in name or "layernorm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    size = TINY_WAN_CLIP["image_size"]
    return model, CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def make_diffusers_wan_i2v_pipeline(shift: float = 3.0, seed: int = 0):
    """A tiny random diffusers ``WanImageToVideoPipeline`` (fp32): the T2V parts, a transformer with
    the image branch (in_channels 36, image_dim 1280) and a tiny CLIP vision tower."""
    from diffusers import (
        AutoencoderKLWan,
        UniPCMultistepScheduler,
        WanImageToVideoPipeline,
        WanTransformer3DModel,
    )
    from diffusers.pipelines.wan import pipeline_wan_i2v

    if not hasattr(pipeline_wan_i2v, "ftfy"):  # diffusers 0.42's I2V calls ftfy.fix_text even when ftfy is absent
        import types  # (its T2V pipeline skips it then); on the ASCII prompts of the tests fix_text changes nothing

        pipeline_wan_i2v.ftfy = types.SimpleNamespace(fix_text=lambda text: text)
    torch.manual_seed(seed)
    vae = AutoencoderKLWan(**TINY_WAN_VAE)
    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(**{**TINY_WAN_TRANSFORMER, "in_channels": 36, "image_dim": 1280, "added_kv_proj_dim": 24})
    with torch.no_grad():  # its image MLP's norms too
        for name, p in transformer.named_parameters():
            if "image_embedder.norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    text_encoder = make_umt5(seed, d_model=32)
    image_encoder, image_processor = make_clip_vision(seed)
    sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift)
    return WanImageToVideoPipeline(
        tokenizer=None, text_encoder=text_encoder, transformer=transformer, vae=vae, scheduler=sched,
        image_encoder=image_encoder, image_processor=image_processor,
    )  # fmt: skip


def save_diffusers_wan_i2v_pipeline(directory: Path, shift: float = 3.0, seed: int = 0):
    """Write a tiny diffusers-format Wan image-to-video directory and return the diffusers pipeline."""
    pipe = make_diffusers_wan_i2v_pipeline(shift, seed)
    directory.mkdir(parents=True, exist_ok=True)
    pipe.register_modules(tokenizer=make_tokenizer())
    pipe.save_pretrained(str(directory), safe_serialization=True)
    pipe.set_progress_bar_config(disable=True)
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

    from kinema.checkpoints import wan as wan_ckpt
    from kinema.checkpoints import wan_vae as wan_vae_ckpt
    from kinema.checkpoints.t5_keys import WAN_T5_KEYS
    from kinema.checkpoints.wan import DIFFUSERS_KEYS, ORIGINAL_KEYS
    from kinema.checkpoints.wan_vae import diffusers_keys, original_keys

    root.mkdir(parents=True, exist_ok=True)
    tcfg = wan_ckpt.from_diffusers(json.loads((diffusers_dir / "transformer" / "config.json").read_text()))
    # rope_max_seq_len only bounds the positions; the original code fixes it at 1024
    (root / "config.json").write_text(json.dumps(wan_ckpt.to_original(dataclasses.replace(tcfg, rope_max_seq_len=1024))))
    sd = load_file(diffusers_dir / "transformer" / "diffusion_pytorch_model.safetensors")
    save_file(ORIGINAL_KEYS.to_theirs(DIFFUSERS_KEYS.to_ours(sd)), root / "diffusion_pytorch_model.safetensors")

    vcfg = wan_vae_ckpt.from_diffusers(json.loads((diffusers_dir / "vae" / "config.json").read_text()))
    vsd = load_file(diffusers_dir / "vae" / "diffusion_pytorch_model.safetensors")
    torch.save(original_keys(vcfg).to_theirs(diffusers_keys(vcfg).to_ours(vsd)), root / "Wan2.1_VAE.pth")

    t5 = {k: v for k, v in load_file(diffusers_dir / "text_encoder" / "model.safetensors").items() if k != "encoder.embed_tokens.weight"}
    torch.save(WAN_T5_KEYS.to_theirs(t5), root / "models_t5_umt5-xxl-enc-bf16.pth")
    shutil.copytree(diffusers_dir / "tokenizer", root / "google" / "umt5-xxl")
    return root


def save_original_wan_i2v_layout(diffusers_dir: Path, root: Path) -> Path:
    """Rewrite a diffusers-format Wan image-to-video directory in the original release layout: as
    :func:`save_original_wan_layout`, plus ``models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth``
    holding the vision tower with Wan's keys (and, as the real file, a text tower, a logit scale
    and a vision head that kinema must skip)."""
    from safetensors.torch import load_file

    from kinema.checkpoints.clip_keys import to_wan_original

    save_original_wan_layout(diffusers_dir, root)
    vision = {k.removeprefix("vision_model."): v for k, v in load_file(diffusers_dir / "image_encoder" / "model.safetensors").items()}
    state = to_wan_original(vision)
    dim = state["visual.pre_norm.weight"].shape[0]
    state.update({"visual.head": torch.randn(dim, 8), "log_scale": torch.tensor(2.0),
                  "textual.token_embedding.weight": torch.randn(10, 8), "textual.blocks.0.attn.q.weight": torch.randn(8, 8)})  # fmt: skip
    torch.save(state, root / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth")
    return root


# ------------------------------------------------------------------------------------------------
# LTX-Video
# ------------------------------------------------------------------------------------------------
def make_t5(seed: int = 0, d_model: int = 32, vocab: int = 64):
    """A tiny random transformers T5EncoderModel in float32 (LTX-Video's text encoder family)."""
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=vocab, d_model=d_model, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
        relative_attention_num_buckets=32, feed_forward_proj="gated-gelu", dropout_rate=0.0,
    )  # fmt: skip
    model = T5EncoderModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


TINY_LTX_TRANSFORMER = dict(
    in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16,
    num_layers=2, caption_channels=32,
)  # fmt: skip
# LTX-Video 0.9.1's VAE layout (timestep-conditioned decoder with noise injection) at widths 4..32:
# 32x32x8 compression, 4 latent channels.
TINY_LTX_VAE = dict(
    latent_channels=4, block_out_channels=(4, 8, 16, 16), layers_per_block=(1, 1, 1, 1, 1),
    decoder_block_out_channels=(8, 16, 32), decoder_layers_per_block=(1, 1, 1, 2),
    decoder_spatio_temporal_scaling=(True, True, True), decoder_inject_noise=(True, True, True, False),
    upsample_residual=(True, True, True), upsample_factor=(2, 2, 2), timestep_conditioning=True,
)  # fmt: skip
# The same VAE as an original CausalVideoAutoencoder config (a single file's metadata)
TINY_LTX_VAE_ORIGINAL = {
    "_class_name": "CausalVideoAutoencoder", "dims": 3, "latent_channels": 4, "patch_size": 4, "norm_layer": "pixel_norm",
    "latent_log_var": "uniform", "use_quant_conv": False, "causal_decoder": False, "encoder_base_channels": 4,
    "decoder_base_channels": 4, "timestep_conditioning": True,
    "encoder_blocks": [["res_x", 1], ["compress_all", 1], ["res_x_y", 1], ["res_x", 1], ["compress_all", 1],
                       ["res_x_y", 1], ["res_x", 1], ["compress_all", 1], ["res_x", 1], ["res_x", 1]],
    "decoder_blocks": [
        ["res_x", {"num_layers": 1, "inject_noise": True}], ["compress_all", {"residual": True, "multiplier": 2}],
        ["res_x", {"num_layers": 1, "inject_noise": True}], ["compress_all", {"residual": True, "multiplier": 2}],
        ["res_x", {"num_layers": 1, "inject_noise": True}], ["compress_all", {"residual": True, "multiplier": 2}],
        ["res_x", {"num_layers": 2, "inject_noise": False}],
    ],
}  # fmt: skip
# Lightricks/LTX-Video scheduler/scheduler_config.json (diffusers 0.32), as published
LTX_SCHEDULER_CONFIG = dict(
    base_image_seq_len=1024, base_shift=0.95, invert_sigmas=False, max_image_seq_len=4096, max_shift=2.05,
    num_train_timesteps=1000, shift=1.0, shift_terminal=0.1, use_beta_sigmas=False, use_dynamic_shifting=True,
    use_exponential_sigmas=False, use_karras_sigmas=False,
)  # fmt: skip


def make_diffusers_ltx_pipeline(seed: int = 0, pipeline: str = "LTXPipeline", vae: dict | None = None, scheduler: dict | None = None):
    """A tiny random diffusers ``LTXPipeline`` (or ``LTXImageToVideoPipeline``) in float32."""
    import diffusers
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXVideoTransformer3DModel,
    )

    torch.manual_seed(seed)
    transformer = LTXVideoTransformer3DModel(**TINY_LTX_TRANSFORMER)
    torch.manual_seed(seed)
    autoencoder = AutoencoderKLLTXVideo(**(vae or TINY_LTX_VAE))
    with torch.no_grad():  # noise scales and latent statistics away from their 0 / 1 init
        for name, p in autoencoder.named_parameters():
            if "per_channel_scale" in name:
                p.normal_(0.0, 0.5)
        autoencoder.latents_mean.normal_()
        autoencoder.latents_std.uniform_(0.5, 2.0)
    sched = FlowMatchEulerDiscreteScheduler(**(LTX_SCHEDULER_CONFIG if scheduler is None else scheduler))
    cls = getattr(diffusers, pipeline)
    return cls(
        scheduler=sched, vae=autoencoder.eval(), text_encoder=make_t5(seed, d_model=32), tokenizer=make_tokenizer(),
        transformer=transformer.eval(),
    )  # fmt: skip


def save_diffusers_ltx_pipeline(directory: Path, **kwargs):
    """Write a tiny diffusers-format LTX-Video model directory and return the diffusers pipeline."""
    pipe = make_diffusers_ltx_pipeline(**kwargs)
    directory.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(str(directory), safe_serialization=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_original_ltx_layout(diffusers_dir: Path, root: Path, name: str = "ltx-video-2b-v0.9.1.safetensors", text_under_repo: bool = False) -> Path:
    """Rewrite a tiny diffusers-format LTX directory in the original LTX-Video layout: one single
    file (transformer keys under ``model.diffusion_model.``, VAE keys under ``vae.``, the original
    configs in its metadata) beside the T5 folders ``text_encoder/`` and ``tokenizer/`` (under
    ``PixArt-alpha/PixArt-XL-2-1024-MS/`` with ``text_under_repo``)."""
    import json
    import shutil

    from safetensors.torch import load_file

    from kinema.checkpoints import ltx as ltx_ckpt
    from kinema.checkpoints.io import save_safetensors
    from kinema.checkpoints.ltx import DIFFUSERS_KEYS, ORIGINAL_KEYS, SINGLE_FILE_PREFIX
    from kinema.checkpoints.ltx_vae import ORIGINAL_KEYS as VAE_ORIGINAL_KEYS
    from kinema.checkpoints.ltx_vae import ORIGINAL_PREFIX, load_ltx_vae

    root.mkdir(parents=True, exist_ok=True)
    tcfg = ltx_ckpt.from_diffusers(json.loads((diffusers_dir / "transformer" / "config.json").read_text()))
    sd = load_file(diffusers_dir / "transformer" / "diffusion_pytorch_model.safetensors")
    state = {SINGLE_FILE_PREFIX + k: v for k, v in ORIGINAL_KEYS.to_theirs(DIFFUSERS_KEYS.to_ours(sd)).items()}
    vae = load_ltx_vae(diffusers_dir / "vae")
    state.update({ORIGINAL_PREFIX + k: v for k, v in VAE_ORIGINAL_KEYS.to_theirs(vae.state_dict()).items()})
    scheduler = {"_class_name": "RectifiedFlowScheduler", "num_train_timesteps": 1000, "shifting": "SD3",
                 "base_resolution": None, "target_shift_terminal": 0.1}  # fmt: skip
    config = {"transformer": ltx_ckpt.to_original(tcfg), "vae": TINY_LTX_VAE_ORIGINAL, "scheduler": scheduler}
    save_safetensors(state, root / name, metadata={"config": json.dumps(config)})
    text_root = root / "PixArt-alpha" / "PixArt-XL-2-1024-MS" if text_under_repo else root
    for folder in ("text_encoder", "tokenizer"):
        shutil.copytree(diffusers_dir / folder, text_root / folder)
    return root


# ------------------------------------------------------------------------------------------------
# A tiny random instruction-tuned causal LM (prompt extension)
# ------------------------------------------------------------------------------------------------
SPECIALS = ["<|endoftext|>", "<|im_end|>", "<|im_start|>"]
LM_CORPUS = [
    "a red ball rolls slowly to the left across green grass",
    "the camera pans right over a blue cube under a bright sky",
    "a small cat walks toward a large yellow circle at night",
    "soft warm light, long shadows on the wall, the bird flies up",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

def make_lm_tokenizer(chat: bool):
    """A byte-level BPE (Qwen's kind) trained offline on a few sentences, Qwen's special tokens, with
    or without a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(LM_CORPUS * 5, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<|endoftext|>", eos_token="<|im_end|>", additional_special_tokens=["<|im_start|>"]
    )
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def save_lm(directory, *, chat: bool = True, seed: int = 0):
    """A 2-layer random Qwen2 causal LM (hidden 32) and its tokenizer, saved as safetensors."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = make_lm_tokenizer(chat)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).eval()
    model.save_pretrained(str(directory), safe_serialization=True)
    tokenizer.save_pretrained(str(directory))
    return directory
