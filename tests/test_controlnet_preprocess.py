"""Control maps made offline: canny edges (numpy, thresholds as parameters) and DPT depth (as transformers'
depth-estimation pipeline gives it), saved beside the images when asked, and the canny map taken by the
controlnet workflow exactly as diffusers' StableDiffusionControlNetPipeline takes the same map."""

from __future__ import annotations

import diffusers
import numpy as np
import pytest
from PIL import Image

from parity import as_nhwc, assert_parity, generators
from sdflow.api import run_workflow
from sdflow.nodes.control_preprocess import canny, dpt_depth


def square(size=32, box=(8, 8, 24, 24), value=255) -> Image.Image:
    array = np.zeros((size, size, 3), dtype=np.uint8)
    left, top, right, bottom = box
    array[top:bottom, left:right] = value
    return Image.fromarray(array)


def edge_mask(image: Image.Image) -> np.ndarray:
    return np.asarray(image)[..., 0] > 0


def test_canny_draws_a_squares_outline_one_pixel_wide():
    edges = edge_mask(canny(square(), 100, 200))
    assert set(np.unique(np.asarray(canny(square(), 100, 200)))) == {0, 255}
    ys, xs = np.nonzero(edges)
    # every edge pixel lies on the step between inside (8..23) and outside, none in the flat areas
    on_border = (np.minimum(np.abs(xs - 7.5), np.abs(xs - 23.5)) <= 1) | (np.minimum(np.abs(ys - 7.5), np.abs(ys - 23.5)) <= 1)
    assert on_border.all()
    assert not edges[12:20, 12:20].any() and not edges[:5].any()
    # thinned: along each side one edge pixel per row/column, not the two of the raw gradient
    assert edges[16, :16].sum() == 1 and edges[16, 16:].sum() == 1 and edges[:16, 16].sum() == 1


def test_canny_thresholds_decide_which_edges_count():
    faint = square(value=40)  # L1 Sobel magnitude of a 40-step: 160 along its sides, up to 240 at its corners
    assert edge_mask(canny(faint, 100, 150)).any()
    assert not edge_mask(canny(faint, 100, 250)).any()  # no pixel strong enough to start an edge


def test_canny_hysteresis_keeps_weak_edges_joined_to_strong_ones():
    array = np.zeros((32, 48, 3), dtype=np.uint8)
    array[:, 8:20] = 40  # a faint band (its sides' magnitude 160)...
    array[:8, 8:20] = 100  # ...whose top is bright (magnitude 400: strong)
    array[12:24, 32:44] = 40  # and a faint square joined to nothing strong (at most 240)
    edges = edge_mask(canny(Image.fromarray(array), 100, 300))
    assert edges[16:28, 6:10].any(axis=1).all()  # the faint side of the band, kept through its strong top
    assert not edges[:, 28:].any()  # the lone faint square, dropped


@pytest.fixture(scope="module")
def tiny_depth_parts():
    import transformers

    from sdflow.models.builtin import builtin_model

    folder = builtin_model("tiny-depth")
    estimator = transformers.DPTForDepthEstimation.from_pretrained(folder / "depth_estimator").eval()
    processor = transformers.AutoImageProcessor.from_pretrained(folder / "feature_extractor")
    return estimator, processor


def test_depth_map_is_transformers_depth_estimation_pipelines(tiny_depth_parts):
    import transformers

    estimator, processor = tiny_depth_parts
    picture = Image.fromarray(np.random.default_rng(3).integers(0, 255, (40, 56, 3), dtype=np.uint8))
    ours = np.asarray(dpt_depth(picture, estimator, processor))
    pipeline = transformers.pipeline("depth-estimation", model=estimator, image_processor=processor)
    theirs = np.asarray(pipeline(picture)["depth"])
    assert ours.shape == (40, 56, 3) and (ours[..., 0] == theirs).all()
    assert ours.min() == 0 and ours.max() == 255  # the map spans black to white: not a flat, blind one


def test_canny_map_saved_beside_the_images_and_taken_as_diffusers_takes_it(tiny_sd, tmp_path):
    from sdflow.models.tiny_controlnet import build_controlnet

    controlnet = build_controlnet(tiny_sd, tmp_path / "cn")
    picture = Image.fromarray(np.where(np.asarray(square(size=48, box=(10, 6, 40, 30))) > 0, 30, 220).astype(np.uint8))
    picture.save(tmp_path / "picture.png")
    result = run_workflow("controlnet", ["model=tiny", f"controlnet={controlnet}", f"control_image={tmp_path / 'picture.png'}",
                                         "control_preprocess=canny", "canny_low=50", "canny_high=150", "save_control=true",
                                         "steps=3", "seed=2", "prompt=a red circle"], output_dir=tmp_path / "out")
    saved = [p for p in result.saved if p.name.startswith("control_image")]
    assert len(saved) == 1, result.saved
    edges = canny(picture, 50, 150)
    processor = diffusers.image_processor.VaeImageProcessor(vae_scale_factor=2, do_convert_rgb=True,
                                                            do_normalize=False)
    expected = processor.pt_to_numpy(processor.preprocess(edges, height=64, width=64))[0]
    assert (np.asarray(Image.open(saved[0])) == (expected * 255).round().astype(np.uint8)).all()
    pipe = diffusers.StableDiffusionControlNetPipeline.from_pretrained(
        tiny_sd, controlnet=diffusers.ControlNetModel.from_pretrained(controlnet), safety_checker=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)

    def theirs(image):
        return pipe(prompt="a red circle", image=image, width=64, height=64, num_inference_steps=3,
                    generator=generators([2]), output_type="np").images

    assert_parity(as_nhwc(result.outputs["decode"]["image"].pixels), theirs(edges), theirs(picture))


def test_a_depth_map_from_a_depth_models_dpt_through_the_workflow(tiny_sd, tiny_depth_parts, tmp_path):
    import yaml

    from sdflow.models.tiny_controlnet import build_controlnet
    from sdflow.workflows import WORKFLOWS_DIR

    workflow = yaml.safe_load((WORKFLOWS_DIR / "controlnet.yaml").read_text())
    workflow["nodes"]["dpt"] = {"type": "load_model", "source": "builtin:tiny-depth"}
    workflow["nodes"]["control_image"].update(depth_estimator="dpt.depth_estimator",
                                              feature_extractor="dpt.feature_extractor")
    path = tmp_path / "controlnet_depth.yaml"
    path.write_text(yaml.safe_dump(workflow, sort_keys=False))
    picture = Image.fromarray(np.random.default_rng(4).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    picture.save(tmp_path / "picture.png")
    result = run_workflow(str(path), ["model=tiny", f"controlnet={build_controlnet(tiny_sd, tmp_path / 'cn')}",
                                      f"control_image={tmp_path / 'picture.png'}", "control_preprocess=depth",
                                      "save_control=true", "steps=2"], output_dir=tmp_path / "out")
    saved = next(p for p in result.saved if p.name.startswith("control_image"))
    assert (np.asarray(Image.open(saved)) == np.asarray(dpt_depth(picture, *tiny_depth_parts))).all()


def test_canny_of_a_colour_image_takes_each_pixels_strongest_channel():
    # red 200 | green 200: no grey level jumps much (0.299*200 vs 0.587*200), each channel jumps by 200
    array = np.zeros((32, 32, 3), dtype=np.uint8)
    array[:, :16, 0] = 200
    array[:, 16:, 1] = 200
    edges = edge_mask(canny(Image.fromarray(array), 300, 600))  # magnitude 800 in either channel
    assert edges[:, 14:18].any(axis=1).all() and edges.sum() == 32
