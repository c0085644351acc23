"""What one TTV-1B forward costs, computed from kinema's model rather than quoted: FLOPs and memory.

- FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` over one forward of the ``ttv-1b`` preset
  built on the meta device (nothing allocated, every layer counted), batch 1 at the published clip
  (16 x 256 x 256, 2,048 tokens), split into the blocks' linears, their attention and the rest;
  a guided sampling step is two such forwards. The published estimate is about 4.8 TFLOPs.
- Memory: the same forward on the CPU in float32 with ``--layers`` blocks (1 and 2 by default),
  each in a fresh child process: the resident memory after building the weights and the inputs,
  and the peak during the forward (no gradients) and during a forward and backward (training);
  the per-block difference extrapolates to all 24 blocks. bf16 halves every term but the float32
  residual stream and modulation.

    python benchmarks/ttv_numbers.py                    # FLOPs, then memory at 1 and 2 blocks
    python benchmarks/ttv_numbers.py --size 128 --frames 8 --layers 1 2 3
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from dataclasses import replace

import torch

PUBLISHED_TFLOPS = 4.8


def count_flops(frames: int, size: int) -> dict[str, float]:
    from torch.utils.flop_counter import FlopCounterMode

    from kinema.models.pixel_dit import PIXEL_DIT_PRESETS, PixelDiT

    config = PIXEL_DIT_PRESETS["ttv-1b"]()
    with torch.device("meta"):
        model = PixelDiT(config)
        x = torch.empty(1, 3, frames, size, size)
        ids = torch.zeros(1, 32, dtype=torch.long)
        mask = torch.ones(1, 32, dtype=torch.bool)
        t = torch.zeros(1)
    with FlopCounterMode(display=False) as counter:
        with torch.no_grad():
            states = model.encode_text(ids, mask)
    text = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        with torch.no_grad():
            model(x, t, states, mask)
    by_module = counter.get_flop_counts()
    total = counter.get_total_flops()
    blocks = sum(sum(v.values()) for k, v in by_module.items() if k.count(".") == 2 and ".blocks." in k)  # PixelDiT.blocks.N
    attention = sum(
        n for k, v in by_module.items() if k.count(".") == 2 and ".blocks." in k for op, n in v.items() if "bmm" in str(op) or "attention" in str(op)
    )
    tokens = (frames // config.patch_size[0]) * (size // config.patch_size[1]) * (size // config.patch_size[2])
    return {"tokens": tokens, "forward": total, "blocks": blocks, "attention": attention, "text_32_tokens": text}


def measure(layers: int, frames: int, size: int, backward: bool) -> dict[str, float]:
    """In this process: build ``layers`` blocks of ttv-1b, run one forward (and backward); bytes."""
    from kinema.models.pixel_dit import PIXEL_DIT_PRESETS, PixelDiT

    torch.manual_seed(0)
    model = PixelDiT(replace(PIXEL_DIT_PRESETS["ttv-1b"](), num_layers=layers))
    model.requires_grad_(backward)
    x = torch.randn(1, 3, frames, size, size)
    states = torch.randn(1, 32, 768)
    t = torch.tensor([500.0])

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()

    before = rss()
    with torch.set_grad_enabled(backward):
        out = model(x, t, states)
        if backward:
            out.square().mean().backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"layers": layers, "params": model.num_parameters(), "before": before, "peak": peak, "backward": backward}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--layers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        layers, backward = json.loads(args.child)
        print(json.dumps(measure(layers, args.frames, args.size, backward)))
        return

    f = count_flops(args.frames, args.size)
    print(f"one ttv-1b forward at {args.frames}x{args.size}x{args.size} ({f['tokens']:,} tokens), batch 1, counted on meta:")
    print(f"  total {f['forward'] / 1e12:.3f} TFLOPs (blocks {f['blocks'] / 1e12:.3f}, of which attention {f['attention'] / 1e12:.3f};"
          f" the rest {(f['forward'] - f['blocks']) / 1e12:.4f}); text encoder on 32 tokens {f['text_32_tokens'] / 1e9:.2f} GFLOPs")  # fmt: skip
    per_param = 2 * 1_003_147_264 * f["tokens"] + f["attention"]  # every published parameter applied to every token, plus attention
    print(f"  published estimate {PUBLISHED_TFLOPS} TFLOPs: ratio counted / published = {f['forward'] / 1e12 / PUBLISHED_TFLOPS:.3f};"
          f" a guided step (cond + uncond) {2 * f['forward'] / 1e12:.3f} TFLOPs; 50 guided steps {100 * f['forward'] / 1e15:.3f} PFLOPs")  # fmt: skip
    print(f"  2 x 1,003,147,264 published parameters x {f['tokens']:,} tokens + attention = {per_param / 1e12:.3f} TFLOPs (the published"
          " count applies every parameter, text encoder and modulation included, to every token)")  # fmt: skip

    rows = []
    for backward in (False, True):
        for layers in args.layers:
            res = subprocess.run([sys.executable, __file__, "--frames", str(args.frames), "--size", str(args.size),
                                  "--child", json.dumps([layers, backward])], capture_output=True, text=True, check=True)  # fmt: skip
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    gib = 2**30
    print(f"memory, float32 on the CPU, batch 1, {args.frames}x{args.size}x{args.size} (fresh process each):")
    for backward in (False, True):
        sel = [r for r in rows if r["backward"] == backward]
        for r in sel:
            print(f"  {'train' if backward else 'infer'} {r['layers']:>2} blocks: {r['params'] / 1e6:8.1f} M params, resident before "
                  f"{r['before'] / gib:.2f} GiB, peak {r['peak'] / gib:.2f} GiB, peak above weights and inputs {(r['peak'] - r['before']) / gib:.2f} GiB")  # fmt: skip
        if len(sel) >= 2:
            a, b = sel[0], sel[-1]
            per = (b["peak"] - a["peak"]) / (b["layers"] - a["layers"])
            full = a["peak"] + per * (24 - a["layers"])
            what = " (weights, gradients and activations; AdamW's two moments add twice the weights)" if backward else ""
            print(f"  {'train' if backward else 'infer'}: {per / gib:.3f} GiB more peak per block -> 24 blocks about {full / gib:.1f} GiB"
                  f" in float32, about {full / 2 / gib:.1f} GiB with bf16 weights and activations{what}")  # fmt: skip


if __name__ == "__main__":
    main()
