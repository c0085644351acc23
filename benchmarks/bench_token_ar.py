"""The autoregressive token model's KV cache: speed against recomputation, memory against clip length.

Two measurements on seeded random weights of a preset (default ``ar-shapes``, the shapes-world
size), greedy decoding of random text states:

- ``speed``: tokens per second generating one ``--frames`` clip with the cache and by recomputing
  the full forward for every token (the reference), their ratio (goal: at least 5x), and whether
  the two produced the same tokens.
- ``memory``: for each clip length in ``--lengths``, the cache's bytes and the peak memory of
  generating with the cache (flat: the sliding window keeps ``window_frames`` frames), beside the
  peak of one full forward over the clip (what recomputation and training pay, which grows).

- ``schedule``: a prompt schedule (``--prompts`` prompts of ``--frames-per-prompt`` frames, each
  with its own text) made as the pipeline makes it, one KV cache carried from prompt to prompt,
  against the way it was made before: each prompt a new cache that feeds every earlier frame
  again under its text. Their ratio, and whether the first prompt's tokens agree (the later ones
  differ by design: carried, the past keeps the keys it was made with).

Peak memory: on CUDA the allocator's peak above what was allocated before the call; on the CPU
the process' peak resident memory above its resident memory before the call (Linux ``VmHWM``;
small differences are the allocator's noise).

    python benchmarks/bench_token_ar.py                                   # ar-shapes, 16 frames; 64, 32, 16
    python benchmarks/bench_token_ar.py --device cuda --dtype bfloat16
    python benchmarks/bench_token_ar.py --frames 2 --lengths 1,2,4 --dim 64   # seconds: a smoke run
    python benchmarks/bench_token_ar.py --what schedule --prompts 4 --frames-per-prompt 8
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import torch

from harness import reset_peak, rss_kib

from kinema.models.token_ar import TOKEN_AR_PRESETS, TokenAR
from kinema.sampling.tokens import generate, new_generation_cache

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
TEXT_TOKENS = 16  # text states per prompt


def _setup(args):
    config = TOKEN_AR_PRESETS[args.preset]()
    if args.dim:  # a narrower model of the same layout, for smoke runs
        config = replace(config, dim=args.dim, ffn_dim=3 * args.dim, num_heads=args.dim // 32 or 1, num_kv_heads=1)
    torch.manual_seed(0)
    model = TokenAR(config)
    model.init_weights()
    model = model.to(device=args.device, dtype=DTYPES[args.dtype]).eval()
    g = torch.Generator().manual_seed(1)
    text = torch.randn(args.batch, TEXT_TOKENS, config.text_dim, generator=g).to(args.device)
    return model, text


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device: str):
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t0


class _Peak:
    """Peak memory of a block above what was in use when it started, in MiB."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = rss_kib("VmRSS") * 1024
            reset_peak()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.mib = (torch.cuda.max_memory_allocated() - self.base) / 2**20
        else:
            self.mib = (rss_kib("VmHWM") * 1024 - self.base) / 2**20


def bench_speed(args, model: TokenAR, text: torch.Tensor) -> dict:
    c = model.config
    greedy = lambda logits: logits.argmax(-1)  # noqa: E731
    generate(model, text, None, 1, greedy, progress=False)  # warm-up
    rows = {}
    clips = {}
    for name, use_cache in (("recompute", False), ("cache", True)):
        run = lambda: generate(model, text, None, args.frames, greedy, use_cache=use_cache, progress=args.progress)  # noqa: E731
        clips[name], seconds = _timed(run, args.device)
        tokens = args.batch * args.frames * c.tokens_per_frame
        rows[name] = {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}
    ratio = rows["cache"]["tokens_per_s"] / rows["recompute"]["tokens_per_s"]
    same = bool(torch.equal(clips["cache"], clips["recompute"]))
    print(f"speed: {args.frames} frames x {c.tokens_per_frame} tokens, batch {args.batch}")
    print(f"  {'mode':10s} {'tokens':>8s} {'seconds':>9s} {'tokens/s':>10s} {'ratio':>7s}")
    for name in ("recompute", "cache"):
        r = rows[name]
        print(f"  {name:10s} {r['tokens']:8d} {r['seconds']:9.3f} {r['tokens_per_s']:10.1f} "
              f"{r['tokens_per_s'] / rows['recompute']['tokens_per_s']:6.2f}x")  # fmt: skip
    print(f"  cache/recompute speed {ratio:.1f}x (goal >= 5x: {'met' if ratio >= 5 else 'NOT met'}); same tokens: {'yes' if same else 'NO'}")
    return {"rows": rows, "ratio": ratio, "same_tokens": same}


def bench_memory(args, model: TokenAR, text: torch.Tensor) -> dict:
    c = model.config
    greedy = lambda logits: logits.argmax(-1)  # noqa: E731
    generate(model, text, None, 1, greedy, progress=False)  # warm-up (allocator, lazy inits)
    rows = []
    # Longest first: on the CPU, memory the allocator keeps from an earlier, larger call would hide a later peak.
    for frames in sorted(args.lengths, reverse=True):
        with _Peak(args.device) as gen_peak:
            cache = model.new_cache(text)
            token = None
            for _ in range(frames * c.tokens_per_frame):
                token = greedy(model.step(token, cache))
        tokens = torch.randint(0, c.vocab_size, (args.batch, frames * c.tokens_per_frame), device=args.device)
        with torch.no_grad(), _Peak(args.device) as fwd_peak:
            model(tokens, text)
        rows.append({"frames": frames, "cache_bytes": cache.nbytes(), "kv_bytes": cache.kv_bytes(),
                     "generate_peak_mib": gen_peak.mib, "forward_peak_mib": fwd_peak.mib})  # fmt: skip
        del cache
    rows.sort(key=lambda r: r["frames"])
    first = rows[0]
    print(f"memory against clip length (window {c.window_frames} frames, batch {args.batch}):")
    print(f"  {'frames':>6s} {'cache KiB':>10s} {'x':>6s} {'generate peak MiB':>18s} {'full forward peak MiB':>22s} {'x':>6s}")
    for r in rows:
        # the forward's growth against the shortest clip, where that one's peak is above the noise
        growth = f"{r['forward_peak_mib'] / first['forward_peak_mib']:6.2f}" if first["forward_peak_mib"] >= 1 else f"{'-':>6s}"
        print(f"  {r['frames']:6d} {r['cache_bytes'] / 1024:10.1f} {r['cache_bytes'] / first['cache_bytes']:6.2f} "
              f"{r['generate_peak_mib']:18.1f} {r['forward_peak_mib']:22.1f} {growth}")  # fmt: skip
    return {"rows": rows}


def bench_schedule(args, model: TokenAR, text: torch.Tensor) -> dict:
    c = model.config
    greedy = lambda logits: logits.argmax(-1)  # noqa: E731
    g = torch.Generator().manual_seed(2)
    texts = [text] + [torch.randn(text.shape, generator=g).to(text) for _ in range(args.prompts - 1)]  # a text per prompt
    frames = [args.frames_per_prompt] * args.prompts
    generate(model, text, None, 1, greedy, progress=False)  # warm-up

    def carried():
        cache, tokens = new_generation_cache(model, texts[0], None), None
        for t, n in zip(texts, frames):
            tokens = generate(model, t, None, n, greedy, prefix=tokens, cache=cache, progress=args.progress)
        return tokens

    def fed_again():
        tokens = None
        for t, n in zip(texts, frames):
            tokens = generate(model, t, None, n, greedy, prefix=tokens, progress=args.progress)
        return tokens

    out, seconds = {}, {}
    for name, run in (("fed again", fed_again), ("carried", carried)):
        out[name], seconds[name] = _timed(run, args.device)
    ratio = seconds["fed again"] / seconds["carried"]
    same_first = bool(torch.equal(out["carried"][:, : frames[0]], out["fed again"][:, : frames[0]]))
    fed = sum(sum(frames[:i]) for i in range(len(frames)))  # earlier frames fed again at each prompt change
    print(f"schedule: {args.prompts} prompts x {args.frames_per_prompt} frames x {c.tokens_per_frame} tokens, batch {args.batch}")
    print(f"  fed again {seconds['fed again']:8.3f} s  ({sum(frames)} frames made, {fed} fed again)")
    print(f"  carried   {seconds['carried']:8.3f} s  ({sum(frames)} frames made, none fed again)")
    print(f"  carried/fed-again speed {ratio:.2f}x; the first prompt's tokens agree: {'yes' if same_first else 'NO'}")
    return {"seconds": seconds, "ratio": ratio, "frames_fed_again": fed, "first_prompt_same": same_first}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="ar-shapes", choices=sorted(TOKEN_AR_PRESETS))
    p.add_argument("--dim", type=int, default=0, help="override the width (heads of 32, one key/value head): smoke runs")
    p.add_argument("--frames", type=int, default=16, help="clip length of the speed measurement")
    p.add_argument("--lengths", default="16,32,64", help="clip lengths of the memory measurement, comma-separated")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--what", default="speed,memory", help="measurements, comma-separated: speed, memory, schedule")
    p.add_argument("--prompts", type=int, default=4, help="schedule: prompts in the schedule")
    p.add_argument("--frames-per-prompt", type=int, default=8, help="schedule: frames each prompt makes")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--progress", action="store_true", help="show the generation progress bars")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    args.lengths = [int(n) for n in args.lengths.split(",")]
    torch.set_num_threads(args.threads)
    model, text = _setup(args)
    results = {"preset": args.preset, "parameters": model.num_parameters(), "layers": model.config.layers}
    for what in args.what.split(","):
        bench = {"speed": bench_speed, "memory": bench_memory, "schedule": bench_schedule}.get(what)
        if bench is None:
            p.error(f"unknown measurement {what!r}; choose from speed, memory, schedule")
        results[what] = bench(args, model, text)
    print(f"({args.preset}{f' at dim {args.dim}' if args.dim else ''}: {results['parameters'] / 1e6:.2f} M parameters, "
          f"layers {model.config.layers}; {args.dtype} on {args.device}, {args.threads} threads, torch {torch.__version__})")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
