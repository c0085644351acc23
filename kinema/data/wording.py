"""Free wording for the shapes world: a wide training vocabulary and a vocabulary kept for evaluation.

The template captions of :mod:`kinema.data.shapes` name a colour, a shape and a motion with a
handful of words each. People do not write that way: "a cherry-coloured orb descends slowly" or
"the lavender pyramid shape travels east" name the same things with words the templates never
use. This module draws captions from many synonyms per colour, shape and motion, in many sentence
frames, word orders and with filler, and keeps a second vocabulary (``EVAL_*``) that no training
caption uses, for ``kinema eval --style unseen-words``: a model that follows those prompts learned
what the words mean from its frozen text encoder, not which words the training set used.

Words are compared as lower-case runs of letters (``words()``); ``check_vocabularies()`` proves
that no word of an evaluation-only phrase occurs in any training phrase, and the tests call it.
"""

from __future__ import annotations

import re

import numpy as np

# ------------------------------------------------------------------------------------------------
# Training vocabulary
# ------------------------------------------------------------------------------------------------
COLOUR_WORDS: dict[str, tuple[str, ...]] = {
    "red": ("red", "scarlet", "crimson", "ruby", "ruby-red", "tomato-red", "bright red", "fire-engine red", "rosy red"),
    "green": ("green", "emerald", "lime", "lime-green", "grass-green", "leaf-green", "bright green", "emerald-green"),
    "blue": ("blue", "azure", "cobalt", "cobalt-blue", "royal blue", "deep blue", "ultramarine", "bright blue"),
    "yellow": ("yellow", "golden", "gold", "lemon", "lemon-yellow", "sunny yellow", "bright yellow", "gold-coloured"),
    "purple": ("purple", "violet", "amethyst", "grape-coloured", "deep purple", "bright purple", "violet-purple"),
    "cyan": ("cyan", "turquoise", "aqua", "aqua-coloured", "bright cyan", "light turquoise", "cyan-blue"),
    "orange": ("orange", "tangerine", "amber", "pumpkin-coloured", "carrot-coloured", "bright orange", "deep orange"),
    "white": ("white", "snow-white", "ivory", "milky white", "pure white", "bright white", "off-white"),
}
SHAPE_PHRASES: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc", "disk", "ball", "dot", "round shape", "circular shape", "round blob", "round object"),
    "square": ("square", "box", "block", "square shape", "squared shape", "square block", "boxy shape", "square object"),
    "triangle": ("triangle", "wedge", "triangular shape", "upright triangle", "triangular block", "triangle shape", "pointy triangle", "triangular object"),
}
# Motion as a gerund ("is moving left") and as a finite verb ("moves left"), direction included.
_GERUNDS = ("moving", "going", "drifting", "sliding", "travelling", "gliding", "heading", "shifting", "floating", "rolling")
_FINITES = ("moves", "goes", "drifts", "slides", "travels", "glides", "heads", "shifts", "floats", "rolls")
_DIRECTIONS: dict[str, tuple[str, ...]] = {
    "left": ("left", "leftward", "leftwards", "to the left", "towards the left", "to the left side", "along to the left"),
    "right": ("right", "rightward", "rightwards", "to the right", "towards the right", "to the right side", "along to the right"),
    "up": ("up", "upward", "upwards", "towards the top", "to the top", "up the screen", "toward the top edge"),
    "down": ("down", "downward", "downwards", "towards the bottom", "to the bottom", "down the screen", "toward the bottom edge"),
}
_OWN_GERUNDS: dict[str, tuple[str, ...]] = {  # phrases that carry their direction in the verb
    "left": ("crossing from right to left", "passing from right to left"),
    "right": ("crossing from left to right", "passing from left to right"),
    "up": ("rising", "climbing", "lifting", "rising up", "climbing upwards"),
    "down": ("falling", "sinking", "dropping", "falling down", "sinking downwards"),
}
_OWN_FINITES: dict[str, tuple[str, ...]] = {
    "left": ("crosses from right to left", "passes from right to left"),
    "right": ("crosses from left to right", "passes from left to right"),
    "up": ("rises", "climbs", "lifts", "rises up", "climbs upwards"),
    "down": ("falls", "sinks", "drops", "falls down", "sinks downwards"),
}
MANNERS: tuple[str, ...] = ("", "", "", "slowly", "steadily", "quickly", "smoothly", "gradually", "at a constant speed")
SIZES: tuple[str, ...] = ("", "", "", "small", "little", "single", "plain", "flat", "solid")
# Sentence frames: {c} colour, {s} shape phrase, {g} gerund motion phrase, {f} finite motion phrase.
FRAMES: tuple[str, ...] = (
    "a {c} {s} {g}",
    "a {c} {s} {f}",
    "the {c} {s} {f}",
    "the {c} {s} is {g}",
    "{c} {s} {g}",
    "a {s}, {c}, {g}",
    "a {s} in {c} {g}",
    "a {s} coloured {c} {g}",
    "a {c}-coloured {s} {g}",
    "there is a {c} {s} {g}",
    "{g}: a {c} {s}",
    "a video of a {c} {s} {g}",
    "a clip showing a {c} {s} that {f}",
    "animation of a {c} {s} {g} on a dark background",
    "one {c} {s} {g} across a black screen",
    "we see a {c} {s} as it {f}",
    "a {c} {s} that {f}",
    "the {s} is {c} and it {f}",
    "a {s} which is {c}, {g}",
)

# ------------------------------------------------------------------------------------------------
# Evaluation-only vocabulary: no word of these phrases occurs in any training caption
# ------------------------------------------------------------------------------------------------
EVAL_COLOUR_WORDS: dict[str, tuple[str, ...]] = {
    "red": ("cherry-coloured", "vermilion", "cherry"),
    "green": ("jade", "fern-coloured", "shamrock"),
    "blue": ("sapphire", "cornflower", "denim-coloured"),
    "yellow": ("canary", "mustard", "banana-coloured"),
    "purple": ("lavender", "plum", "lilac"),
    "cyan": ("teal", "aquamarine", "teal-coloured"),
    "orange": ("apricot", "mandarin", "apricot-coloured"),
    "white": ("pearl", "alabaster", "chalk-coloured"),
}
EVAL_SHAPE_PHRASES: dict[str, tuple[str, ...]] = {
    "circle": ("orb", "sphere", "coin"),
    "square": ("tile", "cube", "four-sided figure"),
    "triangle": ("pyramid", "pyramid shape", "three-sided figure"),
}
EVAL_MOTIONS: dict[str, tuple[str, ...]] = {  # finite verbs
    "left": ("travels west", "journeys westward", "wanders west"),
    "right": ("travels east", "journeys eastward", "wanders east"),
    "up": ("ascends", "soars", "journeys north"),
    "down": ("descends", "plummets", "journeys south"),
}
EVAL_FRAMES: tuple[str, ...] = (
    "a {c} {s} {f}",
    "the {c} {s} {f} slowly",
    "look, a {c} {s} {f}",
    "in this scene a {c} {s} {f}",
)

WORD = re.compile(r"[a-z]+")
PLACEHOLDER = re.compile(r"\{[a-z]\}")  # a template's slot: {c} colour, {s} shape, {g} / {f} / {v} / {d} motion


def words(text: str) -> set[str]:
    """The words of a text: lower-case runs of letters ("cherry-coloured" -> {"cherry", "coloured"})."""
    return set(WORD.findall(text.lower()))


def wide_caption(colour: str, shape: str, motion: str, rng: np.random.Generator) -> str:
    """A training caption drawn from the wide vocabulary (frame, synonyms, word order, filler)."""
    frame = FRAMES[rng.integers(len(FRAMES))]
    c = COLOUR_WORDS[colour][rng.integers(len(COLOUR_WORDS[colour]))]
    s = SHAPE_PHRASES[shape][rng.integers(len(SHAPE_PHRASES[shape]))]
    size = SIZES[rng.integers(len(SIZES))]
    manner = MANNERS[rng.integers(len(MANNERS))]
    g_all = [f"{v} {d}" for v in _GERUNDS for d in _DIRECTIONS[motion]] + list(_OWN_GERUNDS[motion])
    f_all = [f"{v} {d}" for v in _FINITES for d in _DIRECTIONS[motion]] + list(_OWN_FINITES[motion])
    pick = int(rng.integers(len(g_all)))
    g, f = g_all[pick], f_all[pick]
    if manner:
        g, f = f"{g} {manner}", f"{f} {manner}"
    if size and frame.count("{c} {s}"):
        frame = frame.replace("{c} {s}", f"{size} {{c}} {{s}}", 1)
    return " ".join(frame.format(c=c, s=s, g=g, f=f).split())


def unseen_words_caption(colour: str, shape: str, motion: str, variant: int = 0) -> str:
    """An evaluation prompt in words no training caption uses (``variant`` cycles through the choices)."""
    v = int(variant)
    c = EVAL_COLOUR_WORDS[colour][v % len(EVAL_COLOUR_WORDS[colour])]
    s = EVAL_SHAPE_PHRASES[shape][(v // 3) % len(EVAL_SHAPE_PHRASES[shape])]
    f = EVAL_MOTIONS[motion][(v // 9) % len(EVAL_MOTIONS[motion])]
    frame = EVAL_FRAMES[v % len(EVAL_FRAMES)]
    return frame.format(c=c, s=s, f=f)


def training_words() -> set[str]:
    """Every word any training caption (wide or template) can contain."""
    from .shapes import DIRECTION_WORDS, SHAPE_WORDS, TEMPLATES, VERBS

    parts: list[str] = [*FRAMES, *MANNERS, *SIZES, *_GERUNDS, *_FINITES, *TEMPLATES, *VERBS]
    for table in (COLOUR_WORDS, SHAPE_PHRASES, _DIRECTIONS, _OWN_GERUNDS, _OWN_FINITES, SHAPE_WORDS, DIRECTION_WORDS):
        for phrases in table.values():
            parts.extend(phrases)
    parts.extend(COLOUR_WORDS)  # the template captions name the palette colours themselves
    return set().union(*(words(PLACEHOLDER.sub(" ", p)) for p in parts))


def check_vocabularies() -> None:
    """Raise if an evaluation-only phrase shares a word that carries meaning with training captions.

    The words that name the colour, shape or motion in an evaluation phrase must all be unseen;
    connecting words of the evaluation frames ("a", "the", "in") may be shared.
    """
    seen = training_words()
    for table in (EVAL_COLOUR_WORDS, EVAL_SHAPE_PHRASES, EVAL_MOTIONS):
        for name, phrases in table.items():
            for phrase in phrases:
                shared = words(phrase) & seen - _SHARED_OK
                if shared:
                    raise AssertionError(f"evaluation phrase {phrase!r} ({name}) uses training words {sorted(shared)}")


# Words an evaluation phrase may share with training: they say nothing of colour, shape or motion.
_SHARED_OK = frozenset({"coloured", "shape", "travels"})
