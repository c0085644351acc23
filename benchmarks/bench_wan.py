"""kinema vs diffusers on identical Wan 2.1 weights and inputs: one transformer step, one VAE decode.

Every measurement runs in a fresh child process (so peak memory is that run's own), on the same
random weights (seeded) converted through kinema's real key maps, with the same inputs. Prints
median wall time over ``--repeats`` runs after one warm-up, the peak resident memory of the
process during the timed call above what the weights already held, and the kinema/diffusers ratio
(< 1 means kinema is faster or smaller).

    python benchmarks/bench_wan.py                      # 1.3B width, 2 layers; VAE at full size
    python benchmarks/bench_wan.py --layers 30          # the whole 1.3B transformer (slow in fp32)
    python benchmarks/bench_wan.py --dtypes float32 --json out.json

Needs diffusers (the test extra): ``pip install -e ".[test]"``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


# ------------------------------------------------------------------------------------------------
# Memory: the kernel's high-water mark of resident memory, reset before each timed call
# ------------------------------------------------------------------------------------------------
def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # "5" resets VmHWM to the current RSS (Linux >= 4.0)
        f.write("5")


# ------------------------------------------------------------------------------------------------
# The two sides, built from one seeded diffusers model
# ------------------------------------------------------------------------------------------------
def _has_native_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX); PyTorch is slow at bf16 without."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _transformer_pair(args, impl: str, dtype: torch.dtype):
    from diffusers import WanTransformer3DModel

    from kinema.checkpoints.io import build_on_meta, load_into
    from kinema.checkpoints.wan_transformer_keys import DIFFUSERS_KEYS
    from kinema.models.wan import WanTransformer, WanTransformerConfig

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
        kconfig = WanTransformerConfig.from_diffusers(ref.config)
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


def _vae_pair(args, impl: str, dtype: torch.dtype):
    from diffusers import AutoencoderKLWan

    from kinema.checkpoints.io import build_on_meta, load_into
    from kinema.checkpoints.wan_vae_keys import diffusers_keys
    from kinema.models.vae.wan_vae import WanVAE, WanVAEConfig

    torch.manual_seed(0)
    ref = AutoencoderKLWan().eval()  # the Wan 2.1 VAE at full size (126.9 M parameters)
    f, h, w = (args.frames - 1) // 4 + 1, args.height // 8, args.width // 8
    z = torch.randn(1, 16, f, h, w, generator=torch.Generator().manual_seed(1)).to(dtype)
    if impl == "diffusers":
        model = ref.to(dtype)
        return lambda: model.decode(z, return_dict=False)[0]
    kconfig = WanVAEConfig.from_diffusers(ref.config)
    state = diffusers_keys(kconfig).to_ours(ref.state_dict())
    model = load_into(build_on_meta(lambda: WanVAE(kconfig)), state, dtype=dtype).eval()
    del ref
    return lambda: model.decode(z)


BUILDERS = {"transformer step": _transformer_pair, "guided step": _transformer_pair, "VAE decode": _vae_pair}


def child(args) -> None:
    """Measure one (what, impl, dtype) in this process and print one JSON line."""
    torch.set_num_threads(args.threads)
    fn = BUILDERS[args.what](args, args.impl, DTYPES[args.dtype])
    with torch.inference_mode():
        base = _rss_kib("VmRSS")  # weights and inputs
        _reset_peak()
        t0 = time.perf_counter()
        out = fn()  # first call: its peak is the memory the call needs; it also warms up
        first = time.perf_counter() - t0
        peak = _rss_kib("VmHWM") - base
        times = [] if args.repeats else [first]  # --repeats 0: time the first call (long runs)
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
    print(json.dumps({
        "what": args.what, "impl": args.impl, "dtype": args.dtype, "seconds": statistics.median(times),
        "peak_mib": peak / 1024, "weights_mib": base / 1024, "checksum": float(out.float().abs().mean()),
    }))  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=2, help="transformer layers (30 = the whole 1.3B)")
    p.add_argument("--heads", type=int, default=12, help="attention heads of 128 (12 = 1.3B width)")
    p.add_argument("--ffn-dim", type=int, default=8960, help="feed-forward width (8960 = 1.3B)")
    p.add_argument("--frames", type=int, default=9, help="video frames (4k+1)")
    p.add_argument("--size", default="128x128", help="WIDTHxHEIGHT in pixels")
    p.add_argument("--vae-bf16-frames", type=int, default=1, help="frames for the bf16 VAE row on CPUs without bf16")
    p.add_argument("--vae-bf16-size", default="32x32", help="size for the bf16 VAE row on CPUs without bf16")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--what", default="transformer step,guided step,VAE decode")
    p.add_argument("--repeats", type=int, default=3, help="timed calls after the first (0: time the first)")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--impl", help=argparse.SUPPRESS)  # set in child processes
    args = p.parse_args()
    args.width, args.height = (int(v) for v in args.size.lower().split("x"))
    if args.impl:
        args.dtype = args.dtypes
        return child(args)

    rows = []
    for what in args.what.split(","):
        for dtype in args.dtypes.split(","):
            frames, size = args.frames, args.size
            if what == "VAE decode" and dtype == "bfloat16" and not _has_native_bf16():
                # PyTorch's bf16 conv3d without native CPU kernels is ~300x slower than fp32: a
                # smaller clip keeps the diffusers side of this row within minutes
                frames, size = args.vae_bf16_frames, args.vae_bf16_size
            pair = {}
            for impl in ("diffusers", "kinema"):
                cmd = [sys.executable, __file__, "--impl", impl, "--what", what, "--dtypes", dtype,
                       "--frames", str(frames), "--size", size]  # fmt: skip
                for flag in ("layers", "heads", "ffn_dim", "repeats", "threads"):
                    cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
                res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
                if res.returncode:
                    sys.exit(f"{impl} {what} {dtype} failed:\n{res.stderr[-3000:]}")
                pair[impl] = json.loads(res.stdout.strip().splitlines()[-1])
            d, k = pair["diffusers"], pair["kinema"]
            rows.append({**{f"{i}_{m}": pair[i][m] for i in pair for m in ("seconds", "peak_mib")},
                         "what": what, "dtype": dtype, "frames": frames, "size": size,
                         "time_ratio": k["seconds"] / d["seconds"], "memory_ratio": k["peak_mib"] / d["peak_mib"],
                         "checksum_diff": abs(k["checksum"] - d["checksum"])})  # fmt: skip
            r = rows[-1]
            print(
                f"{what:16s} {dtype:8s} {frames:3d}f {size:>8s} | diffusers {d['seconds']:8.3f} s {d['peak_mib']:7.1f} MiB | "
                f"kinema {k['seconds']:8.3f} s {k['peak_mib']:7.1f} MiB | kinema/diffusers time {r['time_ratio']:.2f} "
                f"memory {r['memory_ratio']:.2f}",
                flush=True,
            )
    print(f"(torch {torch.__version__}, {args.threads} threads, transformer: {args.layers} layers of {args.heads * 128}; "
          "memory: peak RSS of the call above weights and inputs)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
