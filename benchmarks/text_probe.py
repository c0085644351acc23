"""What a frozen text encoder knows of words it was never shown with the shapes world: a probe.

A video model conditioned on a frozen text encoder can only follow a word it never saw in a
training caption through what the encoder already knows: that "cherry" is near "red" and "orb"
near "ball". This measures that knowledge apart from any video model. Linear classifiers (one per
attribute: colour, shape, motion) are fitted on the encoder's features of captions in the wide
training vocabulary (:mod:`kinema.data.wording`; ``--per-combo`` captions of each of the 96
combinations), then read the captions of ``kinema eval --style unseen-words`` (three variants of
each combination): the share they get right is about what a model trained on those captions can
get from the encoder, per attribute. Two features: the mean of the token states over the prompt's
tokens (all-MiniLM-L6-v2's own sentence embedding, before its normalisation) and their maximum.
A third read needs no fitting: the state of each evaluation word in a fixed sentence against the
mean state of each colour's training words (nearest centroid).

    python benchmarks/text_probe.py                 # all-MiniLM-L6-v2, the shipped models' encoder
    python benchmarks/text_probe.py --json probe.json
    python benchmarks/text_probe.py --colour-names xkcd   # + captions naming 358 more colours (needs matplotlib)

``--colour-names xkcd`` asks whether more colour words would teach the encoder's features the
colour of words it never saw: it adds as many training captions again, each naming a colour of the
xkcd colour survey and CSS (their tables ship with matplotlib) that lies near one palette colour
(CIELAB distance under ``--max-distance``, and ``--margin`` nearer than the next palette colour),
leaving out every name that shares a word with the evaluation vocabulary.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def features(encoder, texts: list[str], pool: str) -> torch.Tensor:
    out = []
    for i in range(0, len(texts), 256):
        states = encoder(texts[i : i + 256])  # (B, L, D), padding zeroed
        real = states.abs().sum(-1) > 0  # (B, L)
        if pool == "mean":
            out.append((states * real[..., None]).sum(1) / real.sum(1, keepdim=True))
        else:
            out.append(states.masked_fill(~real[..., None], -1e4).max(1).values)
    return torch.cat(out)


def lab(rgb: tuple[int, int, int]) -> np.ndarray:
    """sRGB (0-255) -> CIELAB (D65)."""
    c = np.asarray(rgb, float) / 255
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ c / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 216 / 24389, np.cbrt(xyz), (24389 / 27 * xyz + 16) / 116)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def named_colours(max_distance: float, margin: float) -> dict[str, str]:
    """xkcd-survey and CSS colour names near one palette colour -> that colour, none of whose
    words the evaluation vocabulary uses."""
    try:
        from matplotlib._color_data import CSS4_COLORS, XKCD_COLORS
    except ImportError as e:
        raise SystemExit("--colour-names xkcd reads matplotlib's colour tables: pip install matplotlib") from e
    from kinema.data.shapes import PALETTE
    from kinema.data.wording import EVAL_COLOUR_WORDS, words

    palette = {name: lab(rgb) for name, rgb in PALETTE.items()}
    unseen = set().union(*(words(p) for ps in EVAL_COLOUR_WORDS.values() for p in ps))
    out = {}
    for name, hex_ in [*XKCD_COLORS.items(), *CSS4_COLORS.items()]:
        name = name.removeprefix("xkcd:")
        if words(name) & unseen:
            continue
        here = lab(tuple(int(hex_[i : i + 2], 16) for i in (1, 3, 5)))
        (d0, colour), (d1, _) = sorted((float(np.linalg.norm(here - v)), k) for k, v in palette.items())[:2]
        if d0 < max_distance and d1 - d0 > margin:
            out[name] = colour
    return out


def fit_and_read(x: torch.Tensor, y: torch.Tensor, x_test: torch.Tensor, classes: int, seed: int) -> torch.Tensor:
    """Multinomial logistic regression (standardised features, L2), 500 Adam steps; test predictions."""
    torch.manual_seed(seed)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    w = torch.zeros(x.shape[1], classes, requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=1e-2)
    for _ in range(500):
        loss = torch.nn.functional.cross_entropy((x - mu) / sd @ w + b, y) + 1e-3 * (w**2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return ((x_test - mu) / sd @ w + b).argmax(1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-combo", type=int, default=40, help="training captions per combination")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    p.add_argument("--colour-names", choices=("none", "xkcd"), default="none", help="train on captions naming more colours too")
    p.add_argument("--max-distance", type=float, default=30.0, help="--colour-names: CIELAB distance to the palette colour")
    p.add_argument("--margin", type=float, default=8.0, help="--colour-names: how much nearer than the next palette colour")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from kinema.data.shapes import ALL_COMBOS, COLOURS, MOTIONS, SHAPES
    from kinema.data.wording import COLOUR_WORDS, EVAL_COLOUR_WORDS, FRAMES, SHAPE_PHRASES, unseen_words_caption, wide_caption
    from kinema.text.minilm import load_minilm

    encoder = load_minilm()
    rng = np.random.default_rng(args.seed)
    train = [(combo, wide_caption(*combo, rng)) for combo in ALL_COMBOS for _ in range(args.per_combo)]
    if args.colour_names == "xkcd":
        names = named_colours(args.max_distance, args.margin)
        by_colour = {c: sorted(n for n, k in names.items() if k == c) for c in COLOURS}
        for combo in ALL_COMBOS:  # as many captions again, each naming a colour by one of these names
            for _ in range(args.per_combo):
                name = by_colour[combo[0]][rng.integers(len(by_colour[combo[0]]))]
                shape = SHAPE_PHRASES[combo[1]][rng.integers(len(SHAPE_PHRASES[combo[1]]))]
                frame = FRAMES[rng.integers(len(FRAMES))]
                train.append((combo, frame.format(c=name, s=shape, g=f"moving {combo[2]}", f=f"moves {combo[2]}")))
        print(f"{len(names)} colour names: " + ", ".join(f"{c} {len(v)}" for c, v in by_colour.items()), flush=True)
    test = [(combo, unseen_words_caption(*combo, i + shift)) for shift in (0, 1, 5) for i, combo in enumerate(ALL_COMBOS)]
    report: dict = {"encoder": "all-MiniLM-L6-v2", "colour_names": args.colour_names, "train_captions": len(train), "test_captions": len(test)}
    for pool in ("mean", "max"):
        x, x_test = features(encoder, [t for _, t in train], pool), features(encoder, [t for _, t in test], pool)
        right = np.ones(len(test), dtype=bool)
        row = {}
        for k, (name, names) in enumerate((("colour", COLOURS), ("shape", SHAPES), ("motion", MOTIONS))):
            y = torch.tensor([names.index(c[k]) for c, _ in train])
            y_test = torch.tensor([names.index(c[k]) for c, _ in test])
            ok = (fit_and_read(x, y, x_test, len(names), args.seed) == y_test).numpy()
            row[name] = float(ok.mean())
            right &= ok
        row["all three"] = float(right.mean())
        report[f"{pool} of token states"] = row
        print(f"{pool:>4} of token states: " + ", ".join(f"{k} {v:.1%}" for k, v in row.items()), flush=True)

    def word_state(word: str) -> torch.Tensor:
        states = encoder([f"a {word} circle"])[0]
        return torch.nn.functional.normalize(states[states.abs().sum(-1) > 0].mean(0), dim=0)

    centroids = {c: torch.stack([word_state(w) for w in ws]).mean(0) for c, ws in COLOUR_WORDS.items()}
    hits = [max(centroids, key=lambda c: float(word_state(w) @ centroids[c])) == colour for colour, ws in EVAL_COLOUR_WORDS.items() for w in ws]
    report["colour words, nearest centroid"] = float(np.mean(hits))
    print(f"evaluation colour words read by the nearest training colour: {np.mean(hits):.1%} of {len(hits)}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
