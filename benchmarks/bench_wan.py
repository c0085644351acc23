"""kinema vs diffusers on identical Wan 2.1 weights and inputs: one transformer step, one VAE decode,
one image-to-video transformer step at the 14B width and the CLIP ViT-H/14 image encoding.

Every measurement runs in a fresh child process (so peak memory is that run's own), on the same
random weights (seeded) converted through kinema's real key maps, with the same inputs. Prints
median wall time over ``--repeats`` runs after one warm-up, the peak resident memory of the
process during the timed call above what the weights already held, and the kinema/diffusers ratio
(< 1 means kinema is faster or smaller). The harness is shared with ``bench_ltx.py``
(``benchmarks/harness.py``).

    python benchmarks/bench_wan.py                      # 1.3B width, 2 layers; VAE at full size
    python benchmarks/bench_wan.py --layers 30          # the whole 1.3B transformer (slow in fp32)
    python benchmarks/bench_wan.py --dtypes float32 --json out.json
    python benchmarks/bench_wan.py --what "i2v step,CLIP image encoding" --dtypes float32   # image-to-video

Needs diffusers (the test extra): ``pip install -e ".[test]"``.
"""

from __future__ import annotations

import argparse

import torch

from harness import Bench, run


# ------------------------------------------------------------------------------------------------
# The two sides, built from one seeded diffusers model
# ------------------------------------------------------------------------------------------------
def _transformer_pair(args, impl: str, dtype: torch.dtype):
    from diffusers import WanTransformer3DModel

    from kinema.checkpoints.io import build_on_meta, load_into
    from kinema.checkpoints.wan import DIFFUSERS_KEYS, from_diffusers
    from kinema.models.wan import WanTransformer

    torch.manual_seed(0)
    config = dict(
        patch_size=(1, 2, 2), num_attention_heads=args.heads, attention_head_dim=128, in_channels=16, out_channels=16,
        text_dim=4096, freq_dim=256, ffn_dim=args.ffn_dim, num_layers=args.layers, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
    )  # fmt: skip
    ref = WanTransformer3DModel(**config).eval()
    if impl == "diffusers":
        model = ref.to(dtype)
    else:
        kconfig = from_diffusers(ref.config)
        model = load_into(build_on_meta(lambda: WanTransformer(kconfig)), DIFFUSERS_KEYS.to_ours(ref.state_dict()), dtype=dtype)
        del ref
    g = torch.Generator().manual_seed(1)
    f, h, w = (args.frames - 1) // 4 + 1, args.height // 8, args.width // 8
    x = torch.randn(1, 16, f, h, w, generator=g).to(dtype)
    t = torch.tensor([700.0])
    ctx = torch.randn(1, 512, 4096, generator=g).to(dtype)
    if args.what == "guided step":  # one sampling step of the pipelines: cond + uncond, CFG
        neg = torch.randn(1, 512, 4096, generator=g).to(dtype)
        if impl == "diffusers":  # WanPipeline: two forwards with the raw text states
            pos_c, neg_c = ctx, neg
            forward = lambda c: model(hidden_states=x, timestep=t, encoder_hidden_states=c, return_dict=False)[0]  # noqa: E731
        else:  # kinema's pipeline projects the text once per generation, before the loop
            pos_c, neg_c = model.prepare_context(ctx), model.prepare_context(neg)
            forward = lambda c: model(x, t, c)  # noqa: E731

        def guided():
            uncond = forward(neg_c)
            return uncond + 5.0 * (forward(pos_c) - uncond)

        return guided
    if impl == "diffusers":
        return lambda: model(hidden_states=x, timestep=t, encoder_hidden_states=ctx, return_dict=False)[0]
    return lambda: model(x, t, ctx)


def _i2v_pair(args, impl: str, dtype: torch.dtype):
    """One image-to-video transformer forward: 36 input channels, the text and 257 CLIP tokens (at
    the 14B width by default: 40 heads of 128, FFN 13,824, ``--i2v-layers`` blocks)."""
    from diffusers import WanTransformer3DModel

    from kinema.checkpoints.io import build_on_meta, load_into
    from kinema.checkpoints.wan import DIFFUSERS_KEYS, from_diffusers
    from kinema.models.wan import WanTransformer

    torch.manual_seed(0)
    dim = args.i2v_heads * 128
    config = dict(
        patch_size=(1, 2, 2), num_attention_heads=args.i2v_heads, attention_head_dim=128, in_channels=36, out_channels=16,
        text_dim=4096, freq_dim=256, ffn_dim=args.i2v_ffn_dim, num_layers=args.i2v_layers, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024, image_dim=1280, added_kv_proj_dim=dim,
    )  # fmt: skip
    ref = WanTransformer3DModel(**config).eval()
    g = torch.Generator().manual_seed(1)
    f, h, w = (args.frames - 1) // 4 + 1, args.height // 8, args.width // 8
    x = torch.randn(1, 36, f, h, w, generator=g).to(dtype)
    t = torch.tensor([700.0])
    ctx = torch.randn(1, 512, 4096, generator=g).to(dtype)
    clip = torch.randn(1, 257, 1280, generator=g).to(dtype)
    if impl == "diffusers":
        model = ref.to(dtype)
        return lambda: model(hidden_states=x, timestep=t, encoder_hidden_states=ctx, encoder_hidden_states_image=clip, return_dict=False)[0]
    kconfig = from_diffusers(ref.config)
    model = load_into(build_on_meta(lambda: WanTransformer(kconfig)), DIFFUSERS_KEYS.to_ours(ref.state_dict()), dtype=dtype)
    del ref
    return lambda: model(x, t, ctx, clip)


def _clip_pair(args, impl: str, dtype: torch.dtype):
    """The picture's CLIP features: ViT-H/14 at full size (32 layers of 1,280, 224 pixels), from a
    512 x 384 picture, preprocessing included: diffusers' ``encode_image`` (the processor, the whole
    tower with every hidden state, the penultimate taken) against kinema's encoder (the tower built
    without its last layer)."""
    import tempfile

    import numpy as np
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    from kinema.image.clip import CLIPImageEncoder

    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                              image_size=224, patch_size=14, hidden_act="gelu", layer_norm_eps=1e-5)  # fmt: skip
    ref = CLIPVisionModel(config).eval()
    processor = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    picture = np.random.RandomState(0).randint(0, 256, (384, 512, 3), dtype=np.uint8)
    if impl == "diffusers":
        model = ref.to(dtype)

        def encode():  # WanImageToVideoPipeline.encode_image
            values = processor(images=picture, return_tensors="pt").pixel_values.to(dtype)
            return model(pixel_values=values, output_hidden_states=True).hidden_states[-2]

        return encode
    with tempfile.TemporaryDirectory() as tmp:  # through kinema's real loader, as a diffusers layout holds it
        ref.save_pretrained(f"{tmp}/image_encoder")
        processor.save_pretrained(f"{tmp}/image_processor")
        del ref
        encoder = CLIPImageEncoder.from_diffusers(f"{tmp}/image_encoder", f"{tmp}/image_processor", dtype=dtype)
        for p in encoder.model.parameters():  # into memory, as the other side's: the call's peak is then the call's own
            p.data = p.data.clone()
    return lambda: encoder(picture)


def _vae_pair(args, impl: str, dtype: torch.dtype):
    from diffusers import AutoencoderKLWan

    from kinema.checkpoints.io import build_on_meta, load_into
    from kinema.checkpoints.wan_vae import diffusers_keys, from_diffusers
    from kinema.models.vae.wan_vae import WanVAE

    torch.manual_seed(0)
    ref = AutoencoderKLWan().eval()  # the Wan 2.1 VAE at full size (126.9 M parameters)
    f, h, w = (args.frames - 1) // 4 + 1, args.height // 8, args.width // 8
    z = torch.randn(1, 16, f, h, w, generator=torch.Generator().manual_seed(1)).to(dtype)
    if impl == "diffusers":
        model = ref.to(dtype)
        return lambda: model.decode(z, return_dict=False)[0]
    kconfig = from_diffusers(ref.config)
    state = diffusers_keys(kconfig).to_ours(ref.state_dict())
    model = load_into(build_on_meta(lambda: WanVAE(kconfig)), state, dtype=dtype).eval()
    del ref
    return lambda: model.decode(z)


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layers", type=int, default=2, help="transformer layers (30 = the whole 1.3B)")
    p.add_argument("--heads", type=int, default=12, help="attention heads of 128 (12 = 1.3B width)")
    p.add_argument("--ffn-dim", type=int, default=8960, help="feed-forward width (8960 = 1.3B)")
    p.add_argument("--i2v-layers", type=int, default=1, help="image-to-video transformer layers (40 = the whole 14B)")
    p.add_argument("--i2v-heads", type=int, default=40, help="image-to-video attention heads of 128 (40 = 14B width)")
    p.add_argument("--i2v-ffn-dim", type=int, default=13824, help="image-to-video feed-forward width (13824 = 14B)")


BENCH = Bench(
    script=__file__,
    description=__doc__,
    builders={"transformer step": _transformer_pair, "guided step": _transformer_pair, "VAE decode": _vae_pair,
              "i2v step": _i2v_pair, "CLIP image encoding": _clip_pair},  # fmt: skip
    frames=9,  # 4k+1
    size="128x128",
    add_arguments=_add_arguments,
    whats=("transformer step", "guided step", "VAE decode"),  # the image-to-video rows on request (--what)
    describe=lambda args: f"transformer: {args.layers} layers of {args.heads * 128}; i2v: {args.i2v_layers} of {args.i2v_heads * 128}",
)


if __name__ == "__main__":
    run(BENCH)
