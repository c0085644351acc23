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
    args = p.parse_args(argv)
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


if __name__ == "__main__":
    main()
