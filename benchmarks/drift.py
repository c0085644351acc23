"""Drift of long videos: how far a model can go past its window before the video stops following.

Each clip is a video of 2x, 4x or 8x the model's clip (33 frames for the shipped models: 65, 129
and 257 frames), made in one call (``pipe.long_video``) with a prompt schedule of one prompt per
clip-length *judged window* (the first 33 frames, then 32 each). Two schedules:

- ``same``: one prompt for the whole video (at 2x only: at the shipped models' speeds an object
  crosses 25-50% of the canvas a clip, so a longer video in one direction would leave the canvas,
  which the shapes world never shows);
- ``sequence``: the direction turns back every window ("moving left", then "moving right", then
  "moving left" ...; up and down likewise), the canvas's way of allowing any length.

Per clip, the shapes-world judge reads every judged window (its frames and the frame before it,
33 frames, the length the judge reads in ``kinema eval``) against that window's prompt:

- **windows followed**: the share of windows whose colour, shape and motion all match;
- **identity kept**: the share of clips whose windows all show the colour and shape of the first;
- **seam**: the mean absolute frame-to-frame change (0-255) at the joins between the model's own
  generation windows (where a new window's first frame follows the frames it was given) divided by
  the mean change between the other consecutive frames. 1 is a seam no different from motion;
- **size**: the median over clips of the object's area in the last window over its area in the
  first (the judge's mask, median over each window's frames): 1 is a size kept, above 1 an object
  that grows as the windows go on (which rounds a square's corners and pushes it into the edge).

``--reference`` runs the same on ground truth (the object goes on from where it is with the next
motion, at its first speed as far as the canvas allows, as :func:`kinema.data.shapes.continue_spec`
does): the judge's own ceiling for these windows.

    python benchmarks/drift.py --model shapes --clips 16 --threads 2
    python benchmarks/drift.py --model shapes-ar --clips 8 --lengths 2 4 --json drift-ar.json
    python benchmarks/drift.py --reference --clips 16
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}


def schedule(colour: str, shape: str, motion: str, windows: int, kind: str, first: int, later: int) -> list[tuple[str, str, str, int]]:
    """(colour, shape, motion, frames) per judged window."""
    out = []
    for w in range(windows):
        m = motion if kind == "same" or w % 2 == 0 else OPPOSITE[motion]
        out.append((colour, shape, m, first if w == 0 else later))
    return out


def joins(plan) -> list[int]:
    """Frame indices j where the model's window starts (frame j is new, j - 1 was given)."""
    out, at = [], plan.first
    for _, n in plan.steps:
        out.append(at)
        at += n
    return out


def judge_windows(frames: np.ndarray, windows: list[tuple[str, str, str, int]]) -> list:
    from kinema.evaluation.judge import judge_clip

    results, start = [], 0
    for i, (_, _, _, n) in enumerate(windows):
        lo = start - 1 if i else 0  # a later window with the frame before it: 33 frames
        results.append(judge_clip(frames[lo : start + n]))
        start += n
    return results


def seam_ratio(frames: np.ndarray, seams: list[int]) -> tuple[float, float]:
    """Mean |frame j - frame j-1| at the seams and elsewhere (0-255 scale)."""
    change = np.abs(np.diff(frames.astype(np.float32), axis=0)).mean(axis=(1, 2, 3))  # (F-1,): change into frame j+1
    at = np.zeros(len(change), dtype=bool)
    for j in seams:
        at[j - 1] = True
    return float(change[at].mean()) if at.any() else float("nan"), float(change[~at].mean())


def run(args) -> dict:
    import torch

    from kinema.data.shapes import ALL_COMBOS, DEFAULT_FRAMES, ClipSpec, canonical_caption, render_sequence, room, sample_spec
    from kinema.request import GenerationRequest

    torch.set_num_threads(args.threads)
    pipe = None
    if not args.reference:
        import kinema

        pipe = kinema.load_pipeline(args.model)
        first = pipe.defaults.num_frames
    else:
        first = DEFAULT_FRAMES
    later = first - 1
    rows = []
    for length in args.lengths:
        for kind in ("same", "sequence"):
            if kind == "same" and length > 2:
                continue
            followed, kept, seams_in, seams_out, sizes, n_windows, t0 = 0, 0, [], [], [], 0, time.perf_counter()
            for i in range(args.clips):
                colour, shape, motion = ALL_COMBOS[(7 * i + args.seed) % len(ALL_COMBOS)]
                wins = schedule(colour, shape, motion, length, kind, first, later)
                if args.reference:
                    rng = np.random.default_rng([args.seed, i])
                    specs = [sample_spec(colour, shape, motion, rng)]
                    for _, _, m, _ in wins[1:]:  # the next motion at the first clip's speed, as far as the canvas allows
                        prev = specs[-1]
                        specs.append(ClipSpec(colour, shape, m, size=prev.size, start=prev.end, travel=min(specs[0].travel, room(prev, m))))
                    frames = render_sequence(specs, [n for *_, n in wins])
                    seams = [first + k * later for k in range(length - 1)]
                else:
                    sched: list[list] = []
                    for c, s, m, n in wins:  # one entry per run of the same prompt: a model that slides its window makes it in one call
                        text = canonical_caption(c, s, m)
                        if sched and sched[-1][0] == text:
                            sched[-1][1] += n
                        else:
                            sched.append([text, n])
                    kw = {"num_inference_steps": args.steps} if args.steps and "num_inference_steps" in pipe.rules.sampling_options else {}
                    if args.guidance is not None:
                        kw["guidance_scale"] = args.guidance
                    for name in ("temperature", "top_k", "top_p"):
                        if getattr(args, name) is not None:
                            kw[name] = getattr(args, name)
                    out = pipe.long_video(prompt_schedule=sched, overlap=args.overlap, seed=args.seed + 1000 * i, progress_bar=False, **kw)
                    frames = out.frames[0]
                    request = GenerationRequest(prompt_schedule=sched, overlap=args.overlap).checked(pipe.rules)
                    plan = request.long_plan(pipe.rules)
                    seams = joins(plan) if plan is not None else []
                results = judge_windows(frames, wins)
                ok = [r.colour == c and r.shape == s and r.motion == m and not r.failures for r, (c, s, m, _) in zip(results, wins)]
                followed += sum(ok)
                n_windows += len(ok)
                kept += all(r.colour == results[0].colour and r.shape == results[0].shape and r.colour is not None for r in results)
                if results[0].area and results[-1].area is not None:
                    sizes.append(results[-1].area / results[0].area)
                s_in, s_out = seam_ratio(frames, seams)
                seams_in.append(s_in)
                seams_out.append(s_out)
                if args.verbose:
                    read = " ".join(f"{'+' if k else '-'}{r.colour}/{r.shape}/{r.motion}{'(' + ','.join(r.failures) + ')' if r.failures else ''}" for k, r in zip(ok, results))
                    size = " ".join(f"{r.area * 100:.1f}" if r.area is not None else "-" for r in results)
                    print(f"  {length}x {kind} clip {i} ({colour} {shape} {motion}): {read} seam {s_in:.2f}/{s_out:.2f} area % {size}", file=sys.stderr)
            seam = float(np.nanmean(seams_in)) / float(np.mean(seams_out)) if seams_in and not np.all(np.isnan(seams_in)) else float("nan")
            row = {
                "length": length, "schedule": kind, "clips": args.clips, "windows": n_windows,
                "followed": followed / n_windows, "identity": kept / args.clips, "seam": seam,
                "seam_change": float(np.nanmean(seams_in)) if seams else float("nan"), "inside_change": float(np.mean(seams_out)),
                "size": float(np.median(sizes)) if sizes else float("nan"),
                "seconds": time.perf_counter() - t0,
            }  # fmt: skip
            rows.append(row)
            print(f"{length}x {kind}: windows followed {row['followed']:.1%} of {n_windows}, identity kept {row['identity']:.1%}, "
                  f"seam {row['seam']:.2f} ({row['seam_change']:.2f} vs {row['inside_change']:.2f}), size {row['size']:.2f}, {row['seconds']:.0f} s", flush=True)  # fmt: skip
    return {"model": "reference" if args.reference else args.model, "steps": args.steps, "guidance": args.guidance, "overlap": args.overlap,
            "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed, "rows": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="shapes", help="a model directory or a shipped model's name")
    p.add_argument("--reference", action="store_true", help="judge ground-truth continuations instead of a model")
    p.add_argument("--clips", type=int, default=16)
    p.add_argument("--lengths", type=int, nargs="+", default=[2, 4, 8], help="video lengths in clips")
    p.add_argument("--steps", type=int, default=None, help="diffusion models: sampling steps (default: the model's)")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's)")
    p.add_argument("--temperature", type=float, default=None, help="token models: sampling temperature (default: the model's)")
    p.add_argument("--top-k", type=int, default=None, help="token models: keep the k likeliest tokens (default: the model's)")
    p.add_argument("--top-p", type=float, default=None, help="token models: nucleus sampling's mass (default: the model's)")
    p.add_argument("--overlap", type=int, default=None, help="frames of the past each later window sees (default: the model's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, help="write the rows here")
    p.add_argument("--verbose", action="store_true", help="every clip's windows")
    args = p.parse_args()
    report = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    print("\n| length | prompts | windows | followed | identity kept | seam ratio | size |\n|---|---|---:|---:|---:|---:|---:|")
    for r in report["rows"]:
        seam = "no joins" if r["seam"] != r["seam"] else f"{r['seam']:.2f}"  # NaN: made in one call (a model that slides its own window)
        print(f"| {r['length']}x | {r['schedule']} | {r['windows']} | {r['followed']:.1%} | {r['identity']:.1%} | {seam} | {r['size']:.2f} |")


if __name__ == "__main__":
    main()
