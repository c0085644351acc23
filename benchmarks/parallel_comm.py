"""Communication per denoising step under sequence and guidance parallel, on paper.

For a Wan-family transformer (a preset of kinema's registry) at a resolution and frame count,
counts the bytes each rank sends per denoising step (both guidance passes) under:

- **Ulysses** over P ranks: before each self-attention, q, k and v go from a sequence shard of all
  heads to all tokens of H/P heads (an all-to-all each), and the output comes back (one more): 4
  all-to-alls per block, each rank sending (P-1)/P of its shard, S/P x dim values;
- **ring** over P ranks: each rank's k and v shards travel round the ring, P-1 hops: 2 (P-1)
  shards of S/P x dim values per block;
- **guidance parallel** (2 halves) with Ulysses over P/2 inside each half: each rank runs one of
  the two passes on a shard of S/(P/2) tokens, plus one all-gather of the prediction per step;
- what kinema adds to every sequence-parallel plan: one all-gather per forward of the last block's
  token states (S x dim, float32: Wan's residual stream), so the head runs whole on every rank.

Cross-attention needs nothing (each rank holds all text tokens), nor do the feed-forwards.
Compute per step is counted too (2 x parameters x tokens for the linear layers, 4 x S^2 x dim per
block for self-attention, 4 x S x text_len x dim for cross-attention), so that the time on the
wire can be held against the time of the arithmetic. Link speed and achieved FLOP/s are
arguments (defaults: NVLink 4 on H100 SXM, 450 GB/s per direction; the published 8-GPU time).

    python benchmarks/parallel_comm.py                     # Wan 14B, 1280x720, 81 frames, 8 GPUs
    python benchmarks/parallel_comm.py --preset wan2.1-t2v-1.3b --height 480 --width 832 --gpus 4
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VAE_STRIDE = (4, 8, 8)  # Wan 2.1's VAE: frames 4n+1 -> n+1 latent frames, 8x8 pixels per latent
PUBLISHED = {  # Wan 2.1's README (REFERENCES.md): T2V-14B, 720p, 81 frames, 50 steps, guidance 5
    "one_gpu_s": 1838.0,
    "eight_gpu_s": 288.0,
    "steps": 50,
}


def tokens(preset_config, height: int, width: int, frames: int) -> int:
    """Video tokens the transformer sees: latent frames x latent rows x latent columns / patch."""
    pt, ph, pw = preset_config.patch_size
    lt = (frames - 1) // VAE_STRIDE[0] + 1
    return (lt // pt) * (height // VAE_STRIDE[1] // ph) * (width // VAE_STRIDE[2] // pw)


def volumes(cfg, s: int, gpus: int, bytes_per: int = 2) -> dict[str, float]:
    """Bytes one rank sends per denoising step (cond + uncond passes) under each plan."""
    d, layers = cfg.dim, cfg.num_layers
    out_per_token = cfg.out_dim * math.prod(cfg.patch_size)
    shard = s / gpus * d * bytes_per  # one rank's share of one (S, dim) tensor

    def gather_out(p: int) -> float:  # all-gather of the last block's states: each rank's shard to the p-1 others
        return s * d * 4 * (p - 1) / p  # float32

    ulysses = 2 * (layers * 4 * shard * (gpus - 1) / gpus + gather_out(gpus))
    ring = 2 * (layers * 2 * shard * (gpus - 1) + gather_out(gpus))
    half = gpus // 2
    shard_half = s / half * d * bytes_per
    latent = out_per_token * s * 4  # the prediction, float32
    cfg_ulysses = layers * 4 * shard_half * (half - 1) / half + gather_out(half) + latent / 2
    return {"ulysses": ulysses, "ring": ring, "guidance+ulysses": cfg_ulysses}


def flops_per_step(cfg, s: int) -> float:
    """Multiply-adds x 2 of both guidance passes."""
    d, layers, ff = cfg.dim, cfg.num_layers, cfg.ffn_dim
    per_block_linear = 4 * d * d + 2 * d * d + 2 * d * ff  # self q,k,v,o; cross q,o (text k,v once); ffn
    linear = 2 * s * per_block_linear * layers
    attention = 4 * s * s * d * layers + 4 * s * cfg.text_len * d * layers
    return 2 * (linear + attention)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="wan2.1-t2v-14b")
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--link-gbs", type=float, default=450.0, help="GB/s each GPU sends (NVLink 4, H100 SXM: 450)")
    args = p.parse_args(argv)

    from kinema.families import presets

    _, factory = presets()[args.preset]
    cfg = factory()
    s = tokens(cfg, args.height, args.width, args.frames)
    flops = flops_per_step(cfg, s)
    vols = volumes(cfg, s, args.gpus)
    print(f"{args.preset}: {args.width}x{args.height}, {args.frames} frames -> {s:,} tokens; {args.gpus} GPUs; bf16 activations")
    print(f"compute per step (cond + uncond): {flops / 1e15:.1f} PFLOP")
    if args.preset == "wan2.1-t2v-14b" and args.gpus == 8:
        per_step = PUBLISHED["eight_gpu_s"] / PUBLISHED["steps"]
        achieved = flops / per_step
        print(f"published 8-GPU time {PUBLISHED['eight_gpu_s']:.0f} s / {PUBLISHED['steps']} steps = {per_step:.2f} s a step "
              f"(the whole run, text encoder and VAE included) -> {achieved / 1e15:.2f} PFLOP/s, {achieved / 8 / 1e12:.0f} TFLOP/s per GPU")
        print(f"published 1-GPU time {PUBLISHED['one_gpu_s']:.0f} s -> speed-up {PUBLISHED['one_gpu_s'] / PUBLISHED['eight_gpu_s']:.1f}x on 8")
    else:
        per_step = None
    print(f"{'plan':<18} {'GB sent per rank per step':>26} {'ms at link speed':>17}" + ("  share of the published step" if per_step else ""))
    for name, v in vols.items():
        ms = v / (args.link_gbs * 1e9) * 1e3
        share = f"  {ms / 1e3 / per_step:>8.1%}" if per_step else ""
        print(f"{name:<18} {v / 1e9:>26.1f} {ms:>17.0f}{share}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
