"""Does a model's first frame have the colour of the rest? (A causal VAE decodes it alone.)

Two reads, by the judge's colour rule (the palette colour nearest the median foreground colour):

- **round trip**: ``--clips`` ground-truth shapes-world clips (combination i*5 mod 96, drawn from
  ``(seed, i)``) through the model's VAE: the first frame's colour against the clip's true colour,
  and the mean absolute error of the first frame and of the others (0-255);
- **generated**: the canonical prompts of the first ``--prompts`` combinations (seed i), the first
  frame's colour against the colour the judge reads from the whole clip;
- **probe** (``--probe N``): does the encoder's first latent frame carry the colour at all? For N
  ground-truth clips, the posterior mean at the object's latent cell in latent frame 0 (the first
  frame alone) and in latent frame 1 (frames 1-4), and a linear classifier of the colour fitted on
  three quarters of the clips and read on the rest, four times round.

    python benchmarks/first_frame.py --model shapes
    python benchmarks/first_frame.py --model /tmp/candidate --clips 48 --prompts 96 --threads 2
    python benchmarks/first_frame.py --model shapes --clips 0 --prompts 0 --probe 192
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def frame_colour(frame: np.ndarray) -> str | None:
    from kinema.data.shapes import BACKGROUND, PALETTE
    from kinema.evaluation.judge import FOREGROUND_THRESHOLD

    names = list(PALETTE)
    palette = np.array([PALETTE[n] for n in names], dtype=np.float64)
    fg = np.linalg.norm(frame.astype(np.float64) - np.array(BACKGROUND), axis=-1) > FOREGROUND_THRESHOLD
    if fg.sum() < 4:
        return None
    median = np.median(frame[fg].astype(np.float64), axis=0)
    return names[int(np.argmin(((palette - median) ** 2).sum(1)))]


def probe(pipe, n: int, seed: int) -> dict[str, float]:
    """The share of ``n`` clips whose colour a linear classifier reads from latent frames 0 and 1
    (the posterior mean at the latent cell holding the object's median pixel), 4-fold."""
    import torch

    from benchmarks.text_probe import fit_and_read
    from kinema.data.shapes import ALL_COMBOS, BACKGROUND, PALETTE, render_clip, sample_spec
    from kinema.evaluation.judge import FOREGROUND_THRESHOLD

    names, stride = list(PALETTE), pipe.vae_scale_factor_spatial
    feats: dict[int, list] = {0: [], 1: []}
    labels = []
    for i in range(n):
        spec = sample_spec(*ALL_COMBOS[(5 * i + i // len(ALL_COMBOS)) % len(ALL_COMBOS)], np.random.default_rng([seed, 1, i]))
        clip = render_clip(spec, 64, 33)  # (F, H, W, 3)
        video = torch.from_numpy(clip).permute(3, 0, 1, 2).float().div(127.5).sub(1)[None]  # (1, 3, F, H, W)
        with torch.no_grad():
            mean = pipe.vae.encode(video).mean[0].float()  # (z, F', h, w)
        for latent, frames in ((0, [0]), (1, [1, 2, 3, 4])):
            fg = np.linalg.norm(clip[frames].astype(np.float64) - np.array(BACKGROUND), axis=-1) > FOREGROUND_THRESHOLD
            ys, xs = np.nonzero(fg.any(0))
            feats[latent].append(mean[:, latent, int(np.median(ys)) // stride, int(np.median(xs)) // stride])
        labels.append(names.index(spec.colour))
    y = torch.tensor(labels)
    out = {}
    for latent, rows in feats.items():
        x = torch.stack(rows)
        folds = torch.arange(n) % 4
        right = sum(int((fit_and_read(x[folds != k], y[folds != k], x[folds == k], len(names), k) == y[folds == k]).sum()) for k in range(4))
        out[f"latent frame {latent}"] = right / n
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="shapes")
    p.add_argument("--clips", type=int, default=48)
    p.add_argument("--prompts", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--probe", type=int, default=0, help="clips for the latent probe (0: none)")
    args = p.parse_args()
    import torch

    import kinema
    from kinema.data.shapes import ALL_COMBOS, canonical_caption, render_clip, sample_spec
    from kinema.evaluation.judge import judge_clip

    torch.set_num_threads(args.threads)
    pipe = kinema.load_pipeline(args.model)
    if args.probe:
        read = probe(pipe, args.probe, args.seed)
        print("probe: the colour read from the object's latent cell in " + ", ".join(f"{k} {v:.1%}" for k, v in read.items()))
    truth, specs = [], []
    for i in range(args.clips):
        combo = ALL_COMBOS[(5 * i) % len(ALL_COMBOS)]
        spec = sample_spec(*combo, np.random.default_rng([args.seed, i]))
        specs.append(spec)
        truth.append(render_clip(spec, 64, 33))
    if specs:
        rec = np.concatenate([pipe.reconstruct(np.stack(truth[i : i + 8])) for i in range(0, len(truth), 8)])
        right = [frame_colour(rec[i, 0]) == specs[i].colour for i in range(len(specs))]
        err0 = np.mean([np.abs(rec[i, 0].astype(float) - truth[i][0]).mean() for i in range(len(specs))])
        err_rest = np.mean([np.abs(rec[i, 1:].astype(float) - truth[i][1:]).mean() for i in range(len(specs))])
        print(f"round trip: first frame's colour right in {sum(right)} of {len(right)}; mean error {err0:.2f} (first frame), {err_rest:.2f} (the others)")
    same = 0
    for i in range(args.prompts):
        c, s, m = ALL_COMBOS[i]
        frames = pipe(canonical_caption(c, s, m), seed=i, progress_bar=False).frames[0]
        whole = judge_clip(frames).colour
        same += frame_colour(frames[0]) == whole and whole is not None
    print(f"generated: first frame's colour is the clip's in {same} of {args.prompts}")


if __name__ == "__main__":
    main()
