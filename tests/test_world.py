"""The shapes world: vocabulary, captions, held-out split, renderer, judge, tokenizer, trained model."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import ImageFilter

from sdflow.world.captions import (
    TEMPLATES,
    Scene,
    all_scenes,
    caption,
    held_out_captions,
    held_out_scenes,
    is_held_out,
    training_scenes,
)
from sdflow.world.judge import ATTRIBUTES, accuracy, judge
from sdflow.world.render import render
from sdflow.world.vocabulary import COLOURS, POSITIONS, SHAPES, SIZES, unknown_words, world_words

SHAPES_MODEL = Path(__file__).resolve().parents[1] / "sdflow" / "models" / "shapes"


def _sample(n: int, seed: int) -> list[tuple[Scene, int]]:
    rng = random.Random(seed)
    scenes = all_scenes()
    return [(rng.choice(scenes), rng.randrange(10**6)) for _ in range(n)]


def test_palette_colours_far_apart():
    for (a, ca), (b, cb) in itertools.combinations(COLOURS.items(), 2):
        assert np.linalg.norm(np.subtract(ca, cb)) > 90, (a, b)


def test_judge_reads_clean_renders_exactly():
    items = _sample(300, 0)
    readings = [judge(render(s, seed)) for s, seed in items]
    acc = accuracy(readings, [s for s, _ in items])
    assert acc["all"] == 1.0, acc


def test_judge_reads_blurred_renders():
    items = _sample(300, 1)
    readings = [judge(render(s, seed).filter(ImageFilter.GaussianBlur(1))) for s, seed in items]
    acc = accuracy(readings, [s for s, _ in items])
    assert all(acc[a] >= 0.99 for a in ATTRIBUTES), acc


def test_judge_reads_256px_renders():
    items = _sample(60, 2)
    readings = [judge(render(s, seed, 256)) for s, seed in items]
    assert accuracy(readings, [s for s, _ in items])["all"] == 1.0


def test_judge_sees_no_shape_on_blank_image():
    from PIL import Image

    reading = judge(Image.new("RGB", (64, 64), COLOURS["blue"]))
    assert reading.background == "blue" and reading.shape is None


def test_render_is_deterministic_and_seed_dependent():
    scene = Scene("circle", "red", "large", "left", "blue")
    assert np.array_equal(np.asarray(render(scene, 5)), np.asarray(render(scene, 5)))
    assert any(not np.array_equal(np.asarray(render(scene, 5)), np.asarray(render(scene, s))) for s in range(6, 12))


def test_scenes_never_draw_shape_in_background_colour():
    scenes = all_scenes()
    assert len(scenes) == len(SHAPES) * len(SIZES) * len(POSITIONS) * len(COLOURS) * (len(COLOURS) - 1)
    assert all(s.colour != s.background for s in scenes)


def test_every_caption_names_every_attribute_in_known_words():
    scene = Scene("triangle", "purple", "small", "bottom", "white")
    texts = {caption(scene, k) for k in range(len(TEMPLATES))}
    assert len(texts) == len(TEMPLATES)  # templates differ
    for text in texts:
        words = text.replace(",", " ").replace(":", " ").split()
        for value in ("triangle", "purple", "small", "bottom", "white"):
            assert value in words, text
        assert unknown_words(text) == [], text


def test_unknown_words():
    assert unknown_words("A big Red circle, left; blue dragon!") == ["big", "dragon"]
    assert unknown_words("small green square at the top on a black background") == []


def test_held_out_split_is_disjoint_and_covers_every_value():
    train, held = training_scenes(), held_out_scenes()
    assert not set(train) & set(held)
    assert len(train) + len(held) == len(all_scenes())
    assert 0.05 < len(held) / len(all_scenes()) < 0.15
    for attr, values in [("shape", SHAPES), ("colour", COLOURS), ("size", SIZES), ("position", POSITIONS), ("background", COLOURS)]:
        assert {getattr(s, attr) for s in train} == set(values)


def test_held_out_captions_are_fixed_and_held_out():
    first, second = held_out_captions(200), held_out_captions(200)
    assert first == second and len(first) == 200
    assert all(is_held_out(scene) for _, scene, _ in first)
    assert len({scene for _, scene, _ in first}) == len(held_out_scenes())  # every held-out combo used


def test_tokenizer_gives_one_token_per_world_word(tmp_path):
    from transformers import CLIPTokenizer

    from sdflow.world.tokenizer import write_world_tokenizer

    eos = write_world_tokenizer(tmp_path)
    tok = CLIPTokenizer.from_pretrained(tmp_path)
    assert tok.eos_token_id == eos != 2
    for word in world_words():
        assert len(tok(word, add_special_tokens=False).input_ids) == 1, word
    ids = tok("a small red circle on the left, blue background", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77 and ids[0] == tok.bos_token_id
    assert eos not in ids[1:10]  # no word fell back to <|endoftext|>


# The committed CPU-trained weights (bench/default_model_accuracy.py, docs/default_model.md) read
# right on held-out captions: position 84%, size 79%, shape 62.5%, colour 42.5%, background 26%.
# Only position and size are reliable enough to assert, and only as a majority over several
# fixed seeds, not per image; colours and background are NOT asserted (a GPU retrain is needed).
@pytest.mark.skipif(not (SHAPES_MODEL / "model_index.json").exists(), reason="shapes weights not built")
def test_trained_shapes_model_follows_position_and_size_words():
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(SHAPES_MODEL, torch_dtype=torch.float32, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    positions = ["left", "right", "top", "bottom"]
    scenes = [Scene(shape, "white", size, pos, "black")
              for pos in positions for shape, size in [("circle", "large"), ("square", "small")]]
    readings = []
    for i, scene in enumerate(scenes):
        image = pipe(caption(scene, 0), num_inference_steps=20, guidance_scale=4.0, height=64, width=64,
                     generator=torch.Generator().manual_seed(i)).images[0]
        readings.append(judge(image))
    position_right = sum(r.position == s.position for r, s in zip(readings, scenes))
    size_right = sum(r.size == s.size for r, s in zip(readings, scenes))
    assert position_right >= 6, [(s.position, r.position) for r, s in zip(readings, scenes)]
    assert size_right >= 5, [(s.size, r.size) for r, s in zip(readings, scenes)]
