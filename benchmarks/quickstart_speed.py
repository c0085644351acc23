"""The README Quickstart's generate command, timed end to end: process start to finished mp4.

Runs ``kinema generate "a red circle moving left"`` (the shipped default model, its default
33 frames of 64x64 and 20 steps) ``--runs`` times in fresh processes and prints each run's wall
time, the median, and the median of each stage that ``--timings`` reports. "startup" is the rest
of the wall time: starting Python and importing torch, transformers and kinema.

    python benchmarks/quickstart_speed.py              # 5 runs
    python benchmarks/quickstart_speed.py --runs 9 --json quickstart.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--prompt", default="a red circle moving left")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("extra", nargs="*", help="more arguments for kinema generate (after --)")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.mp4"
        cmd = [sys.executable, "-m", "kinema.cli", "generate", args.prompt, "-o", str(out), "--timings", "-q", *args.extra]
        for i in range(args.runs):
            t0 = time.perf_counter()
            res = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
            wall = time.perf_counter() - t0
            if res.returncode != 0 or not out.is_file():
                sys.exit(f"run {i} failed ({res.returncode}): {res.stderr.strip()[-500:]}")
            report = json.loads(res.stderr.strip().splitlines()[-1])
            stages = report["timings_s"]
            row = {"wall": wall, "startup": wall - sum(stages.values()), **stages, "threads": report["threads"]}
            rows.append(row)
            print(f"run {i}: {wall:.2f} s  " + "  ".join(f"{k} {v:.2f}" for k, v in row.items() if k not in ("wall", "threads")) + f"  threads {row['threads']}")
            out.unlink()
    keys = [k for k in rows[0] if k != "threads"]
    median = {k: statistics.median(r[k] for r in rows) for k in keys}
    print(f"median over {args.runs} runs: {median['wall']:.2f} s wall")
    for k in keys[1:]:
        print(f"  {k:8} {median[k]:6.2f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": rows, "median": median}, indent=2) + "\n")


if __name__ == "__main__":
    main()
