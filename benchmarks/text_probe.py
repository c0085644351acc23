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
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from kinema.data.shapes import ALL_COMBOS, COLOURS, MOTIONS, SHAPES
    from kinema.data.wording import COLOUR_WORDS, EVAL_COLOUR_WORDS, unseen_words_caption, wide_caption
    from kinema.text.minilm import load_minilm

    encoder = load_minilm()
    rng = np.random.default_rng(args.seed)
    train = [(combo, wide_caption(*combo, rng)) for combo in ALL_COMBOS for _ in range(args.per_combo)]
    test = [(combo, unseen_words_caption(*combo, i + shift)) for shift in (0, 1, 5) for i, combo in enumerate(ALL_COMBOS)]
    report: dict = {"encoder": "all-MiniLM-L6-v2", "train_captions": len(train), "test_captions": len(test)}
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
