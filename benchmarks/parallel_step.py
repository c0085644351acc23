"""A transformer step over 1, 2 and 4 processes: time and per-rank memory, against one process
measured in the same run.

A Wan-architecture transformer with seeded random weights (``--dim``, ``--layers``, ``--heads``;
defaults: Wan 2.1 1.3B's width and heads at 2 layers) denoises one latent video
(``--frames x --height x --width`` pixels through the 4x8x8 VAE) with the plan
:func:`kinema.parallel.parallelize` applies: sequence parallel over every process (Ulysses where the
heads divide, ring for the rest), or ``--guidance`` (two passes, the conditional and the
unconditional, on two halves of the processes). A "step" is what one denoising step costs: both
guidance passes. Per rank: the median wall time of ``--repeats`` steps after a warm-up, and the
peak memory of a step above what the weights and inputs hold (the kernel's ``VmHWM`` after
``clear_refs`` on the CPU; CUDA's max allocated on a GPU). Every rank checks that its output is
the one-process output (max abs difference printed).

On the CPU (gloo) the script starts its own processes, one thread each by default, so that N
processes use N cores (``--threads`` per process):

    python benchmarks/parallel_step.py --procs 1 2 4 --frames 9 --height 128 --width 128

On GPUs, under torchrun (nccl; one process per GPU; the one-process reference is the same script
with --nproc-per-node 1):

    torchrun --nproc-per-node 1 benchmarks/parallel_step.py --device cuda --frames 81 --height 480 --width 832 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

VAE_STRIDE = (4, 8, 8)


def build(args, device: torch.device):
    from kinema.models.wan import WanTransformer, WanTransformerConfig

    torch.manual_seed(0)
    config = WanTransformerConfig(dim=args.dim, ffn_dim=args.ffn_dim, num_heads=args.heads, num_layers=args.layers, text_dim=args.text_dim, text_len=args.text_len)
    dtype = getattr(torch, args.dtype)
    with torch.device(device):  # weights made where they run (a 14B model in float32 would not fit this CPU's memory)
        model = WanTransformer(config).eval().to(dtype=dtype)
    lt, lh, lw = (args.frames - 1) // VAE_STRIDE[0] + 1, args.height // VAE_STRIDE[1], args.width // VAE_STRIDE[2]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, config.in_dim, lt, lh, lw, generator=g).to(device, dtype)  # (1, 16, F', H', W')
    t = torch.tensor([500.0], device=device)
    texts = [torch.randn(1, args.text_len, args.text_dim, generator=g).to(device, dtype) for _ in range(2)]  # cond, uncond
    tokens = lt * (lh // 2) * (lw // 2)
    return model, x, t, texts, tokens


def peak_reset(device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status("VmRSS")


def peak_read(device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    return _status("VmHWM")


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


class _Holder:
    """What :func:`parallelize` takes for guidance parallelism: a pipeline's ``transformer`` and
    ``denoise`` (the benchmark runs the two passes itself)."""

    parallel = None

    def __init__(self, model) -> None:
        self.transformer = model

    def denoise(self, *args, **kwargs):  # pragma: no cover - never called here
        raise NotImplementedError


def measure(rank: int, world: int, args_dict: dict) -> dict:
    """One rank's measurement (inside an initialised group when world > 1)."""
    import torch.distributed as dist

    from kinema.parallel import ParallelPlan, parallelize

    args = argparse.Namespace(**args_dict)
    device = torch.device(args.device, rank % max(1, torch.cuda.device_count())) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    model, x, t, texts, tokens = build(args, device)
    guidance = 2 if args.guidance and world % 2 == 0 else 1
    sequence = world // guidance
    plan = ParallelPlan.for_world(world, guidance=guidance, ulysses=min(args.ulysses, sequence) if args.ulysses else None)
    # Guidance parallelism splits a pipeline's denoising loop: a stand-in holding the model takes its place.
    handle = parallelize(model if guidance == 1 else _Holder(model), plan)
    contexts = [model.prepare_context(c) for c in texts]
    mine = handle.guidance_index if guidance == 2 else None

    def step() -> torch.Tensor:
        with torch.no_grad():
            if mine is None:  # both passes here
                return torch.stack([model(x, t, ctx) for ctx in contexts])
            return torch.stack(handle.exchange_guidance(model(x, t, contexts[mine])))  # (cond, uncond), as the loop gets them

    step()  # warm-up
    base = peak_reset(device)
    times = []
    for _ in range(args.repeats):
        if world > 1:
            dist.barrier()
        t0 = time.perf_counter()
        out = step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    peak = peak_read(device) - base
    return {"rank": rank, "time": statistics.median(times), "peak": peak, "tokens": tokens, "out": out.float().cpu(),
            "plan": f"sequence {plan.sequence} x guidance {plan.guidance}" + (f" (ulysses {plan.degrees(args.heads)[0]}, ring {plan.degrees(args.heads)[1]})" if plan.sequence > 1 else "")}


def _worker(rank: int, world: int, args_dict: dict) -> dict:  # run_workers' entry point
    return measure(rank, world, args_dict)


def run_cpu(args) -> list[dict]:
    from tests.distributed import run_workers

    rows = []
    for n in args.procs:
        if n == 1:
            res = [measure(0, 1, vars(args))]
        else:
            res = run_workers(_worker, n, vars(args), timeout_s=3600)
        rows.append(res)
    return rows


def report(rows: list[list[dict]], args) -> list[dict]:
    ref = rows[0][0]
    table = []
    print(f"Wan transformer dim {args.dim}, {args.heads} heads, {args.layers} layers, {args.dtype}; {ref['tokens']:,} tokens "
          f"({args.frames}x{args.height}x{args.width}); a step = conditional + unconditional pass; {args.device}"
          + (f", {args.threads} thread(s) per process" if args.device == "cpu" else ""))
    print(f"{'processes':>9}  {'plan':<38} {'step s':>8} {'speed-up':>8} {'peak MiB/rank':>14} {'max |diff|':>11}")
    for res in rows:
        n = len(res)
        slowest = max(r["time"] for r in res)
        peak = max(r["peak"] for r in res) / 2**20
        diff = max(float((r["out"] - ref["out"]).abs().max()) for r in res)
        row = {"processes": n, "plan": res[0]["plan"], "step_s": slowest, "speedup": ref["time"] / slowest, "peak_mib": peak, "max_abs_diff": diff}
        table.append(row)
        print(f"{n:>9}  {row['plan']:<38} {slowest:>8.3f} {row['speedup']:>7.2f}x {peak:>14.0f} {diff:>11.2e}")
    return table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2, 4], help="CPU: the process counts to measure (the first is the reference)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--dim", type=int, default=1536)
    p.add_argument("--ffn-dim", type=int, default=8960)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--text-dim", type=int, default=4096)
    p.add_argument("--text-len", type=int, default=64)
    p.add_argument("--frames", type=int, default=9)
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--guidance", action="store_true", help="guidance parallel: the two passes on two halves of the processes (even counts)")
    p.add_argument("--ulysses", type=int, default=None, help="the Ulysses degree (1: ring attention alone); default: the most the heads allow")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="CPU threads per process")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    if "WORLD_SIZE" in os.environ:  # under torchrun: this process is one rank; rank 0 reports
        import torch.distributed as dist

        from kinema.parallel import groups

        device = groups.local_device(args.device)
        world = groups.init_from_env(device)
        res = measure(world.rank, world.size, vars(args))
        gathered = [None] * world.size if world.size > 1 else None
        if world.size > 1:
            dist.all_gather_object(gathered, res)
        else:
            gathered = [res]
        if world.main:
            r = gathered[0]
            print(json.dumps({"processes": world.size, "plan": r["plan"], "tokens": r["tokens"], "step_s": max(g["time"] for g in gathered),
                              "peak_mib": max(g["peak"] for g in gathered) / 2**20, "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu"}))
        groups.shutdown()
        return 0
    rows = run_cpu(args)
    table = report(rows, args)
    if args.json:
        args.json.write_text(json.dumps(table, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
