"""Step caching on a shapes-world model: transformer calls saved against the judge, and wall time.

For each threshold (0 first: the uncached run, the reference measured in the same run), generate
the evaluation prompts with ``cache_threshold`` set, count the model calls of the sampling loops
and those that ran only the first block (``VideoOutput.cache``), judge the clips, and print per
threshold: the share of calls skipped, the ratio of full transformer calls saved (calls / calls
run in full), the judge's overall accuracy on seen and held-out combinations, and the wall time
against the uncached run.

    python benchmarks/step_cache.py                                    # shipped shapes, seen, 3 clips a prompt
    python benchmarks/step_cache.py --thresholds 0,0.1,0.2 --split all --per-prompt 1 --limit 24
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kinema  # noqa: E402
from kinema.evaluation.cli_eval import generate_set, run_eval  # noqa: E402


class _Counting:
    """The pipeline, adding up each call's step-cache counts."""

    def __init__(self, pipe) -> None:
        self.pipe, self.calls, self.skipped = pipe, 0, 0

    def __getattr__(self, name):
        return getattr(self.pipe, name)

    def __call__(self, *args, **kwargs):
        out = self.pipe(*args, progress_bar=False, **kwargs)
        if out.cache is not None:
            self.calls += out.cache["calls"]
            self.skipped += out.cache["skipped"]
        return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="shapes", help="a shipped shapes model or a model directory (a diffusion family)")
    p.add_argument("--thresholds", default="0,0.05,0.1,0.15,0.2", help="comma-separated; 0 (no skips) is always measured first")
    p.add_argument("--split", default="seen", choices=("all", "seen", "held_out"))
    p.add_argument("--per-prompt", type=int, default=3)
    p.add_argument("--limit", type=int, default=None, help="first N prompts only")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--random-wan", default=None, metavar="PRESET",
                   help="instead: time full and skipped transformer calls on a random model of this Wan preset (e.g. wan2.1-t2v-1.3b)")  # fmt: skip
    p.add_argument("--frames", type=int, default=17, help="--random-wan: frames of the clip (4k+1)")
    p.add_argument("--size", type=int, default=128, help="--random-wan: its height and width")
    p.add_argument("--skip-shares", default="0.5,0.56,0.69", help="--random-wan: shares of skipped calls to turn into speed-ups")
    args = p.parse_args(argv)
    if args.random_wan:
        return random_wan(args)
    thresholds = [0.0] + [float(t) for t in args.thresholds.split(",") if float(t) != 0.0]

    pipe = kinema.load_pipeline(args.model, device="cpu")
    d = pipe.defaults
    rows = []
    for threshold in thresholds:
        counting = _Counting(pipe)
        options = {"cache_threshold": threshold}
        if args.steps is not None:
            options["num_inference_steps"] = args.steps
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            generate_set(counting, tmp, args.split, d.height, d.num_frames, args.seed, options=options, limit=args.limit,
                         per_prompt=args.per_prompt)  # fmt: skip
            seconds = time.perf_counter() - t0
            report = run_eval(tmp, print_table=False)
        full = counting.calls - counting.skipped
        rows.append((threshold, counting.calls, counting.skipped, counting.calls / max(1, full), report, seconds))

    base = rows[0][5]
    print(f"{'threshold':>9} {'calls':>6} {'skipped':>8} {'calls/full':>10} {'seen':>6} {'held-out':>8} {'seconds':>8} {'speed-up':>8}")
    for threshold, calls, skipped, ratio, report, seconds in rows:
        seen = report.get("seen", {}).get("overall")
        held = report.get("held_out", {}).get("overall")
        fmt = lambda v: f"{100 * v:5.1f}%" if v is not None else "     -"  # noqa: E731
        print(f"{threshold:9.3f} {calls:6d} {skipped:8d} {ratio:10.2f} {fmt(seen):>6} {fmt(held):>8} {seconds:8.1f} {base / seconds:8.2f}")
    print(f"(model {args.model}, split {args.split}, {args.per_prompt} clips a prompt; calls/full: model calls per call run in full)")


def random_wan(args) -> None:
    """Seconds per transformer call run in full and per call cut to the first block, on a random
    model of a Wan preset (float32, the shapes model's VAE only for its strides; precomputed text
    states, latents out), and what a share of skipped calls makes of the denoising time. The
    skips come from threshold 1 (every step after a branch's first is skipped), so the split of
    time between full and skipped calls is measured, not the threshold's quality."""
    import torch

    from kinema.models.wan import WAN_PRESETS, WanTransformer

    steps = args.steps or 10
    pipe = kinema.load_pipeline("shapes", device="cpu")
    config = WAN_PRESETS[args.random_wan]()
    torch.manual_seed(0)
    model = WanTransformer(config)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.02)
    pipe.transformer = model.eval().requires_grad_(False)
    pipe.__dict__.pop("rules", None)
    g = torch.Generator().manual_seed(1)
    embeds = torch.randn((1, 64, config.text_dim), generator=g)
    call = dict(prompt_embeds=embeds, negative_prompt_embeds=torch.zeros_like(embeds), height=args.size, width=args.size,
                num_frames=args.frames, num_inference_steps=steps, guidance_scale=5.0, seed=0, output_type="latent", progress_bar=False)  # fmt: skip
    tokens = ((args.frames - 1) // 4 + 1) * (args.size // 16) ** 2
    times = {}
    for threshold in (0.0, 1.0):
        t0 = time.perf_counter()
        out = pipe(cache_threshold=threshold, **call)
        times[threshold] = (time.perf_counter() - t0, out.cache["calls"], out.cache["skipped"])
    (t_plain, calls, _), (t_cached, _, skipped) = times[0.0], times[1.0]
    full = t_plain / calls
    cut = (t_cached - (calls - skipped) * full) / skipped
    print(f"random {args.random_wan} ({config.num_layers} blocks of {config.dim}), {tokens} tokens ({args.frames} frames {args.size}x{args.size}), "
          f"{steps} steps with guidance: {calls} calls")  # fmt: skip
    print(f"full call {full:.2f} s; a skipped call (first block and the head) {cut:.2f} s ({cut / full:.3f} of a full one)")
    for share in (float(v) for v in args.skip_shares.split(",")):
        print(f"skipping {100 * share:.0f}% of the calls: denoising {1 / ((1 - share) + share * cut / full):.2f}x faster")


if __name__ == "__main__":
    main()
