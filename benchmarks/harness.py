"""The measuring harness shared by the kinema-vs-diffusers benchmarks (``bench_wan.py``, ``bench_ltx.py``).

A family script describes its measurements as a :class:`Bench`: for each measurement name
("transformer step", "VAE decode"...) a builder that makes, for one implementation and dtype, a
zero-argument callable running that measurement on seeded random weights; and which diffusers
variants ("references") kinema is compared with. :func:`run` parses the command line and either

- as the parent, runs every (measurement, dtype, implementation) in a fresh child process of the
  family script (so each peak is that run's own), prints one line per (measurement, dtype,
  reference) with kinema/diffusers ratios, and writes ``--json``; or
- as a child (``--impl``, set by the parent), measures one implementation and prints one JSON line.

Time: the median wall time of ``--repeats`` calls after a first call (``--repeats 0``: the first
call's time). Memory: the peak resident memory of the first call above what the weights and
inputs already held (the kernel's ``VmHWM``, reset through ``/proc/self/clear_refs``; Linux).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

ROOT = Path(__file__).resolve().parents[1]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
KINEMA = "kinema"

# builder(args, impl, dtype) -> the callable to time. It returns a tensor, whose mean absolute value
# is printed as a checksum (of ``fn.for_checksum(out)`` where the callable has that attribute: e.g. a
# clamp that one side does in the call and the other after it, outside the timing).
Builder = Callable[[argparse.Namespace, str, torch.dtype], Callable[[], torch.Tensor]]


# ------------------------------------------------------------------------------------------------
# Memory: the kernel's high-water mark of resident memory, reset before each timed call
# ------------------------------------------------------------------------------------------------
def rss_kib(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field_name} not in /proc/self/status")


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # "5" resets VmHWM to the current RSS (Linux >= 4.0)
        f.write("5")


def has_native_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX); PyTorch is slow at bf16 without."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


# ------------------------------------------------------------------------------------------------
# A family's benchmark
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bench:
    """What a family script measures; see the module docstring."""

    script: str  # the family script's path: child processes run it
    builders: Mapping[str, Builder]  # measurement name -> builder
    frames: int  # default --frames
    size: str  # default --size (WIDTHxHEIGHT)
    add_arguments: Callable[[argparse.ArgumentParser], None]  # the family's options (forwarded to children)
    describe: Callable[[argparse.Namespace], str]  # the models measured, for the summary line
    # measurement name -> the diffusers variants kinema is compared with, from the parsed options
    references: Callable[[argparse.Namespace, str], list[str]] = lambda args, what: ["diffusers"]
    description: str = ""  # --help text (the script's docstring)
    vae_bf16_frames: int = 1  # default clip of the bf16 VAE rows on CPUs without bf16 instructions
    vae_bf16_size: str = "32x32"
    whats: tuple[str, ...] = field(default=())  # default --what (all builders if empty)


def _parser(bench: Bench) -> tuple[argparse.ArgumentParser, set[str]]:
    p = argparse.ArgumentParser(description=bench.description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=bench.frames, help="video frames")
    p.add_argument("--size", default=bench.size, help="WIDTHxHEIGHT in pixels")
    p.add_argument("--vae-bf16-frames", type=int, default=bench.vae_bf16_frames,
                   help="frames for the bf16 VAE row on CPUs without bf16")  # fmt: skip
    p.add_argument("--vae-bf16-size", default=bench.vae_bf16_size, help="size for the bf16 VAE row on CPUs without bf16")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--what", default=",".join(bench.whats or bench.builders), help="measurements, comma-separated")
    p.add_argument("--repeats", type=int, default=3, help="timed calls after the first (0: time the first)")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--impl", help=argparse.SUPPRESS)  # set in child processes
    # options the parent sets per child itself, or that only the parent reads
    own = {"frames", "size", "vae_bf16_frames", "vae_bf16_size", "dtypes", "what", "json", "impl", "help"}
    bench.add_arguments(p)
    return p, own


def _forwarded(parser: argparse.ArgumentParser, own: set[str], args: argparse.Namespace) -> list[str]:
    """The command-line options a child needs to rebuild the parent's setup (all but ``own``)."""
    out: list[str] = []
    for action in parser._actions:
        if action.dest in own or not action.option_strings:
            continue
        value = getattr(args, action.dest)
        if isinstance(action, argparse._StoreTrueAction):
            out += [action.option_strings[0]] if value else []
        elif value is not None:
            out += [action.option_strings[0], str(value)]
    return out


def _child(bench: Bench, args: argparse.Namespace) -> None:
    """Measure one (what, impl, dtype) in this process and print one JSON line."""
    torch.set_num_threads(args.threads)
    fn = bench.builders[args.what](args, args.impl, DTYPES[args.dtype])
    with torch.inference_mode():
        base = rss_kib("VmRSS")  # weights and inputs
        reset_peak()
        t0 = time.perf_counter()
        out = fn()  # first call: its peak is the memory the call needs; it also warms up
        first = time.perf_counter() - t0
        peak = rss_kib("VmHWM") - base
        times = [] if args.repeats else [first]  # --repeats 0: time the first call (long runs)
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
    out = getattr(fn, "for_checksum", lambda o: o)(out)
    print(json.dumps({
        "what": args.what, "impl": args.impl, "dtype": args.dtype, "seconds": statistics.median(times),
        "peak_mib": peak / 1024, "weights_mib": base / 1024, "checksum": float(out.float().abs().mean()),
    }))  # fmt: skip


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


def run(bench: Bench, argv: list[str] | None = None) -> list[dict[str, Any]] | None:
    """The family script's ``main``: parse ``argv``, then measure (parent) or measure one (child)."""
    parser, own = _parser(bench)
    args = parser.parse_args(argv)
    args.width, args.height = (int(v) for v in args.size.lower().split("x"))
    if args.impl:
        args.dtype = args.dtypes
        _child(bench, args)
        return None

    forwarded = _forwarded(parser, own, args)
    rows: list[dict[str, Any]] = []
    for what in args.what.split(","):
        if what not in bench.builders:
            sys.exit(f"unknown measurement {what!r}; choose from {', '.join(bench.builders)}")
        for dtype in args.dtypes.split(","):
            frames, size = args.frames, args.size
            if what.startswith("VAE") and dtype == "bfloat16" and not has_native_bf16():
                # PyTorch's bf16 conv3d without native CPU kernels is ~300x slower than fp32: a
                # smaller clip keeps the diffusers side of this row within minutes
                frames, size = args.vae_bf16_frames, args.vae_bf16_size
            references = bench.references(args, what)
            results = {}
            for impl in (*references, KINEMA):
                cmd = [sys.executable, bench.script, "--impl", impl, "--what", what, "--dtypes", dtype,
                       "--frames", str(frames), "--size", size, *forwarded]  # fmt: skip
                res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
                if res.returncode:
                    sys.exit(f"{impl} {what} {dtype} failed:\n{res.stderr[-3000:]}")
                results[impl] = json.loads(res.stdout.strip().splitlines()[-1])
            k = results[KINEMA]
            for ref in references:
                d = results[ref]
                rows.append({**{f"{i}_{m}": r[m] for i, r in (("diffusers", d), (KINEMA, k)) for m in ("seconds", "peak_mib")},
                             "what": what, "dtype": dtype, "frames": frames, "size": size, "reference": ref,
                             "time_ratio": _ratio(k["seconds"], d["seconds"]),
                             "memory_ratio": _ratio(k["peak_mib"], d["peak_mib"]),
                             "checksum_diff": abs(k["checksum"] - d["checksum"])})  # fmt: skip
                r = rows[-1]
                print(
                    f"{what:16s} {dtype:8s} {frames:3d}f {size:>8s} | {ref} {d['seconds']:8.3f} s {d['peak_mib']:7.1f} MiB | "
                    f"kinema {k['seconds']:8.3f} s {k['peak_mib']:7.1f} MiB | kinema/{ref} time {r['time_ratio']:.2f} "
                    f"memory {r['memory_ratio']:.2f}",
                    flush=True,
                )
    print(f"(torch {torch.__version__}, {args.threads} threads, {bench.describe(args)}; "
          "memory: peak RSS of the call above weights and inputs)")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return rows
