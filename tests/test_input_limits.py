"""Input images and output sizes held to runtime.max_pixels, and image files decoded whole, before anything loads.

A 20000x20000 PNG bomb, an image a pixel over the limit, a truncated JPEG, an output size over the limit: each a
validation error naming the node and the field, with no run folder made and no model loaded; the message says how
to raise the limit, and raising it lets the same run through.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from sdflow.api import run_workflow
from sdflow.engine import ValidationError
from sdflow.nodes.runtime_facts import check_runtime

TINY = ["model=tiny", "steps=2", "seed=0"]


def png_claiming(path, width: int, height: int) -> None:
    """A small valid PNG whose header claims width x height (a decompression bomb's shape: only its header is read)."""
    Image.new("L", (8, 8)).save(path)
    data = bytearray(path.read_bytes())
    start = data.index(b"IHDR")
    data[start + 4:start + 12] = struct.pack(">II", width, height)
    data[start + 17:start + 21] = struct.pack(">I", zlib.crc32(bytes(data[start:start + 17])))
    path.write_bytes(bytes(data))


def refused(tmp_path, workflow: str, overrides: list[str]) -> ValidationError:
    from sdflow.engine import ComponentCache

    cache = ComponentCache()
    with pytest.raises(ValidationError) as caught:
        run_workflow(workflow, overrides, output_dir=tmp_path / "never", cache=cache)
    assert not (tmp_path / "never").exists() and not cache.keys()  # no run folder, nothing loaded
    return caught.value


@pytest.mark.parametrize("size", [(20000, 20000), (4097, 4096)])
def test_an_image_over_the_pixel_limit_is_refused_from_its_header(tmp_path, size):
    image = tmp_path / "big.png"
    png_claiming(image, *size)
    error = refused(tmp_path, "img2img", TINY + [f"image={image}"])
    ((problem),) = error.problems
    assert problem.node == "input" and problem.field == "path"
    if size[0] * size[1] > Image.MAX_IMAGE_PIXELS * 2:  # PIL refuses the header itself: its size goes unread
        assert "has 400,000,000 pixels, over the limit of 16,777,216 pixels (runtime.max_pixels" in str(error)
    else:
        assert f"is {size[0]}x{size[1]} ({size[0] * size[1]:,} pixels), over the limit of 16,777,216 pixels" in str(error)
        assert f"runtime.max_pixels={size[0] * size[1]}" in str(error)


def test_a_truncated_jpeg_is_refused_before_anything_loads(tmp_path):
    image = tmp_path / "cut.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(image, quality=95)
    whole = image.read_bytes()
    image.write_bytes(whole[:len(whole) // 2])
    error = refused(tmp_path, "img2img", TINY + [f"image={image}"])
    assert "node 'input'" in str(error) and "is not a readable image" in str(error) and "truncated" in str(error)


def test_an_output_size_over_the_limit_is_refused_and_raising_the_limit_lets_it_run(tmp_path):
    error = refused(tmp_path, "text2img", TINY + ["width=128", "height=96", "runtime.max_pixels=8192"])
    assert "node 'noise'" in str(error) and "field 'width'" in str(error)
    assert "the output size is 128x96 (12,288 pixels), over the limit of 8,192 pixels" in str(error)
    result = run_workflow("text2img", TINY + ["width=128", "height=96", "runtime.max_pixels=12288"],
                          output_dir=tmp_path / "ran")
    assert Image.open(result.saved[0]).size == (128, 96)


def test_an_image_under_a_raised_limit_runs(tmp_path):
    image = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 96, 3), dtype=np.uint8)).save(image)
    refused(tmp_path, "img2img", TINY + [f"image={image}", "runtime.max_pixels=4096"])
    result = run_workflow("img2img", TINY + [f"image={image}", "runtime.max_pixels=6144"], output_dir=tmp_path / "ran")
    assert Image.open(result.saved[0]).size == (96, 64)


@pytest.mark.parametrize("value", [0, 100, "lots", True, 2.5])
def test_the_pixel_limit_itself_is_checked(value):
    (problem,) = check_runtime({"max_pixels": value})
    assert problem.field == "runtime.max_pixels" and "null: no limit" in problem.message
    assert check_runtime({"max_pixels": None}) == [] and check_runtime({"max_pixels": 4096}) == []


def test_an_image_checked_once_is_checked_again_when_the_file_changes(tmp_path):
    # Decoding is remembered per file version (a sweep's jobs share their input image): a file cut short after a
    # first run is refused, not passed on the earlier result.
    from sdflow.api import compose_config, plan_workflow

    image = tmp_path / "in.jpg"
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(image, quality=95)
    plan_workflow(compose_config(TINY + [f"image={image}"]), "img2img")
    image.write_bytes(image.read_bytes()[:2000])
    with pytest.raises(ValidationError, match="truncated"):
        plan_workflow(compose_config(TINY + [f"image={image}"]), "img2img")
