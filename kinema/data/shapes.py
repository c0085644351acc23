"""The shapes world: a procedural text-to-video data set that a program can score exactly.

The fixed parts (canvas, palette, shapes and their sizes, motions) follow
``shared/design/SHAPES-WORLD.md``. One clip holds one filled shape of one palette colour moving
left, right, up or down at constant speed on a plain background, fully inside the canvas on every
frame. Captions vary their wording; a separate set of reworded templates, never used in training,
tests paraphrase following; a fixed set of (colour, shape, motion) combinations is held out of
training to test composition.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import KinemaError

# ------------------------------------------------------------------------------------------------
# The fixed world (SHAPES-WORLD.md)
# ------------------------------------------------------------------------------------------------

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "yellow": (240, 220, 40),
    "purple": (160, 60, 220),
    "cyan": (40, 210, 220),
    "orange": (245, 140, 30),
    "white": (240, 240, 240),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
MOTIONS: tuple[str, ...] = ("left", "right", "up", "down")
BACKGROUND: tuple[int, int, int] = (20, 20, 20)  # the default `black` background
DEFAULT_SIZE = 64  # canvas side in pixels; any square side >= MIN_SIZE works
MIN_SIZE = 64
DEFAULT_FRAMES = 33  # 4k + 1, as causal video VAEs want
DEFAULT_FPS = 16
SIZE_RANGE = (0.20, 0.35)  # object bounding-box side, as a fraction of the canvas side
TRAVEL_RANGE = (0.25, 0.50)  # distance the centre travels over the clip, fraction of the side
MARGIN = 0.02  # free border kept between the object and the canvas edge, fraction of the side
SUPERSAMPLE = 4  # anti-aliasing: coverage from SUPERSAMPLE x SUPERSAMPLE samples per pixel

# Unit direction of each motion in image coordinates (x right, y down).
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}

Combo = tuple[str, str, str]  # (colour, shape, motion)
ALL_COMBOS: tuple[Combo, ...] = tuple(itertools.product(COLOURS, SHAPES, MOTIONS))  # 96

# Held out of training (10 of 96, about 10%). Chosen so that every colour, shape and motion, and
# every pair of them (colour-shape, colour-motion, shape-motion) of a held-out combination, still
# appears in training: a model can only get these right by composing what it has seen.
# Never change this list: results are compared across versions on it.
HELD_OUT: frozenset[Combo] = frozenset(
    {
        ("red", "circle", "left"),
        ("green", "square", "right"),
        ("blue", "triangle", "up"),
        ("yellow", "circle", "down"),
        ("purple", "square", "left"),
        ("cyan", "triangle", "right"),
        ("orange", "circle", "up"),
        ("white", "square", "down"),
        ("red", "triangle", "down"),
        ("blue", "square", "left"),
    }
)
TRAIN_COMBOS: tuple[Combo, ...] = tuple(c for c in ALL_COMBOS if c not in HELD_OUT)  # 86, fixed order
HELD_OUT_COMBOS: tuple[Combo, ...] = tuple(c for c in ALL_COMBOS if c in HELD_OUT)  # 10, fixed order
SPLITS: dict[str, tuple[Combo, ...]] = {"train": TRAIN_COMBOS, "held_out": HELD_OUT_COMBOS, "all": ALL_COMBOS}


def combos(split: str) -> tuple[Combo, ...]:
    """The (colour, shape, motion) combinations of a split: "train", "held_out" or "all"."""
    if split not in SPLITS:
        raise KinemaError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    return SPLITS[split]


# ------------------------------------------------------------------------------------------------
# Clip parameters
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipSpec:
    """Everything that decides a clip's pixels; positions are fractions of the canvas side."""

    colour: str  # a PALETTE name
    shape: str  # one of SHAPES
    motion: str  # one of MOTIONS
    size: float = 0.25  # bounding-box side / canvas side, in SIZE_RANGE
    start: tuple[float, float] = (0.5, 0.5)  # bounding-box centre (x, y) on the first frame
    travel: float = 0.3  # distance the centre moves from first to last frame, in TRAVEL_RANGE

    def __post_init__(self) -> None:
        if self.colour not in PALETTE:
            raise KinemaError(f"unknown colour {self.colour!r}; use one of {', '.join(PALETTE)}")
        if self.shape not in SHAPES:
            raise KinemaError(f"unknown shape {self.shape!r}; use one of {', '.join(SHAPES)}")
        if self.motion not in MOTIONS:
            raise KinemaError(f"unknown motion {self.motion!r}; use one of {', '.join(MOTIONS)}")

    def centre(self, t: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Centre (x, y) at clip time t in [0, 1] (0 = first frame, 1 = last): constant speed."""
        dx, dy = DIRECTIONS[self.motion]
        t = np.asarray(t, dtype=np.float64)
        return self.start[0] + dx * self.travel * t, self.start[1] + dy * self.travel * t

    @property
    def end(self) -> tuple[float, float]:
        """Bounding-box centre (x, y) on the last frame."""
        x, y = self.centre(1.0)
        return float(x), float(y)


ShapeSpec = ClipSpec  # one object per clip in version 1: the clip's spec is its shape's spec

# ------------------------------------------------------------------------------------------------
# Continuing a clip: the same object goes on from where it is, at any speed, with a new motion
# ------------------------------------------------------------------------------------------------
MIN_CONTINUE_TRAVEL = 0.12  # the least travel of a continuation: more than the judge's 10% of the side


def room(spec: ClipSpec, motion: str, position: tuple[float, float] | None = None) -> float:
    """How far (fraction of the side) ``spec``'s object can move ``motion`` from ``position``
    (default: where its clip ends) and stay inside the canvas with MARGIN."""
    x, y = position if position is not None else spec.end
    lo, hi = spec.size / 2 + MARGIN, 1 - spec.size / 2 - MARGIN
    dx, dy = DIRECTIONS[motion]
    centre = x if dx else y
    return max(0.0, (hi - centre) if (dx or dy) > 0 else (centre - lo))


def continuations(spec: ClipSpec, least: float = MIN_CONTINUE_TRAVEL) -> tuple[str, ...]:
    """The motions the object of ``spec`` can take from where its clip ends, moving at least ``least``."""
    return tuple(m for m in MOTIONS if room(spec, m) >= least)


def continue_spec(spec: ClipSpec, motion: str, travel: float | None = None, rng: np.random.Generator | None = None) -> ClipSpec:
    """The next clip of ``spec``'s object: the same colour, shape and size, starting where ``spec``
    ends, moving ``motion`` by ``travel`` (a speed: fraction of the side per clip). Without
    ``travel``, one is drawn from TRAVEL_RANGE, shortened to the room before the edge. Raises
    KinemaError when the object has less than MIN_CONTINUE_TRAVEL of room that way (it is at that
    edge: it can only go another way, see :func:`continuations`)."""
    if motion not in MOTIONS:
        raise KinemaError(f"unknown motion {motion!r}; use one of {', '.join(MOTIONS)}")
    space = room(spec, motion)
    if travel is None:
        if space < MIN_CONTINUE_TRAVEL:
            raise KinemaError(f"the {spec.colour} {spec.shape} is at the {motion} edge; it can continue {' or '.join(continuations(spec)) or 'nowhere'}")
        rng = rng if rng is not None else np.random.default_rng(0)
        travel = min(float(rng.uniform(*TRAVEL_RANGE)), space)
    elif not 0 < travel <= space + 1e-9:
        raise KinemaError(f"a travel of {travel:g} {motion} leaves the canvas: there is {space:.3f} of room")
    return ClipSpec(spec.colour, spec.shape, motion, size=spec.size, start=spec.end, travel=float(travel))


def render_sequence(specs: list[ClipSpec], frames: list[int], size: int = DEFAULT_SIZE, background: tuple[int, int, int] = BACKGROUND) -> np.ndarray:
    """Consecutive clips of one object as one video, uint8 (sum(frames), size, size, 3): clip i
    shows ``frames[i]`` frames of ``specs[i]``; after the first, a clip leaves out its own first
    frame, which is the last frame of the clip before (each spec starts where the last one ends)."""
    if len(specs) != len(frames) or not specs:
        raise KinemaError(f"give one frame count per clip; got {len(specs)} clips and {len(frames)} counts")
    parts = [render_clip(specs[0], size, frames[0], background)]
    for spec, n in zip(specs[1:], frames[1:]):
        parts.append(render_clip(spec, size, n + 1, background)[1:])
    return np.concatenate(parts)


def sample_spec(colour: str, shape: str, motion: str, rng: np.random.Generator, clips: float = 1.0) -> ClipSpec:
    """Draw size, start and travel so the object stays inside the canvas (with MARGIN) on every frame.
    With ``clips`` > 1 the spec spans that many clips at one clip's speed (a travel per clip from
    TRAVEL_RANGE, at most what lets the whole travel fit the canvas)."""
    size = float(rng.uniform(*SIZE_RANGE))
    lo, hi = size / 2 + MARGIN, 1 - size / 2 - MARGIN  # allowed range of the centre on each axis
    travel = float(rng.uniform(TRAVEL_RANGE[0], min(TRAVEL_RANGE[1], (hi - lo) / clips))) * clips  # one clip: TRAVEL_RANGE as drawn always
    dx, dy = DIRECTIONS[motion]
    start = []
    for d in (dx, dy):
        if d > 0:
            start.append(float(rng.uniform(lo, hi - travel)))
        elif d < 0:
            start.append(float(rng.uniform(lo + travel, hi)))
        else:
            start.append(float(rng.uniform(lo, hi)))
    return ClipSpec(colour, shape, motion, size=size, start=(start[0], start[1]), travel=travel)


# ------------------------------------------------------------------------------------------------
# Rendering
# ------------------------------------------------------------------------------------------------


def _coverage(spec: ClipSpec, size: int, frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fraction of each pixel covered by the shape, in a window around the object on each frame.

    Samples SUPERSAMPLE x SUPERSAMPLE points per pixel. Returns the coverage, float32
    (frames, win, win) in [0, 1], and the windows' top-left corners ``oy``, ``ox`` (frames,) in
    pixels; the shape lies wholly inside its window.
    """
    s = SUPERSAMPLE
    t = np.linspace(0.0, 1.0, frames)
    cx, cy = spec.centre(t)
    cx, cy = cx * size, cy * size  # (F,) centre in pixels
    half = spec.size * size / 2
    win = min(size, int(np.ceil(2 * half)) + 3)  # window side in pixels, holds the whole object
    ox = np.clip(np.floor(cx - half).astype(int) - 1, 0, size - win)  # (F,) window origin
    oy = np.clip(np.floor(cy - half).astype(int) - 1, 0, size - win)
    u = (np.arange(win * s) + 0.5) / s  # (win*s,) sample offsets inside the window, in pixels
    x = (ox - cx)[:, None, None] + u[None, None, :]  # (F, 1, win*s) relative to the centre
    y = (oy - cy)[:, None, None] + u[None, :, None]  # (F, win*s, 1)
    if spec.shape == "square":  # separable: coverage is a product of 1D coverages
        cov_x = (np.abs(x) <= half).reshape(frames, 1, win, s).mean(-1, dtype=np.float32)  # (F, 1, win)
        cov_y = (np.abs(y) <= half).reshape(frames, win, s, 1).mean(-2, dtype=np.float32)  # (F, win, 1)
        local = cov_x * cov_y  # (F, win, win)
    else:
        if spec.shape == "circle":
            inside = x * x + y * y <= half * half  # (F, win*s, win*s)
        else:  # triangle: apex (0, -half), base (-half, half) to (half, half); width at y is y + half
            inside = (y <= half) & (2 * np.abs(x) <= y + half)
        local = inside.reshape(frames, win, s, win, s).mean(axis=(2, 4), dtype=np.float32)  # (F, win, win)
    return local, oy, ox


def render_clip(
    spec: ClipSpec,
    size: int = DEFAULT_SIZE,
    frames: int = DEFAULT_FRAMES,
    background: tuple[int, int, int] = BACKGROUND,
) -> np.ndarray:
    """Render a clip as uint8 (frames, size, size, 3).

    Inside the shape every pixel is exactly the palette colour, away from it exactly ``background``;
    edge pixels blend the two by their supersampled coverage.
    """
    if size < MIN_SIZE:
        raise KinemaError(f"the shapes canvas must be at least {MIN_SIZE} pixels; got {size}")
    if frames < 2:
        raise KinemaError(f"a clip needs at least 2 frames to show motion; got {frames} (the default is 33)")
    colour = PALETTE[spec.colour]
    if tuple(colour) == tuple(background):
        raise KinemaError(f"the object colour {spec.colour!r} equals the background; pick another background")
    cov, oy, ox = _coverage(spec, size, frames)  # (F, win, win), (F,), (F,)
    bg = np.asarray(background, dtype=np.float32)
    fg = np.asarray(colour, dtype=np.float32)
    local = np.rint(bg + cov[..., None] * (fg - bg)).astype(np.uint8)  # (F, win, win, 3); exact at 0 and 1
    clip = np.empty((frames, size, size, 3), dtype=np.uint8)
    clip[:] = np.asarray(background, dtype=np.uint8)
    r = np.arange(cov.shape[1])
    f = np.arange(frames)[:, None, None]
    clip[f, oy[:, None, None] + r[None, :, None], ox[:, None, None] + r[None, None, :]] = local
    return clip  # (F, H, W, 3)


# ------------------------------------------------------------------------------------------------
# Captions
# ------------------------------------------------------------------------------------------------

# Training captions: {c} colour, {s} shape noun, {v} verb, {d} direction phrase.
TEMPLATES: tuple[str, ...] = (
    "a {c} {s} {v} {d}",
    "{c} {s} {v} {d}",
    "a {s}, {c}, {v} {d}",
    "the {c} {s} is {v} {d}",
    "a {c} {s} that is {v} {d}",
    "{v} {d}: a {c} {s}",
    "a {c} {s} {v} {d} across the frame",
    "one {c} {s} {v} {d} on a dark background",
    "a {s} in {c} {v} {d}",
    "a {c}-coloured {s} {v} {d}",
    "{c} {s}, {v} {d}",
    "a single {c} {s} {v} {d}",
    "there is a {c} {s} {v} {d}",
    "a {c} {s} {v} steadily {d}",
    "{d} {v}, a {c} {s}",
)
SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc", "round shape"),
    "square": ("square", "box", "square shape"),
    "triangle": ("triangle", "triangular shape", "upright triangle"),
}
VERBS: tuple[str, ...] = ("moving", "going", "drifting", "sliding", "travelling", "gliding")
DIRECTION_WORDS: dict[str, tuple[str, ...]] = {
    "left": ("left", "to the left", "leftward", "leftwards", "towards the left"),
    "right": ("right", "to the right", "rightward", "rightwards", "towards the right"),
    "up": ("up", "upward", "upwards", "towards the top", "upwards through the frame"),
    "down": ("down", "downward", "downwards", "towards the bottom", "downwards through the frame"),
}

# Paraphrases for evaluation only: their verbs and sentence patterns never occur in TEMPLATES,
# so a model that follows them has learned meaning, not a sentence.
REWORDED_TEMPLATES: tuple[str, ...] = (
    "watch the {c} {s} as it heads {d}",
    "{c} is the colour of this {s}, which makes its way {d}",
    "a {s} painted {c} keeps heading {d}",
    "here a {c} {s} is on its way {d}",
)
REWORDED_DIRECTIONS: dict[str, str] = {"left": "left", "right": "right", "up": "upward", "down": "downward"}


def canonical_caption(colour: str, shape: str, motion: str) -> str:
    """The evaluation prompt for a combination: "a {colour} {shape} moving {motion}"."""
    return f"a {colour} {shape} moving {motion}"


def caption(spec: ClipSpec, rng: np.random.Generator) -> str:
    """A training caption for ``spec`` with randomly chosen template and synonyms."""
    template = TEMPLATES[rng.integers(len(TEMPLATES))]
    words = SHAPE_WORDS[spec.shape]
    dirs = DIRECTION_WORDS[spec.motion]
    noun = words[rng.integers(len(words))]
    verb = VERBS[rng.integers(len(VERBS))]
    direction = dirs[rng.integers(len(dirs))]
    return template.format(c=spec.colour, s=noun, v=verb, d=direction)


WORDINGS = ("templates", "wide")  # how training captions are worded (ShapesDataset's ``wording``)
WIDE_TEMPLATE_SHARE = 0.25  # under "wide" wording, the share of captions still drawn from TEMPLATES


def draw_caption(spec: ClipSpec, rng: np.random.Generator, wording: str = "templates") -> str:
    """A training caption for ``spec``: from TEMPLATES, or under ``"wide"`` wording from
    :mod:`kinema.data.wording`'s wide vocabulary (a WIDE_TEMPLATE_SHARE of them still templates)."""
    if wording == "templates":
        return caption(spec, rng)
    if wording != "wide":
        raise KinemaError(f"unknown wording {wording!r}; use one of {', '.join(WORDINGS)}")
    from .wording import wide_caption

    if rng.random() < WIDE_TEMPLATE_SHARE:
        return caption(spec, rng)
    return wide_caption(spec.colour, spec.shape, spec.motion, rng)


def training_captions(colour: str, shape: str, motion: str) -> set[str]:
    """Every caption the training templates can produce for one combination."""
    return {
        t.format(c=colour, s=s, v=v, d=d)
        for t in TEMPLATES
        for s in SHAPE_WORDS[shape]
        for v in VERBS
        for d in DIRECTION_WORDS[motion]
    }


def reworded_caption(colour: str, shape: str, motion: str, variant: int = 0) -> str:
    """An evaluation paraphrase (variant modulo len(REWORDED_TEMPLATES)); never a training caption."""
    template = REWORDED_TEMPLATES[variant % len(REWORDED_TEMPLATES)]
    return template.format(c=colour, s=shape, d=REWORDED_DIRECTIONS[motion])


# ------------------------------------------------------------------------------------------------
# Data set
# ------------------------------------------------------------------------------------------------


class ShapesDataset(torch.utils.data.Dataset):
    """Procedural clips: item i is a pure function of (seed, i), so any worker can make any item.

    Each item is a dict: ``video`` float32 (3, frames, size, size) in [-1, 1], ``caption`` str and
    the ``colour``, ``shape``, ``motion`` names. The combination is drawn uniformly from the split.
    """

    def __init__(
        self,
        split: str = "train",
        size: int = DEFAULT_SIZE,
        frames: int = DEFAULT_FRAMES,
        seed: int = 0,
        length: int = 100_000,
        wording: str = "templates",
        continue_share: float = 0.0,
        continue_past: tuple[int, ...] = (17,),
        clip_frames: int | None = None,
    ) -> None:
        if size < MIN_SIZE:
            raise KinemaError(f"the shapes canvas must be at least {MIN_SIZE} pixels; got {size}")
        if length < 1:
            raise KinemaError(f"length must be positive; got {length}")
        if wording not in WORDINGS:
            raise KinemaError(f"unknown wording {wording!r}; use one of {', '.join(WORDINGS)}")
        if not 0.0 <= continue_share <= 1.0:
            raise KinemaError(f"continue_share must be from 0 to 1; got {continue_share}")
        clip = frames if clip_frames is None else clip_frames
        if not 2 <= clip <= frames:
            raise KinemaError(f"clip_frames must be from 2 to the item's {frames} frames; got {clip_frames}")
        span = 1 - SIZE_RANGE[1] - 2 * MARGIN  # the least room a centre has on an axis
        if continue_share < 1 and (frames - 1) / (clip - 1) * TRAVEL_RANGE[0] > span:
            raise KinemaError(f"a plain item of {frames} frames is {(frames - 1) / (clip - 1):g} clips of {clip}: more than an object can cross at a clip's speed; use fewer frames, or continue_share 1")
        if continue_share > 0 and (not continue_past or any(not 1 <= k <= min(clip, frames - 1) for k in continue_past)):
            raise KinemaError(f"continue_past must list past-frame counts from 1 to {min(clip, frames - 1)} (fewer than the item's frames, at most a clip's); got {list(continue_past)}")
        self.continue_share = continue_share  # the share of items that continue an earlier clip (see continuation_of)
        self.continue_past = tuple(continue_past)  # how many frames of the earlier clip such an item starts with (one drawn per item)
        self.split = split
        self.wording = wording  # caption vocabulary: "templates" or "wide" (see draw_caption)
        self.combos = combos(split)
        self.size = size  # canvas side in pixels
        self.frames = frames  # frames per item
        self.clip_frames = clip  # frames of one clip of the world: the unit of its speeds (TRAVEL_RANGE), and the earlier clip a continuation starts from
        self.seed = seed  # base seed: item i uses np.random.default_rng([seed, i])
        self.length = length  # number of items (the world is infinite; this is an epoch)

    def __len__(self) -> int:
        return self.length

    def spec(self, index: int) -> tuple[ClipSpec, str]:
        """The clip spec and caption of item ``index``, without rendering. For a continuation item
        (:meth:`continuation`), the spec of its new part, which the caption describes."""
        spec, text, _past = self._draw(index)
        return spec, text

    def continuation(self, index: int) -> tuple[ClipSpec, int] | None:
        """For an item that continues an earlier clip: (the earlier clip's spec, how many of its
        last frames the item starts with); None for a plain clip."""
        return self._draw(index)[2]

    def past_of(self, index: int) -> int:
        """How many of item ``index``'s first frames show an earlier clip (a continuation's past); 0 for a plain clip."""
        if self.continue_share == 0 and 0 <= int(index) < self.length:  # no continuations: nothing to draw
            return 0
        earlier = self._draw(int(index))[2]
        return 0 if earlier is None else earlier[1]

    def _draw(self, index: int) -> tuple[ClipSpec, str, tuple[ClipSpec, int] | None]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for a data set of length {self.length}")
        rng = np.random.default_rng([self.seed, index])
        colour, shape, motion = self.combos[rng.integers(len(self.combos))]
        past = 0
        if self.continue_share > 0:  # a stream of its own: items of a data set without continuations are unchanged
            crng = np.random.default_rng([self.seed, index, 1])
            if crng.random() < self.continue_share:
                past = int(self.continue_past[crng.integers(len(self.continue_past))])
        if not past and self.clip_frames < self.frames:  # a plain item longer than a clip: one motion throughout, at a clip's speed
            spec = sample_spec(colour, shape, motion, rng, clips=(self.frames - 1) / (self.clip_frames - 1))
            return spec, draw_caption(spec, rng, self.wording), None
        spec = sample_spec(colour, shape, motion, rng)
        if past:
            nxt = continuation_of(spec, past, self.frames, crng, clip_frames=self.clip_frames)
            if nxt is not None:
                return nxt, draw_caption(nxt, rng, self.wording), (spec, past)
        return spec, draw_caption(spec, rng, self.wording), None

    def caption(self, index: int) -> str:
        """Item ``index``'s caption, without rendering."""
        return self.spec(int(index))[1]

    def __getitem__(self, index: int) -> dict:
        spec, text, earlier = self._draw(int(index))
        if earlier is None:
            clip = render_clip(spec, self.size, self.frames)  # (F, H, W, 3) uint8
        else:  # the earlier clip's last `past` frames, then the new motion's
            first, past = earlier
            new = self.frames - past
            clip = render_sequence([first, spec], [self.clip_frames, new], self.size)[self.clip_frames - past :]  # (F, H, W, 3)
        video = torch.from_numpy(clip).permute(3, 0, 1, 2).float().div_(127.5).sub_(1.0)  # (3, F, H, W)
        past = 0 if earlier is None else earlier[1]  # frames of the earlier clip it starts with
        return {"video": video, "caption": text, "colour": spec.colour, "shape": spec.shape, "motion": spec.motion, "past": past}


def continuation_of(spec: ClipSpec, past: int, frames: int, rng: np.random.Generator, clip_frames: int | None = None) -> ClipSpec | None:
    """The new part of a training item of ``frames`` frames that shows the last ``past`` frames of
    ``spec``'s clip (of ``clip_frames`` frames, default ``frames``), then ``frames - past`` frames
    of the same object going on with a motion drawn from those it has room for: what a long video's
    later window or an extension sees (its past, then what its prompt asks for). The new part moves
    at a clip's speed (a travel drawn from TRAVEL_RANGE per ``clip_frames - 1`` frames, shortened
    to the room left), and at least
    MIN_CONTINUE_TRAVEL, so that the judge sees the motion its caption names. None when the object
    has that much room for no motion (it sits in a corner)."""
    options = continuations(spec)
    if not options:
        return None
    motion = options[rng.integers(len(options))]
    travel = float(rng.uniform(*TRAVEL_RANGE)) * (frames - past) / ((clip_frames or frames) - 1)
    return continue_spec(spec, motion, travel=min(max(travel, MIN_CONTINUE_TRAVEL), room(spec, motion)))
