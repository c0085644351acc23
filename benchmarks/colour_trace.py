"""The object's colour, frame by frame, in a token model's long video made in one call (its KV cache
sliding on) and in windows of its clip (each re-reading its past from the frames), side by side.

It shows where a video drifts, and whether the way it is made does: a token model trained on clips
that its temporal window holds whole (the shipped ``shapes-ar``, 33-frame clips) keeps its colour in
one call up to about where its training clips end and drifts after it, which is why its card says
``"slide": false``. The model is loaded twice from copies of its directory whose card sets
``defaults.slide`` each way; both videos use the same prompt and seed.

    python benchmarks/colour_trace.py              # shapes-ar, a red circle turning back every clip, 129 frames
    python benchmarks/colour_trace.py --prompt "a yellow square moving down" --seed 5 --no-turn
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def object_colour(frame: np.ndarray, threshold: float = 60.0) -> tuple[np.ndarray | None, int]:
    """The mean colour of the pixels far from the frame's median (the background), and how many."""
    f = frame.astype(np.float64)
    background = np.median(f.reshape(-1, 3), axis=0)
    far = np.abs(f - background).sum(-1) > threshold
    return (f[far].mean(0) if far.any() else None), int(far.sum())


def with_slide(root: Path, slide: bool, into: Path) -> Path:
    """A copy of the kinema model directory ``root`` whose card's defaults say ``slide``."""
    out = into / ("slide" if slide else "windows")
    shutil.copytree(root, out)
    card = json.loads((out / "kinema.json").read_text())
    card.setdefault("defaults", {})["slide"] = slide
    (out / "kinema.json").write_text(json.dumps(card, indent=2))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="shapes-ar", help="a token-ar model directory (kinema format) or a shipped model's name")
    p.add_argument("--prompt", default="a red circle moving left")
    p.add_argument("--frames", type=int, default=129, help="frames of the video (default: 4x the shipped clip)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--turn", action=argparse.BooleanOptionalAction, default=True,
                   help="turn back every clip (moving left, then right, ...), so the object stays in view (default); --no-turn: one prompt")
    p.add_argument("--every", type=int, default=4, help="print every N-th frame")
    p.add_argument("--drift", type=float, default=40.0, help="a colour this far (sum of |RGB| differences) from frame 4's has drifted")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()

    import torch

    import kinema
    from kinema.checkpoints.layouts import resolve_model

    torch.set_num_threads(args.threads)
    layout = resolve_model(args.model)
    if layout.format != "kinema" or layout.card.get("pipeline") != "token-ar":
        p.error(f"{args.model} is not a token-ar model with a kinema.json card")
    opposite = {"left": "right", "right": "left", "up": "down", "down": "up"}
    words = args.prompt.split()
    if args.turn and (not words or words[-1] not in opposite):
        p.error(f"--turn needs a prompt that ends in a direction (left, right, up or down); got {args.prompt!r} (or give --no-turn)")
    clip = 33
    if args.turn:  # one prompt a clip, turning back each time, as benchmarks/drift.py's "turning" rows
        schedule, left, k = [], args.frames, 0
        while left > 0:
            n = min(left, clip if k == 0 else clip - 1)
            direction = words[-1] if k % 2 == 0 else opposite[words[-1]]
            schedule.append((" ".join(words[:-1] + [direction]), n))
            left, k = left - n, k + 1
        request = dict(prompt_schedule=schedule)
    else:
        request = dict(prompt=args.prompt, num_frames=args.frames)
    videos = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, slide in (("one call", True), ("windows", False)):
            pipe = kinema.load_pipeline(with_slide(Path(layout.root), slide, Path(tmp)))
            videos[name] = pipe.long_video(**request, seed=args.seed, progress_bar=False).frames[0]
    reference = {name: object_colour(v[min(4, len(v) - 1)]) for name, v in videos.items()}  # (colour, pixels) at frame 4
    first_drift: dict[str, int | None] = {name: None for name in videos}
    how = "turning back every clip" if args.turn else "one prompt"
    print(f"{args.model}, {args.prompt!r} {how}, {args.frames} frames, seed {args.seed}: the object's mean colour (and its pixels)")
    print(f"{'frame':>5}  " + "  ".join(f"{name:>24}" for name in videos))
    for i in range(args.frames):
        cells = []
        for name, v in videos.items():
            colour, n = object_colour(v[i])
            ref, ref_n = reference[name]
            in_view = colour is not None and ref is not None and n >= ref_n / 2  # half of it or more: not leaving the canvas
            if in_view and i >= 4 and first_drift[name] is None and np.abs(colour - ref).sum() > args.drift:
                first_drift[name] = i
            cells.append(f"{'-':>24}" if colour is None else f"{str(tuple(int(round(c)) for c in colour)):>17} ({n:>4})")
        if i % args.every == 0:
            print(f"{i:>5}  " + "  ".join(cells))
    for name, i in first_drift.items():
        print(f"{name}: " + (f"the colour first drifts at frame {i}" if i is not None else "the colour holds while the object is in view (half of it or more)"))


if __name__ == "__main__":
    main()
