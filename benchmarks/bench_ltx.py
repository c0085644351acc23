"""kinema vs diffusers on identical LTX-Video (Spectro-2B) weights and inputs: a transformer step, a
guided step and a VAE decode.

The harness of ``bench_wan.py`` (``benchmarks/harness.py``): every measurement runs in a fresh child
process, on one seeded random diffusers model and the same weights converted through kinema's key
maps (``kinema.checkpoints.ltx_transformer_keys``, ``ltx_vae_keys``), with the same inputs; it prints
the median wall time, the peak resident memory of the call above the weights and inputs, and
kinema/diffusers ratios (< 1 means kinema is faster or smaller).

- transformer step: one forward of ``LTXTransformer`` against ``LTXVideoTransformer3DModel``
  (spectro-2b width, ``--layers`` blocks), batch 1, 128 T5 text states (32 real tokens, the rest
  masked), the RoPE scale LTXPipeline passes (``ltx_rope_scale(25, 8, 32)``); diffusers gets the
  packed tokens its pipeline keeps, kinema the (B, C, F, H, W) latents.
- guided step: one classifier-free-guided velocity as each pipeline computes it. diffusers'
  ``LTXPipeline`` batches cond and uncond: it concatenates the latents, runs one batch-2 forward on
  the concatenated text states and masks, and splits. kinema projects the text once per generation
  (``prepare_context``, outside the timed call) and runs one batch-2 forward on a batch-2
  ``LTXConditioning``, as its LTX pipeline does by default (``--kinema-cfg separate``: two forwards,
  what ``pipe(..., batch_cfg=False)`` does, for less activation memory).
- VAE decode: the LTX-Video 0.9.1 VAE at full size (``--vae``), decode timestep 0.05 with noise
  scale 0.025 (LTX-Video's recommended settings): kinema's streamed ``LTXVAE.decode`` (``--vae-chunk``
  latent frames per step) against ``AutoencoderKLLTXVideo.decode`` after the noise blend LTXPipeline
  does, plain ("diffusers") and with ``enable_tiling()`` ("diffusers-tiled": spatial tiles, only
  above 512 px). "diffusers-framewise" (tiling plus the private ``use_framewise_decoding``: temporal
  tiles of 16 frames) is available through ``--vae-references``. Tiled outputs differ (blended tiles).

    python benchmarks/bench_ltx.py                                # 2 layers, 17 frames 256x256
    python benchmarks/bench_ltx.py --what "VAE decode" --dtypes float32 --frames 49 --size 512x512 --repeats 0
    python benchmarks/bench_ltx.py --layers 28 --dtypes bfloat16  # the whole 2B transformer

Needs diffusers (the test extra): ``pip install -e ".[test]"``.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch

from kinema.models.vae.ltx_vae import DEFAULT_DECODE_NOISE_SCALE, DEFAULT_DECODE_TIMESTEP
from harness import Bench, run

TEXT_TOKENS = 128  # LTXPipeline's max_sequence_length: T5 states padded to this
PROMPT_TOKENS, NEGATIVE_TOKENS = 32, 1  # real tokens: a prompt, and the empty negative prompt (EOS only)
GUIDANCE = 3.0  # LTXPipeline's default guidance_scale
FRAME_RATE = 25  # LTXPipeline's default frame_rate (it sets the RoPE scale)
TIMESTEP = 700.0  # a mid-schedule flow-matching time in [0, 1000], as both pipelines pass it
LATENT_CHANNELS, TEXT_DIM = 128, 4096


def _kwargs(config: dict) -> dict:
    """A diffusers config.json as constructor arguments (without ``_class_name``)."""
    return {k: v for k, v in config.items() if not k.startswith("_")}


# ------------------------------------------------------------------------------------------------
# Transformer: one seeded diffusers model, converted through kinema's key map
# ------------------------------------------------------------------------------------------------
def _transformer_pair(args, impl: str, dtype: torch.dtype):
    from diffusers import LTXVideoTransformer3DModel

    from kinema.checkpoints.io import build_on_meta, load_into
    from kinema.checkpoints.ltx import DIFFUSERS_KEYS, to_diffusers
    from kinema.models.ltx import LTX_PRESETS, LTXTransformer, ltx_rope_scale

    preset = LTX_PRESETS[args.preset]()
    head_dim = preset.head_dim
    kconfig = replace(preset, num_layers=args.layers, num_heads=args.heads, dim=args.heads * head_dim,
                      ffn_dim=preset.ffn_dim // preset.dim * args.heads * head_dim)  # fmt: skip
    torch.manual_seed(0)
    ref = LTXVideoTransformer3DModel(**_kwargs(to_diffusers(kconfig))).eval()
    if impl == "diffusers":
        model = ref.to(dtype)
    else:
        model = build_on_meta(lambda: LTXTransformer(kconfig))
        model = load_into(model, DIFFUSERS_KEYS.to_ours(ref.state_dict()), dtype=dtype).eval()
        del ref

    g = torch.Generator().manual_seed(1)
    f, h, w = (args.frames - 1) // 8 + 1, args.height // 32, args.width // 32
    x = torch.randn(1, LATENT_CHANNELS, f, h, w, generator=g)  # (1, C, F, H, W) float32, as the sampler holds it
    packed = x.permute(0, 2, 3, 4, 1).reshape(1, f * h * w, LATENT_CHANNELS)  # diffusers' _pack_latents (patch 1)
    t = torch.tensor([TIMESTEP])
    scale = ltx_rope_scale(FRAME_RATE, 8, 32)  # LTXPipeline's rope_interpolation_scale
    text = torch.randn(1, TEXT_TOKENS, TEXT_DIM, generator=g).to(dtype)
    mask = torch.zeros(1, TEXT_TOKENS, dtype=torch.bool)  # the tokenizer's mask, as LTXPipeline passes it (bool)
    mask[:, :PROMPT_TOKENS] = True

    def diffusers_forward(latents, timestep, states, states_mask):
        return model(
            hidden_states=latents, encoder_hidden_states=states, timestep=timestep, encoder_attention_mask=states_mask,
            num_frames=f, height=h, width=w, rope_interpolation_scale=scale, return_dict=False,
        )[0]  # fmt: skip

    if args.what != "guided step":  # one forward from raw text states (both embed the text in the call)
        if impl == "diffusers":
            return lambda: diffusers_forward(packed.to(dtype), t, text, mask)
        return lambda: model(x.to(dtype), t, text, mask, rope_scale=scale)

    # one sampling step with classifier-free guidance, as each pipeline runs it
    neg = torch.randn(1, TEXT_TOKENS, TEXT_DIM, generator=g).to(dtype)
    neg_mask = torch.zeros(1, TEXT_TOKENS, dtype=torch.bool)
    neg_mask[:, :NEGATIVE_TOKENS] = True
    if impl == "diffusers":  # LTXPipeline: uncond and cond in one batch-2 forward
        states, states_mask = torch.cat([neg, text]), torch.cat([neg_mask, mask])  # once, before the loop

        def guided():
            latents = torch.cat([packed] * 2).to(dtype)
            v = diffusers_forward(latents, t.expand(2), states, states_mask).float()
            uncond, cond = v.chunk(2)
            return uncond + GUIDANCE * (cond - uncond)

        return guided
    if args.kinema_cfg == "batched":  # one batch-2 forward on the text projected once
        both = model.prepare_context(torch.cat([neg, text]), torch.cat([neg_mask, mask]))

        def guided():
            uncond, cond = model(torch.cat([x] * 2).to(dtype), t.expand(2), both, rope_scale=scale).float().chunk(2)
            return uncond + GUIDANCE * (cond - uncond)

        return guided
    # kinema's pipelines: the text projected once per generation, cond and uncond as two forwards
    pos_c, neg_c = model.prepare_context(text, mask), model.prepare_context(neg, neg_mask)

    def guided():
        xd = x.to(dtype)
        cond = model(xd, t, pos_c, rope_scale=scale).float()
        uncond = model(xd, t, neg_c, rope_scale=scale).float()
        return uncond + GUIDANCE * (cond - uncond)

    return guided


# ------------------------------------------------------------------------------------------------
# VAE: one seeded diffusers AutoencoderKLLTXVideo, converted through kinema's key map
# ------------------------------------------------------------------------------------------------
def _vae_config(args):
    from kinema.models.vae.ltx_vae import LTX_VAE_PRESETS

    config = LTX_VAE_PRESETS[args.vae]()
    if args.vae_width_div > 1:  # a reduced VAE, for smoke tests: every width divided (latents stay 128)
        d = args.vae_width_div
        config = replace(config, block_out_channels=tuple(c // d for c in config.block_out_channels),
                         decoder_block_out_channels=tuple(c // d for c in config.decoder_block_out_channels))  # fmt: skip
    return config


def _vae_pair(args, impl: str, dtype: torch.dtype):
    from diffusers import AutoencoderKLLTXVideo

    from kinema.checkpoints.io import build_on_meta, load_into
    from kinema.checkpoints.ltx_vae import diffusers_keys, to_diffusers
    from kinema.models.vae.ltx_vae import LTXVAE

    kconfig = _vae_config(args)
    torch.manual_seed(0)
    ref = AutoencoderKLLTXVideo(**_kwargs(to_diffusers(kconfig))).eval()
    f, h, w = (args.frames - 1) // 8 + 1, args.height // 32, args.width // 32
    z = torch.randn(1, LATENT_CHANNELS, f, h, w, generator=torch.Generator().manual_seed(1)).to(dtype)  # denormalised
    conditioned = kconfig.timestep_conditioning

    if impl.startswith("diffusers"):
        model = ref.to(dtype)
        if impl in ("diffusers-tiled", "diffusers-framewise"):
            model.enable_tiling()  # spatial tiles of 512 px, stride 448
        if impl == "diffusers-framewise":
            model.use_framewise_decoding = True  # temporal tiles of 16 frames, stride 8 (no public switch)

        def decode():  # LTXPipeline after sampling: blend noise into the latents, decode at the decode timestep
            if not conditioned:
                return model.decode(z, return_dict=False)[0]
            g = torch.Generator().manual_seed(7)
            noise = torch.randn(z.shape, generator=g, dtype=dtype)
            latents = (1 - DEFAULT_DECODE_NOISE_SCALE) * z + DEFAULT_DECODE_NOISE_SCALE * noise
            torch.set_rng_state(g.get_state())  # the decoder's injected noise continues the stream, as kinema's does
            return model.decode(latents, torch.tensor([DEFAULT_DECODE_TIMESTEP], dtype=dtype), return_dict=False)[0]

        decode.for_checksum = lambda video: video.clamp(-1, 1)  # as kinema's decode (LTXPipeline: when postprocessing)
        return decode

    state = diffusers_keys(kconfig).to_ours(ref.state_dict())
    model = load_into(build_on_meta(lambda: LTXVAE(kconfig)), state, dtype=dtype).eval()
    del ref
    chunk = args.vae_chunk or None
    if not conditioned:
        return lambda: model.decode(z, chunk_size=chunk)
    return lambda: model.decode(
        z, timestep=DEFAULT_DECODE_TIMESTEP, decode_noise_scale=DEFAULT_DECODE_NOISE_SCALE,
        generator=torch.Generator().manual_seed(7), chunk_size=chunk,
    )  # fmt: skip


VAE_REFERENCES = ("diffusers", "diffusers-tiled", "diffusers-framewise")


def _references(args, what: str) -> list[str]:
    if what != "VAE decode":
        return ["diffusers"]
    refs = args.vae_references.split(",")
    unknown = [r for r in refs if r not in VAE_REFERENCES]
    if unknown:
        raise SystemExit(f"unknown --vae-references {unknown}; choose from {', '.join(VAE_REFERENCES)}")
    return refs


def _add_arguments(p: argparse.ArgumentParser) -> None:
    from kinema.models.ltx import LTX_PRESETS
    from kinema.models.vae.ltx_vae import DEFAULT_DECODE_CHUNK, LTX_VAE_PRESETS

    p.add_argument("--preset", default="spectro-2b", choices=sorted(LTX_PRESETS), help="transformer width")
    p.add_argument("--layers", type=int, default=2, help="transformer layers (28 = the whole spectro-2b)")
    p.add_argument("--heads", type=int, default=32, help="attention heads of the preset's head size (32 = spectro-2b)")
    p.add_argument("--kinema-cfg", default="batched", choices=("separate", "batched"),
                   help="guided step, kinema side: one batch-2 forward (the LTX pipeline's default) or two forwards (batch_cfg=False)")  # fmt: skip
    p.add_argument("--vae", default="ltx-video-0.9.1", choices=sorted(LTX_VAE_PRESETS), help="VAE release")
    p.add_argument("--vae-width-div", type=int, default=1, help="divide the VAE's widths by this (smoke tests)")
    p.add_argument("--vae-chunk", type=int, default=DEFAULT_DECODE_CHUNK,
                   help="kinema's decode: latent frames per step (0: the whole clip at once)")  # fmt: skip
    p.add_argument("--vae-references", default="diffusers,diffusers-tiled",
                   help="diffusers decodes to compare with: diffusers, diffusers-tiled, diffusers-framewise")  # fmt: skip


def _describe(args) -> str:
    from kinema.models.ltx import LTX_PRESETS

    vae = args.vae + (f" (widths / {args.vae_width_div})" if args.vae_width_div > 1 else "")
    head_dim = LTX_PRESETS[args.preset]().head_dim
    return (f"transformer: {args.layers} layers of {args.heads}x{head_dim} ({args.preset} heads), "
            f"kinema CFG {args.kinema_cfg}; "
            f"VAE: {vae}, kinema decode chunk {args.vae_chunk or 'whole clip'}")  # fmt: skip


BENCH = Bench(
    script=__file__,
    description=__doc__,
    builders={"transformer step": _transformer_pair, "guided step": _transformer_pair, "VAE decode": _vae_pair},
    frames=17,  # 8k+1: 3 latent frames
    size="256x256",  # 8x8 latents: 192 video tokens
    add_arguments=_add_arguments,
    describe=_describe,
    references=_references,
)


if __name__ == "__main__":
    run(BENCH)
