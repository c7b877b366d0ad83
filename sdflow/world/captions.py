"""Scenes, their captions, and the deterministic held-out split of attribute combinations.

A scene is (shape, shape colour, size, position, background colour) with shape colour != background.
Captions come from several templates with different word orders and filler words, so a model has to
read the attribute words themselves rather than memorise one sentence layout.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from dataclasses import dataclass

from .vocabulary import COLOURS, POSITIONS, SHAPES, SIZES


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    size: str
    position: str
    background: str

    def combo(self) -> tuple[str, str, str, str, str]:
        return (self.shape, self.colour, self.size, self.position, self.background)


# Every template names all five attributes: a caption that left one out would make that attribute
# unlearnable noise for the model and unmeasurable for the judge.
TEMPLATES: tuple[str, ...] = (
    "a {size} {colour} {shape} on the {position}, {background} background",
    "{size} {colour} {shape}, {position}, on {background}",
    "{size} {colour} {shape} at the {position} on a {background} background",
    "a {background} background with a {size} {colour} {shape} at the {position}",
    "{colour} {shape}, {size}, {position}, {background} background",
    "{background} background, {size} {colour} {shape} on the {position}",
    "a {size} {colour} {shape} over a {background} background, {position}",
    "picture of a {size} {colour} {shape} in the {position} against {background}",
    "{position}: {size} {colour} {shape} on {background}",
    "image of a {colour} {shape}, {size}, {position} side, {background} background",
)


def caption(scene: Scene, template: int = 0) -> str:
    """The caption of ``scene`` written with template number ``template`` (modulo the count)."""
    return TEMPLATES[template % len(TEMPLATES)].format(**scene.__dict__)


def all_scenes() -> list[Scene]:
    """Every valid attribute combination (shape colour differs from background), in a fixed order."""
    colours = list(COLOURS)
    return [
        Scene(shape, colour, size, position, background)
        for shape, colour, size, position, background in itertools.product(SHAPES, colours, SIZES, POSITIONS, colours)
        if colour != background
    ]


def is_held_out(scene: Scene) -> bool:
    """True for the ~10% of combinations never used in training.

    A content hash (not Python's salted ``hash``) so the split is the same in every process and
    on every machine: training and the benchmark must agree on it without sharing state.
    """
    digest = hashlib.sha256("|".join(scene.combo()).encode()).digest()
    return digest[0] % 10 == 0


def training_scenes() -> list[Scene]:
    return [s for s in all_scenes() if not is_held_out(s)]


def held_out_scenes() -> list[Scene]:
    return [s for s in all_scenes() if is_held_out(s)]


def random_training_example(rng: random.Random) -> tuple[str, Scene, int]:
    """A (caption, scene, render seed) drawn from the training combinations with a random template."""
    scene = rng.choice(_TRAINING_CACHE)
    return caption(scene, rng.randrange(len(TEMPLATES))), scene, rng.randrange(2**31)


def held_out_captions(n: int = 200) -> list[tuple[str, Scene, int]]:
    """``n`` (caption, scene, seed) triples over held-out combinations, the same on every call.

    Combinations are cycled in a fixed shuffled order and templates rotate, so every held-out
    combination appears before any repeats and wording varies across the set.
    """
    scenes = held_out_scenes()
    random.Random(1234).shuffle(scenes)
    out = []
    for i in range(n):
        scene = scenes[i % len(scenes)]
        out.append((caption(scene, i), scene, 1000 + i))
    return out


_TRAINING_CACHE = training_scenes()
