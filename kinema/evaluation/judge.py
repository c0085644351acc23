"""The shapes-world judge: score a clip from its pixels alone (SHAPES-WORLD.md, "The judge").

Rules, in order:

1. Foreground: pixels whose RGB distance to the background exceeds ``FOREGROUND_THRESHOLD``.
2. Colour: the palette colour nearest the median foreground colour (over all frames).
3. Geometry uses the *object mask*: foreground pixels nearer the median foreground colour than the
   background (coverage above one half for an anti-aliased edge), so areas and fill ratios do not
   depend on the threshold of rule 1.
   Shape: from the median over frames of the fill ratio (mask pixels / bounding-box pixels): at
   most ``CIRCLE_FILL`` is a triangle. Otherwise the *core* fill ratio decides between square
   (above ``SQUARE_FILL``) and circle: the same ratio in the box left after dropping edge rows and
   columns that hold at most ``CORE_TRIM`` of the fullest row's (column's) pixels, so that a stray
   pixel of codec ringing beside a square does not make it look round.
4. Motion: the axis and sign of the mask centroid's displacement from the first to the last frame;
   ``"none"`` unless its larger component exceeds ``MIN_TRAVEL`` of the canvas side.
5. Failures: empty foreground (no frame has any); flicker (some frame empty, or the object area of
   two consecutive frames differing by more than ``MAX_AREA_CHANGE``); several blobs (a frame whose
   second-largest 8-connected blob has at least ``BLOB_RATIO`` of the largest one's area and at
   least ``MIN_BLOB`` of the canvas). A failed clip follows no prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..data.shapes import (
    ALL_COMBOS,
    BACKGROUND,
    HELD_OUT,
    HELD_OUT_COMBOS,
    PALETTE,
    TRAIN_COMBOS,
    canonical_caption,
    reworded_caption,
)
from ..errors import KinemaError

FOREGROUND_THRESHOLD = 60.0  # RGB distance to the background; the nearest palette colour (green) is ~182 away
CIRCLE_FILL = 0.65  # fill ratio at or below this: triangle (ideal 0.5); above: circle (0.785) or square (1.0)
SQUARE_FILL = 0.89  # core fill ratio above this: square (ideal 1.0), else circle (core ~0.8)
CORE_TRIM = 0.2  # core box: drop edge rows/columns with at most this share of the fullest one's pixels
MIN_TRAVEL = 0.10  # centroid displacement needed to count as motion, fraction of the canvas side
MAX_AREA_CHANGE = 0.5  # flicker: larger / smaller object area of consecutive frames above 1 + this
BLOB_RATIO = 0.25  # a second blob this large relative to the largest one makes a "several blobs" frame
MIN_BLOB = 0.002  # ... provided it also covers this share of the canvas (ignores codec specks)

ATTRIBUTES = ("colour", "shape", "motion")


@dataclass
class JudgeResult:
    """What the judge read from one clip; attributes are None when the clip failed before them."""

    colour: str | None  # nearest palette name
    shape: str | None  # "circle", "square" or "triangle"
    motion: str | None  # "left", "right", "up", "down" or "none"
    failures: list[str] = field(default_factory=list)  # reasons the clip follows no prompt
    fill: float | None = None  # median fill ratio of the object mask in its bounding box
    core_fill: float | None = None  # median fill ratio in the core box (edge spurs dropped)
    displacement: tuple[float, float] | None = None  # centroid (dx, dy) first -> last frame, fraction of side
    area: float | None = None  # median object mask area over the frames that show it, fraction of the canvas

    @property
    def ok(self) -> bool:
        return not self.failures

    def matches(self, colour: str, shape: str, motion: str) -> dict[str, bool]:
        """Per attribute whether it matches the prompt, and ``overall`` (all match and no failure)."""
        out = {"colour": self.colour == colour, "shape": self.shape == shape, "motion": self.motion == motion}
        if self.failures:
            out = {k: False for k in out}
        out["overall"] = all(out.values())
        return out

    def to_dict(self) -> dict:
        return {
            "colour": self.colour,
            "shape": self.shape,
            "motion": self.motion,
            "failures": list(self.failures),
            "fill": self.fill,
            "core_fill": self.core_fill,
            "displacement": list(self.displacement) if self.displacement is not None else None,
            "area": self.area,
        }


def _label(mask: np.ndarray) -> np.ndarray:
    """8-connected component labels of a boolean mask (..., H, W); 0 = background.

    Label propagation: each foreground pixel takes the largest label in its 3x3 neighbourhood, then
    the label of the pixel its label names (pointer jumping), until nothing changes; every
    component ends up labelled by its largest flat index + 1 within its frame.
    """
    h, w = mask.shape[-2:]
    labels = np.where(mask, np.arange(1, h * w + 1).reshape(h, w), 0)
    while True:
        best = labels.copy()  # 3x3 maximum, separably: along columns, then along rows
        np.maximum(best[..., 1:], labels[..., :-1], out=best[..., 1:])
        np.maximum(best[..., :-1], labels[..., 1:], out=best[..., :-1])
        rows = best.copy()
        np.maximum(best[..., 1:, :], rows[..., :-1, :], out=best[..., 1:, :])
        np.maximum(best[..., :-1, :], rows[..., 1:, :], out=best[..., :-1, :])
        best *= mask
        flat = best.reshape(-1, h * w)  # (N, H*W) pointer jumping: take the label of the labelled pixel
        best = np.take_along_axis(flat, np.maximum(flat - 1, 0), axis=1).reshape(best.shape) * mask
        if np.array_equal(best, labels):
            return labels
        labels = best


def _split_frames(mask: np.ndarray) -> int:
    """How many frames of (F, H, W) hold several large blobs.

    Each frame is cropped to its own bounding box first, so labelling costs the object's size, not
    the canvas's.
    """
    f, h, w = mask.shape
    r0, r1 = _bounds(mask.sum(2), 0)  # (F,) rows of each frame's bounding box
    c0, c1 = _bounds(mask.sum(1), 0)  # (F,) columns
    crops = np.zeros((f, max(1, (r1 - r0).max()), max(1, (c1 - c0).max())), dtype=bool)  # top-left aligned
    for i in range(f):
        crops[i, : r1[i] - r0[i], : c1[i] - c0[i]] = mask[i, r0[i] : r1[i], c0[i] : c1[i]]
    labels = _label(crops).reshape(f, -1)
    split = 0
    for row in labels:
        sizes = np.bincount(row[row > 0])
        sizes = np.sort(sizes[sizes > 0])[::-1]
        if len(sizes) > 1 and sizes[1] >= BLOB_RATIO * sizes[0] and sizes[1] >= MIN_BLOB * h * w:
            split += 1
    return split


def _bounds(counts: np.ndarray, floor: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """First and one-past-last index of entries above ``floor`` along the last axis: (F,), (F,).

    ``counts`` (F, N); ``floor`` broadcasts against (F, 1). Rows with no such entry give (0, 0).
    """
    above = counts > floor  # (F, N)
    n = above.shape[-1]
    start = np.argmax(above, axis=-1)
    stop = n - np.argmax(above[:, ::-1], axis=-1)
    empty = ~above.any(-1)
    return np.where(empty, 0, start), np.where(empty, 0, stop)


def _box_sums(mask: np.ndarray, r0, r1, c0, c1) -> np.ndarray:
    """Mask pixels (F, H, W) inside each frame's box rows [r0, r1) x columns [c0, c1): (F,)."""
    f = mask.shape[0]
    integral = np.zeros((f, mask.shape[1] + 1, mask.shape[2] + 1), dtype=np.int64)  # (F, H+1, W+1)
    integral[:, 1:, 1:] = mask.cumsum(1).cumsum(2)
    i = np.arange(f)
    return integral[i, r1, c1] - integral[i, r0, c1] - integral[i, r1, c0] + integral[i, r0, c0]


def _sq_distance(px: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Squared Euclidean RGB distance of pixels (..., 3) to one colour (3,): (...)."""
    d = px - colour
    return np.einsum("...c,...c->...", d, d)


def judge_clip(frames: np.ndarray, background: tuple[int, int, int] = BACKGROUND) -> JudgeResult:
    """Judge uint8 frames (F, H, W, 3) of a shapes-world clip; see the module docstring for the rules."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 2:
        raise KinemaError(f"judge_clip wants uint8 frames (F, H, W, 3) with F >= 2; got {frames.dtype} {frames.shape}")
    f, h, w, _ = frames.shape
    side = float(max(h, w))
    bg = np.asarray(background, dtype=np.int32)
    dist_bg = _sq_distance(frames.astype(np.int32), bg)  # (F, H, W) squared
    fg = dist_bg > FOREGROUND_THRESHOLD**2  # (F, H, W) rule 1
    if not fg.any():
        return JudgeResult(None, None, None, ["empty foreground"])

    fg_px = frames[fg].astype(np.float32)  # (N, 3)
    median = np.median(fg_px, axis=0)  # (3,) rule 2
    names = list(PALETTE)
    pal = np.asarray([PALETTE[n] for n in names], dtype=np.float32)  # (8, 3)
    colour = names[int(np.argmin(_sq_distance(pal, median)))]

    mask = fg.copy()  # (F, H, W) object mask, rule 3: nearer the median colour than the background
    mask[fg] = _sq_distance(fg_px, median) < dist_bg[fg]
    area = mask.sum(axis=(1, 2))  # (F,)
    failures = []
    if (area == 0).any():
        failures.append(f"flicker: object missing in {int((area == 0).sum())} of {f} frames")
    else:
        ratio = np.maximum(area[1:], area[:-1]) / np.minimum(area[1:], area[:-1])  # (F-1,)
        if ratio.max() > 1 + MAX_AREA_CHANGE:
            failures.append(f"flicker: object area changes by {ratio.max() - 1:.0%} between frames")
    split = _split_frames(mask)
    if split:
        failures.append(f"several blobs in {split} of {f} frames")

    present = area > 0  # (F,)
    row_n, col_n = mask.sum(2), mask.sum(1)  # (F, H), (F, W) mask pixels per row / column
    r0, r1 = _bounds(row_n, 0)
    c0, c1 = _bounds(col_n, 0)
    box = np.maximum((r1 - r0) * (c1 - c0), 1)  # (F,) bounding-box area
    cr0, cr1 = _bounds(row_n, CORE_TRIM * row_n.max(1, keepdims=True))
    cc0, cc1 = _bounds(col_n, CORE_TRIM * col_n.max(1, keepdims=True))
    core_box = np.maximum((cr1 - cr0) * (cc1 - cc0), 1)  # (F,) core-box area
    fill = float(np.median((area / box)[present]))  # rule 3
    core = float(np.median((_box_sums(mask, cr0, cr1, cc0, cc1) / core_box)[present]))
    shape = "triangle" if fill <= CIRCLE_FILL else "square" if core > SQUARE_FILL else "circle"

    ys, xs = np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64)
    first, last = np.flatnonzero(present)[[0, -1]]  # rule 4: centroid displacement

    def centroid(i: int) -> np.ndarray:
        return np.array([(col_n[i] * xs).sum(), (row_n[i] * ys).sum()]) / area[i]

    dx, dy = (centroid(last) - centroid(first)) / side
    if max(abs(dx), abs(dy)) <= MIN_TRAVEL:
        motion = "none"
    elif abs(dx) >= abs(dy):
        motion = "right" if dx > 0 else "left"
    else:
        motion = "down" if dy > 0 else "up"
    return JudgeResult(colour, shape, motion, failures, fill=fill, core_fill=core, displacement=(float(dx), float(dy)),
                       area=float(np.median(area[present])) / (h * w))  # fmt: skip


# ------------------------------------------------------------------------------------------------
# Prompts and scores
# ------------------------------------------------------------------------------------------------

EVAL_SPLITS = {"seen": TRAIN_COMBOS, "held_out": HELD_OUT_COMBOS, "all": ALL_COMBOS}  # evaluation name -> combos


EVAL_STYLES = ("canonical", "reworded", "wide-words", "unseen-words")


def eval_prompts(split: str = "all", style: str = "canonical") -> list[tuple[str, str, str, str]]:
    """(colour, shape, motion, prompt) for every combination of ``split`` ("seen", "held_out", "all").

    ``style`` "canonical" uses "a {colour} {shape} moving {motion}"; "reworded" uses the paraphrases
    that training never sees (variant = index of the combination, cycling through them);
    "wide-words" draws a caption of the wide training vocabulary (:mod:`kinema.data.wording`; the
    sentence is new, its words are not; seeded by the index); "unseen-words" names colour, shape and
    motion with words no training caption of either wording uses (the evaluation-only vocabulary,
    variant = index).
    """
    split = {"train": "seen"}.get(split, split)
    if split not in EVAL_SPLITS:
        raise KinemaError(f"unknown evaluation split {split!r}; use seen, held_out or all")
    if style not in EVAL_STYLES:
        raise KinemaError(f"unknown prompt style {style!r}; use one of {', '.join(EVAL_STYLES)}")
    from ..data.wording import unseen_words_caption, wide_caption

    wording = {
        "canonical": lambda c, s, m, i: canonical_caption(c, s, m),
        "reworded": reworded_caption,
        "wide-words": lambda c, s, m, i: wide_caption(c, s, m, np.random.default_rng([7, i])),
        "unseen-words": unseen_words_caption,
    }[style]
    return [(c, s, m, wording(c, s, m, i)) for i, (c, s, m) in enumerate(EVAL_SPLITS[split])]


def score(results: list[JudgeResult], prompts: list[tuple]) -> dict:
    """Share of prompts followed, per attribute and overall, for "seen", "held_out" and "all" combos.

    ``prompts`` holds (colour, shape, motion, ...) per result, in the same order. Returns
    ``{group: {"n", "colour", "shape", "motion", "overall"}, "failures": {reason: count}}``;
    a group with no prompts has accuracy None.
    """
    if len(results) != len(prompts):
        raise KinemaError(f"got {len(results)} judged clips for {len(prompts)} prompts; they must pair up")
    groups: dict[str, list[dict]] = {"seen": [], "held_out": [], "all": []}
    failures: dict[str, int] = {}
    for result, prompt in zip(results, prompts):
        combo = tuple(prompt[:3])
        m = result.matches(*combo)
        groups["held_out" if combo in HELD_OUT else "seen"].append(m)
        groups["all"].append(m)
        for reason in result.failures:
            key = reason.split(":")[0].split(" in ")[0]  # "flicker", "several blobs", "empty foreground"
            failures[key] = failures.get(key, 0) + 1
    report: dict = {}
    for name, ms in groups.items():
        row: dict = {"n": len(ms)}
        for key in (*ATTRIBUTES, "overall"):
            row[key] = sum(x[key] for x in ms) / len(ms) if ms else None
        report[name] = row
    report["failures"] = failures
    return report


def format_table(report: dict) -> str:
    """The report of :func:`score` as a fixed-width text table, one row per group."""
    cols = ("n", *ATTRIBUTES, "overall")
    lines = [f"{'':10}" + "".join(f"{c:>9}" for c in cols)]
    for name in ("seen", "held_out", "all"):
        row = report[name]
        cells = [f"{row['n']:>9}"] + [f"{'-':>9}" if row[c] is None else f"{row[c]:>9.1%}" for c in cols[1:]]
        lines.append(f"{name:10}" + "".join(cells))
    if report.get("failures"):
        lines.append("failures: " + ", ".join(f"{k} {v}" for k, v in sorted(report["failures"].items())))
    return "\n".join(lines)
