"""The miniature's world: the colours and shapes images are made of, which compositions pretraining never sees,
and the captions that describe an image.

Every colour and shape name starts with a consonant, so "a photo of a {colour} {shape}." — the prompt CoOp and
KgCoOp start from — is grammatical for every class.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Object colours (name, RGB). Chosen to stay apart from each other and from the grey pretraining backgrounds.
COLOURS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("red", (215, 35, 35)),
    ("yellow", (235, 215, 40)),
    ("green", (40, 160, 60)),
    ("cyan", (40, 200, 215)),
    ("blue", (40, 75, 215)),
    ("purple", (125, 45, 180)),
    ("pink", (245, 135, 190)),
    ("brown", (125, 75, 35)),
    ("white", (245, 245, 245)),
    ("black", (20, 20, 20)),
    ("magenta", (220, 30, 215)),
)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "diamond", "cross", "ring")

COLOUR_NAMES: tuple[str, ...] = tuple(name for name, _ in COLOURS)
COLOUR_RGB = np.array([rgb for _, rgb in COLOURS], dtype=np.float32)
NUM_COMPOSITIONS = len(COLOURS) * len(SHAPES)

#: Compositions (colour index, shape index) left out of pretraining: (i, i) for every shape, so each held-out
#: composition's colour and shape are both seen, just never together — the zero-shot probe on these measures
#: compositional generalisation, not recognition of a new word.
HELD_OUT: tuple[tuple[int, int], ...] = tuple((i, i) for i in range(len(SHAPES)))

#: Background kinds. Pretraining uses the grey ones; the downstream domain uses kinds pretraining never shows.
BACKGROUNDS: tuple[str, ...] = ("plain", "striped", "dotted", "checkered", "blotchy")
PRETRAIN_BACKGROUNDS: tuple[int, ...] = (0, 1, 2)
#: How captions name the pretraining backgrounds.
BACKGROUND_WORDS: dict[int, str] = {0: "plain grey", 1: "striped", 2: "dotted"}

SIZES: tuple[str, ...] = ("small", "large")
SIZE_WORDS: dict[int, tuple[str, ...]] = {0: ("small", "tiny"), 1: ("large", "big")}
#: Position phrases of the 3 x 3 anchor grid, row-major (see ``render._placement``).
POSITIONS: tuple[str, ...] = (
    "at the top left", "at the top", "at the top right",
    "on the left", "in the centre", "on the right",
    "at the bottom left", "at the bottom", "at the bottom right",
)

#: Caption templates. Slots: {c} colour, {s} shape, {z} size word, {b} background word, {p} position phrase.
TEMPLATES: tuple[str, ...] = (
    "a photo of a {c} {s}.",
    "a {c} {s}.",
    "a picture of a {c} {s}.",
    "an image of a {c} {s}.",
    "a drawing of a {c} {s}.",
    "a close-up photo of a {c} {s}.",
    "a {c} {s} shape.",
    "{c} {s}.",
    "a {z} {c} {s}.",
    "a photo of a {z} {c} {s}.",
    "a {c} {s} on a {b} background.",
    "a {z} {c} {s} on a {b} background.",
    "a rendering of a {c} {s} on a {b} background.",
    "a {c} {s} {p}.",
    "there is a {c} {s} {p}.",
    "a {z} {c} {s} {p}.",
)


@dataclass(frozen=True)
class Composition:
    colour: int
    shape: int

    @property
    def name(self) -> str:
        return f"{COLOUR_NAMES[self.colour]} {SHAPES[self.shape]}"


def all_compositions() -> list[Composition]:
    """Every colour x shape composition, colour-major (index = colour * len(SHAPES) + shape)."""
    return [Composition(c, s) for c in range(len(COLOURS)) for s in range(len(SHAPES))]


def seen_compositions() -> list[Composition]:
    held = set(HELD_OUT)
    return [k for k in all_compositions() if (k.colour, k.shape) not in held]


def held_out_compositions() -> list[Composition]:
    return [Composition(c, s) for c, s in HELD_OUT]


def composition_index(colour: int, shape: int) -> int:
    return colour * len(SHAPES) + shape


def caption(template: int, colour: int, shape: int, size: int, size_word: int, background: int, position: int) -> str:
    return TEMPLATES[template].format(
        c=COLOUR_NAMES[colour],
        s=SHAPES[shape],
        z=SIZE_WORDS[size][size_word],
        b=BACKGROUND_WORDS[background],
        p=POSITIONS[position],
    )
