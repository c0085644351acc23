"""A model larger than the machine's memory, run within a budget: kinema's memory planner on a
random transformer of Wan 2.1 14B's shape (40 layers of 5120, bf16 safetensors in the original
Wan layout, about 28 GB on disk), and on a machine-size model against all-resident.

Every run is a fresh child process, so the peak resident memory it prints (Linux ``VmHWM``: the
process's peak resident set, the interpreter and torch included) is that run's own.

    python benchmarks/memory_budget.py step --layers 40 --budget 8GiB        # the 14B shape under 8 GiB
    python benchmarks/memory_budget.py parity --layers 2 --budget 3GiB       # streamed == all resident, at 14B width
    python benchmarks/memory_budget.py strategies --preset wan2.1-t2v-1.3b   # each strategy's peak and time

``step``: denoising steps (the text conditioning, then the transformer) in float32 from the bf16
file, the plan and the peak printed. ``parity``: the same step all-resident and under the budget,
and whether the velocities are equal bit for bit. ``strategies``: all-resident, ``model`` and
``block`` (one slot, then the most a budget allows) with their wall times, the all-resident run
measured first in the same invocation. The checkpoint is written once under ``--dir`` (kept for
the next run; each block holds the same random values, which changes nothing about memory or time).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


# ------------------------------------------------------------------------------------------------
# The checkpoint
# ------------------------------------------------------------------------------------------------
def write_checkpoint(directory: Path, preset: str, layers: int) -> Path:
    """A random transformer of ``preset``'s shape with ``layers`` blocks as bf16 safetensors in the
    original Wan layout (config.json, the core and one shard per block, and an index), written once."""
    import dataclasses

    import torch
    from safetensors.torch import save_file

    from kinema.checkpoints.wan import WEIGHTS_STEM, to_original
    from kinema.models.wan import WAN_PRESETS, WanTransformer

    config = dataclasses.replace(WAN_PRESETS[preset](), num_layers=layers)
    directory = directory / f"{preset}-{layers}"
    index = directory / f"{WEIGHTS_STEM}.safetensors.index.json"
    if index.is_file():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):
        model = WanTransformer(config)
    gen = torch.Generator().manual_seed(0)

    def random_like(t: torch.Tensor) -> torch.Tensor:
        if t.dim() == 1:  # biases and norm scales
            return (1 + 0.02 * torch.randn(t.shape, generator=gen)).to(torch.bfloat16) if t.shape[0] else torch.empty(0)
        return (torch.randn(t.shape, generator=gen) * (1 / t[0].numel()) ** 0.5).to(torch.bfloat16)

    names = dict(model.state_dict())
    block0 = {k[len("blocks.0.") :]: random_like(v) for k, v in names.items() if k.startswith("blocks.0.")}
    core = {k: random_like(v) for k, v in names.items() if not k.startswith("blocks.")}
    weight_map = {}
    shards = [("core", core)] + [(f"blocks-{i:03d}", None) for i in range(layers)]
    for n, (label, tensors) in enumerate(shards):
        if tensors is None:
            first = int(label.split("-")[1])
            tensors = {f"blocks.{first}.{k}": v for k, v in block0.items()}
        name = f"{WEIGHTS_STEM}-{n + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(tensors, str(directory / name))
        weight_map.update({k: name for k in tensors})
        print(f"  wrote {name} ({sum(v.numel() * 2 for v in tensors.values()) / 2**30:.2f} GiB)", file=sys.stderr)
    (directory / "config.json").write_text(json.dumps(to_original(config)))
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return directory


# ------------------------------------------------------------------------------------------------
# One step, in a child process
# ------------------------------------------------------------------------------------------------
class Holder:
    """A pipeline's transformer alone, for the planner (its components are what it finds)."""

    def __init__(self, transformer):
        self.transformer = transformer


def child(spec: dict) -> dict:
    import torch

    from kinema.checkpoints.wan import load_wan_transformer
    from kinema.pipelines.memory import (
        apply_plan,
        current_rss,
        measure,
        peak_bytes,
        plan_memory,
        reset_peak,
    )
    from kinema.pipelines.wan import WanPipeline
    from kinema.runtime import cap_heap_growth

    cap_heap_growth()
    torch.set_num_threads(spec["threads"])
    device = torch.device("cpu")
    reset_peak(device)
    baseline = current_rss()
    t0 = time.perf_counter()
    model = load_wan_transformer(spec["dir"], dtype=None if spec["offload"] != "resident" else torch.float32)
    holder = Holder(model)
    c = model.config
    frames, size = spec["frames"], spec["size"]
    lf, ls = (frames - 1) // 4 + 1, size // 8
    tokens = lf * (ls // c.patch_size[1]) * (ls // c.patch_size[2])
    plan = None
    if spec["offload"] != "resident":
        rules = WanPipeline.model_rules(c, _vae_config(), defaults=None, sampler=None)
        acts = {"denoise": rules.memory.stage_bytes(size, size, frames, 1, False)["denoise"]}
        sizes = {"transformer": measure(holder, torch.float32, device)["transformer"]}
        offload = None if spec["offload"] == "auto" else spec["offload"]
        plan = plan_memory(sizes, acts, spec["budget"], offload, "cpu", baseline=baseline)
        apply_plan(holder, plan, torch.float32, device)
    load_s = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(1)
    x = torch.randn((1, c.in_dim, lf, ls, ls), generator=gen)
    context = torch.randn((1, 64, c.text_dim), generator=gen)
    times = []
    with torch.no_grad():
        for _ in range(spec["steps"]):
            t1 = time.perf_counter()
            velocity = model(x, torch.tensor([500.0]), context)
            times.append(time.perf_counter() - t1)
    if spec.get("save"):
        torch.save(velocity, spec["save"])
    return {
        "offload": spec["offload"], "plan": plan.describe() if plan else "all resident (loaded as float32)",
        "estimate_gib": round(plan.peak / 2**30, 2) if plan else None, "peak_gib": round(peak_bytes(device) / 2**30, 2),
        "baseline_gib": round(baseline / 2**30, 2), "load_s": round(load_s, 1), "first_step_s": round(times[0], 1), "step_s": round(times[-1], 1), "tokens": tokens,
        "finite": bool(torch.isfinite(velocity).all()), "loads": getattr(getattr(holder, "offloader", None), "loads", None),
    }  # fmt: skip


def _vae_config():
    from kinema.models.vae.wan_vae import WanVAEConfig

    return WanVAEConfig()


def run_child(spec: dict) -> dict:
    done = subprocess.run([sys.executable, __file__, "_child", json.dumps(spec)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"child failed ({spec['offload']}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def show(r: dict) -> None:
    budget = f"{r['plan']}"
    print(f"{r['offload']:>9}: peak {r['peak_gib']:6.2f} GiB (estimate {r['estimate_gib']}, process before loading {r['baseline_gib']} GiB), "
          f"load {r['load_s']:6.1f} s, first step {r['first_step_s']:6.1f} s, last step {r['step_s']:6.1f} s, weight loads {r['loads']}, "
          f"finite {r['finite']}\n           {budget}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("step", "parity", "strategies", "_child"))
    parser.add_argument("spec", nargs="?")
    parser.add_argument("--preset", default="wan2.1-t2v-14b")
    parser.add_argument("--layers", type=int, default=40)
    parser.add_argument("--budget", default="8GiB")
    parser.add_argument("--frames", type=int, default=9, help="pixel frames of the clip the step is for (4k+1)")
    parser.add_argument("--size", type=int, default=64, help="its height and width in pixels (multiple of 16)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--steps", type=int, default=2, help="steps run in a row (the first also brings weights in)")
    parser.add_argument("--dir", default="/tmp/kinema-memory-bench", help="where the random checkpoint is written (kept)")
    args = parser.parse_args()
    if args.what == "_child":
        print(json.dumps(child(json.loads(args.spec))))
        return
    from kinema.pipelines.memory import parse_bytes

    directory = write_checkpoint(Path(args.dir), args.preset, args.layers)
    base = {"dir": str(directory), "frames": args.frames, "size": args.size, "threads": args.threads, "budget": parse_bytes(args.budget),
            "steps": args.steps}  # fmt: skip
    print(f"{args.preset} shape, {args.layers} layers, bf16 on disk in {directory}; a step for {args.frames} frames of {args.size}x{args.size}, "
          f"float32 compute, {args.threads} threads, budget {args.budget}")  # fmt: skip
    if args.what == "step":
        show(run_child({**base, "offload": "auto"}))
    elif args.what == "parity":
        out = Path(args.dir)
        resident = run_child({**base, "offload": "resident", "save": str(out / "v-resident.pt")})
        streamed = run_child({**base, "offload": "auto", "save": str(out / "v-streamed.pt")})
        show(resident)
        show(streamed)
        import torch

        a, b = torch.load(out / "v-resident.pt", weights_only=True), torch.load(out / "v-streamed.pt", weights_only=True)
        print(f"velocity equal bit for bit: {torch.equal(a, b)} (max difference {float((a - b).abs().max()):.3g}); "
              f"peak ratio streamed/resident {streamed['peak_gib'] / resident['peak_gib']:.2f}")  # fmt: skip
    else:
        rows = [run_child({**base, "offload": "resident"}), run_child({**base, "offload": "model", "budget": None}),
                run_child({**base, "offload": "block", "budget": None}), run_child({**base, "offload": "auto"})]  # fmt: skip
        for r in rows:
            show(r)
        ref = rows[0]
        for r in rows[1:]:
            print(f"{r['offload']:>9}: peak {r['peak_gib'] / ref['peak_gib']:.2f}x, step time {r['step_s'] / ref['step_s']:.2f}x of all resident "
                  f"(the last of {args.steps} steps; first step {r['first_step_s'] / ref['first_step_s']:.2f}x)")


if __name__ == "__main__":
    main()
