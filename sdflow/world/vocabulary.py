"""Words and attribute values of the shapes world, and the full word list its tokenizer needs."""

from __future__ import annotations

import re

# Palette: RGB values far apart so a nearest-colour read survives blur and VAE error.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (240, 230, 40),
    "orange": (245, 140, 20),
    "purple": (140, 40, 170),
    "white": (250, 250, 250),
    "black": (10, 10, 10),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "center")

# Filler words used by the caption templates (captions.py). Kept here so that the tokenizer and
# ``unknown_words`` agree with what captions can contain.
FILLER: tuple[str, ...] = (
    "a", "an", "the", "on", "at", "in", "of", "with", "and", "background", "middle", "side",
    "picture", "image", "shape", "colored", "coloured", "over", "against",
)


def world_words() -> list[str]:
    """Every word the world's captions use, each of which the tokenizer makes one token."""
    words = list(COLOURS) + list(SHAPES) + list(SIZES) + list(POSITIONS) + list(FILLER)
    return sorted(set(words))


_WORD = re.compile(r"[a-z]+")


def unknown_words(prompt: str) -> list[str]:
    """Words of ``prompt`` outside the world's vocabulary, in order of first appearance.

    Punctuation and digits are ignored (the tokenizer handles them as characters). The CLI warns
    with this list: the default model has never seen these words, so they only add noise.
    """
    known = set(world_words())
    seen: list[str] = []
    for word in _WORD.findall(prompt.lower()):
        if word not in known and word not in seen:
            seen.append(word)
    return seen
