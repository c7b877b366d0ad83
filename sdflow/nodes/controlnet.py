"""ControlNet: load_controlnet, control_image (a picture or a canny/depth map, prepared) and controlnet (apply).

Read beside diffusers' StableDiffusionControlNetPipeline: the control image goes through its
``control_image_processor`` (RGB, resized, not normalized); each ControlNet sees the denoise loop's latents, its
image and the prompt, and its residuals are added to the UNet's (denoise.py). Several ControlNets chain through
``control``: each controlnet node appends its condition to the list it is given, as MultiControlNetModel sums them.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..engine import Input, ModelSourceError, Param, RunContext, node
from ..models.model_source import hub_offline, hub_problem, read_json
from ..models.single_file import is_pickle, load_checkpoint, tensor_shapes
from ..models.weight_files import safetensors_problem, weights_problem
from .control_preprocess import canny, dpt_depth
from .images import check_image_file, open_image, over_max_pixels, pixels_to_pil
from .load_model import model_load
from .offload import offloaded
from .records import ControlNetUse, ModelLoad
from .types import (CONTROL, CONTROLNET, DEPTH_ESTIMATOR, IMAGE, IMAGE_PROCESSOR, VAE, ControlFacts, ControlNetCondition,
                    ControlNetFacts, ImageFacts, Images, VAEFacts)

RESIZE_MODES = ("default", "fill", "crop")  # diffusers' VaeImageProcessor.resize modes
PREPROCESSORS = ("none", "canny", "depth")


def config_folder(source: str, config: str = "") -> Path | None:
    """The folder holding a ControlNet's config.json: ``config`` when given, the source folder, a model folder's
    controlnet/, the folder beside a single file, or a cached hub id (None: not found here)."""
    if config:
        return Path(os.path.expanduser(config))
    path = Path(os.path.expanduser(source))
    places = [path.parent] if path.is_file() else [path, path / "controlnet"]
    for folder in places:
        if (folder / "config.json").is_file():
            return folder
    if not path.exists():
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(source, "config.json")
            return Path(found).parent if isinstance(found, str) else None
        except Exception:  # a malformed id: not cached; loading says why
            return None
    return None


def controlnet_facts(source: str, config: dict) -> ControlNetFacts:
    """What must match the UNet, from a ControlNet's config.json."""
    embedding = config.get("conditioning_embedding_out_channels") or (16, 32, 96, 256)  # diffusers' default
    return ControlNetFacts(source, in_channels=config.get("in_channels"),
                           cross_attention_dim=config.get("cross_attention_dim"),
                           addition_embed_type=config.get("addition_embed_type"), downscale=2 ** (len(embedding) - 1),
                           global_pool_conditions=config.get("global_pool_conditions"))


def check_load_controlnet(params, inputs_meta, ctx):
    source, allow_pickle = params["source"], params["allow_pickle"]
    if not source.strip():  # (an empty path would be the current folder)
        ctx.problem("source", "no ControlNet given: set it to a diffusers ControlNet folder, a hub id (e.g. "
                    "lllyasviel/sd-controlnet-canny) or a .safetensors file" + ctx.config_hint("source"))
        return {}
    path = Path(os.path.expanduser(source))
    if path.is_file():
        if is_pickle(path) and not allow_pickle:
            ctx.problem("source", f"ControlNet '{source}' is a pickle file, which sdflow refuses by default because "
                        "loading it can run code: use its .safetensors version, or allow_pickle=true if you trust it")
            return {}
        problem = None if is_pickle(path) else safetensors_problem(path)
        if problem:
            ctx.problem("source", f"'{source}' {problem}")
            return {}
    folder = config_folder(source, params["config"])
    if folder is None or not (folder / "config.json").is_file():
        if path.is_file():
            ctx.problem("config", f"the single-file ControlNet '{source}' needs its diffusers config: give config=FOLDER "
                        "holding its config.json (the diffusers version of the same ControlNet has one)")
        elif path.exists():
            ctx.problem("source", f"'{source}' has no config.json (nor controlnet/config.json): give a diffusers "
                        "ControlNet folder, a .safetensors file with config=FOLDER, or a hub id")
        elif source.startswith(("/", ".", "~")) or source.count("/") != 1:
            ctx.problem("source", f"ControlNet '{source}' does not exist (give a folder, a .safetensors file or a hub "
                        "id such as lllyasviel/sd-controlnet-canny)")
        elif hub_offline():
            ctx.problem("source", f"hub ControlNet '{source}' is not in the local Hugging Face cache and HF_HUB_OFFLINE "
                        "is set; download it on a machine with network, or give a local folder or .safetensors file")
        else:
            problem = hub_problem(source)  # not cached: say now if it cannot be downloaded
            if problem:
                ctx.problem("source", problem)
        return {}
    config = read_json(folder / "config.json") or {}
    if config.get("_class_name") not in (None, "ControlNetModel"):
        ctx.problem("source", f"'{source}' holds a {config.get('_class_name')}, not a ControlNetModel")
        return {}
    if not path.is_file() and path.exists():
        problem = weights_problem(folder, allow_pickle)
        if problem:
            ctx.problem("source", f"{source}: {problem}")
            return {}
    return {"controlnet": controlnet_facts(source, config)}


@node(
    "load_controlnet",
    "Load a ControlNet (a diffusers folder, a hub id, or a single .safetensors file with its config), once per process.",
    outputs={"controlnet": CONTROLNET},
    params={
        "source": Param(str, doc="a diffusers ControlNet folder (or a model folder with controlnet/), a hub id, or a "
                        ".safetensors file", role="model_source"),
        "config": Param(str, "", doc="single file: the folder of its diffusers config.json (default: the file's folder)",
                        role="model_config"),
        "allow_pickle": Param(bool, False, doc="also load .bin/.ckpt pickle weights (they can run code: trust the source)",
                              role="trust"),
    },
    check=check_load_controlnet,
)
def load_controlnet(ctx: RunContext, source: str, config: str, allow_pickle: bool):
    path = Path(os.path.expanduser(source))
    where = str(path.resolve()) if path.exists() else source

    def load():
        import torch
        from diffusers import ControlNetModel

        dtype = getattr(torch, ctx.dtype)
        folder = config_folder(source, config)
        if path.is_file() and not is_pickle(path) and any(
                name.startswith("controlnet_cond_embedding.") for name in tensor_shapes(path)):
            # a diffusers ControlNet's weights as one file: its own tensor names, nothing to convert
            model = ControlNetModel.from_config(ControlNetModel.load_config(str(folder)))
            model.load_state_dict(load_checkpoint(path))
            model = model.to(dtype=dtype)
        elif path.is_file():  # the original layout (lllyasviel's control_*.safetensors): diffusers converts it
            model = ControlNetModel.from_single_file(str(path), config=str(folder), torch_dtype=dtype,
                                                     local_files_only=True)
        else:
            model = ControlNetModel.from_pretrained(str(folder) if folder is not None else source, torch_dtype=dtype,
                                                    use_safetensors=None if allow_pickle else True)
        return offloaded(model.eval().requires_grad_(False), ctx.offload, ctx.device)

    try:  # one load per process and (source, dtype, device, offload): every job of a sweep shares it
        model = ctx.cache.get((f"controlnet:{where}", "controlnet", ctx.dtype, ctx.device, ctx.offload, config), load)
    except (OSError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelSourceError(ctx.workflow_file, ctx.node_id, "source", f"cannot load the ControlNet '{source}': "
                               f"{first}") from None
    ctx.record.note(ctx.node_id, model_load(source, where))  # its weight hashes, which reproduce checks
    return {"controlnet": model}


def check_control_image(params, inputs_meta, ctx):
    paths = params["path"] if isinstance(params["path"], list) else [params["path"]]
    given: ImageFacts | None = inputs_meta["image"]
    vae: VAEFacts | None = inputs_meta["vae"]
    if (params["path"] is None) == (ctx.source_of("image") is None):
        ctx.problem("path", "give the control image either as a file (path) or wired from another node (image), "
                    "not both" if params["path"] is not None else "no control image: give a file (path) or wire "
                    "an image (image)")
        return {}
    sizes = [check_image_file(ctx, "path", p, "control image") for p in paths] if params["path"] is not None else []
    if any(size is None for size in sizes):
        return {}
    count = len(paths) if params["path"] is not None else (given.count if given else None)
    if params["preprocess"] == "depth" and (ctx.source_of("depth_estimator") is None or
                                            ctx.source_of("feature_extractor") is None):
        ctx.problem("preprocess", "preprocess=depth estimates depth with a DPT: wire depth_estimator and "
                    "feature_extractor from a depth model's load_model (builtin:tiny-depth, "
                    "stabilityai/stable-diffusion-2-depth); docs/pipelines/controlnet.md shows the workflow file")
    if params["low_threshold"] > params["high_threshold"]:
        ctx.problem("low_threshold", f"canny's low_threshold {params['low_threshold']} is above its high_threshold "
                    f"{params['high_threshold']}")
    factor = vae.scale_factor if vae else 8
    first = sizes[0] if sizes else ((given.width, given.height) if given else (None, None))
    width = params["width"] or (first[0] and first[0] // factor * factor)
    height = params["height"] or (first[1] and first[1] // factor * factor)
    like: ImageFacts | None = inputs_meta["size_of"]
    if ctx.source_of("size_of") is not None:
        if params["width"] or params["height"]:
            ctx.problem("width", "give the size either as width/height or by an image (size_of), not both")
        width, height = (like.width, like.height) if like else (None, None)
    for name, value in (("width", width), ("height", height)):
        if value and value % factor:
            ctx.problem(name, f"the control image's {name} {value} is not a multiple of {factor} (the VAE's latents are "
                        f"1/{factor} of the image, and the ControlNet's residuals must match them)"
                        + ctx.config_hint(name))
    if width and height and over_max_pixels(ctx, "width", width, height, "the control image"):
        return {}
    return {"image": ImageFacts(width=width, height=height, count=count, channels=3)}


@node(
    "control_image",
    "Prepare a ControlNet's control image: a file or a wired image, optionally made a canny or depth map, resized "
    "as diffusers' control image processor does (RGB, not normalized).",
    inputs={
        "image": Input(IMAGE, "the picture (unless path is given)", optional=True),
        "vae": Input(VAE, "the model's VAE: the control image's default size is rounded to its scale factor",
                     optional=True),
        "size_of": Input(IMAGE, "resize to this image's size (img2img, inpainting: the input picture)", optional=True),
        "depth_estimator": Input(DEPTH_ESTIMATOR, "preprocess=depth: a DPT", optional=True),
        "feature_extractor": Input(IMAGE_PROCESSOR, "preprocess=depth: the DPT's image processor", optional=True),
    },
    outputs={"image": IMAGE},
    params={
        "path": Param(str, None, nullable=True, per_image=True, role="input_file",
                      doc="control image file; a list gives one per image of the batch"),
        "width": Param(int, None, nullable=True, min=8, max=8192, doc="the output width (default: the image's, rounded "
                       "down to the VAE's scale factor)"),
        "height": Param(int, None, nullable=True, min=8, max=8192, doc="the output height (default: as width)"),
        "resize_mode": Param(str, "default", choices=RESIZE_MODES,
                             doc="default: stretch to the size; fill: fit and pad; crop: fill and crop the excess"),
        "preprocess": Param(str, "none", choices=PREPROCESSORS,
                            doc="none: the image is the control map; canny: its edges; depth: its DPT depth"),
        "low_threshold": Param(float, 100.0, min=0.0, max=2000.0, doc="canny: weaker gradients are never edges"),
        "high_threshold": Param(float, 200.0, min=0.0, max=2000.0, doc="canny: stronger gradients always are"),
        "save": Param(bool, False, doc="also save the prepared control map beside the images (NODE_INDEX.png)"),
    },
    check=check_control_image,
)
def control_image(ctx: RunContext, image: Images | None, vae, size_of: Images | None, depth_estimator, feature_extractor,
                  path, width, height, resize_mode: str, preprocess: str, low_threshold: float, high_threshold: float,
                  save: bool):
    from diffusers.image_processor import VaeImageProcessor

    if path is not None:
        pictures = [open_image(str(Path(p).expanduser())) for p in (path if isinstance(path, list) else [path])]
    else:
        pictures = pixels_to_pil(image.pixels)
    if preprocess == "canny":
        pictures = [canny(p, low_threshold, high_threshold) for p in pictures]
    elif preprocess == "depth":
        pictures = [dpt_depth(p, depth_estimator, feature_extractor) for p in pictures]
    factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 8
    if size_of is not None:
        height, width = size_of.pixels.shape[-2:]
    processor = VaeImageProcessor(vae_scale_factor=factor, do_convert_rgb=True, do_normalize=False)
    pixels = processor.preprocess(pictures, height=height, width=width, resize_mode=resize_mode)
    if save and ctx.files is not None:
        from .save_image import png_bytes

        for index, pil in enumerate(pixels_to_pil(pixels)):
            ctx.files.write(f"{ctx.node_id}_{index:03d}.png", lambda _name, pil=pil: png_bytes(pil, {}), ctx.node_id)
    elif save:  # a fused sweep batch writes only what its save nodes get: say so rather than drop the maps silently
        ctx.record.warnings.append(f"{ctx.node_id}: the control maps were not saved (save=true), as this run keeps no "
                                   "files of its own (a fused sweep batch); hydra/launcher=basic runs each job alone")
    return {"image": Images(pixels.to(ctx.device), seeds=[])}


def check_controlnet(params, inputs_meta, ctx):
    controlnet: ControlNetFacts | None = inputs_meta["controlnet"]
    image: ImageFacts | None = inputs_meta["image"]
    vae: VAEFacts | None = inputs_meta["vae"]
    earlier: ControlFacts = inputs_meta["control"] or ControlFacts()
    if params["start"] >= params["end"]:
        ctx.problem("start", f"the ControlNet acts from start {params['start']} to end {params['end']} of the "
                    "schedule: start must be below end")
    if controlnet and vae and controlnet.downscale and vae.scale_factor and controlnet.downscale != vae.scale_factor:
        ctx.problem("controlnet", f"the ControlNet from '{ctx.source_of('controlnet')}' shrinks its control image "
                    f"{controlnet.downscale} times, but the VAE from '{ctx.source_of('vae')}' makes latents 1/"
                    f"{vae.scale_factor} of the image: its residuals would not fit the UNet's (a ControlNet of "
                    "another model family)")
    size = (image.width, image.height) if image and image.width and image.height else None
    count = image.count if image else None
    return {"control": ControlFacts(earlier.controlnets + (controlnet,), earlier.sizes + (size,),
                                    earlier.counts + (count,), earlier.nodes + (ctx.node_id,))}


@node(
    "controlnet",
    "Apply a ControlNet: its control image steers the denoise loop with a scale, over a share of the schedule "
    "(chain several through 'control', as diffusers' MultiControlNetModel).",
    inputs={
        "controlnet": Input(CONTROLNET),
        "image": Input(IMAGE, "the control image, prepared (control_image) at the output size"),
        "vae": Input(VAE, "the model's VAE: its latents' size is what the ControlNet's residuals must fit"),
        "control": Input(CONTROL, "conditions of earlier ControlNets, applied with this one", optional=True),
    },
    outputs={"control": CONTROL},
    params={
        "scale": Param(float, 1.0, min=0.0, max=10.0, doc="controlnet_conditioning_scale: its residuals times this"),
        "start": Param(float, 0.0, min=0.0, max=1.0, doc="control_guidance_start: share of the steps before it acts"),
        "end": Param(float, 1.0, min=0.0, max=1.0, doc="control_guidance_end: share of the steps after which it stops"),
        "guess_mode": Param(bool, False, doc="it sees only the prompt's CFG half (recognises content with no prompt)"),
    },
    check=check_controlnet,
)
def controlnet(ctx: RunContext, controlnet, image: Images, vae, control: list | None, scale: float, start: float,
               end: float, guess_mode: bool):
    loaded_by = ctx.plan.nodes[ctx.node_id].inputs["controlnet"].node if ctx.plan is not None else None
    model = ctx.record.get(ModelLoad, loaded_by)
    ctx.record.note(ctx.node_id, ControlNetUse(
        model.source if model else None, short_hash(model.sha256) if model else None, image_hashes(image.pixels),
        scale, start, end, guess_mode or bool(controlnet.config.global_pool_conditions)))
    return {"control": [*(control or []), ControlNetCondition(controlnet, image.pixels, scale, start, end, guess_mode)]}


def image_hashes(pixels) -> list[str]:
    """The sha256 of each control image as prepared (its 8-bit pixels, RGB, row by row)."""
    import hashlib

    array = (pixels.detach().float().cpu().permute(0, 2, 3, 1).numpy() * 255).round().astype("uint8")
    return [hashlib.sha256(a.tobytes()).hexdigest() for a in array]


def short_hash(sha256: dict[str, str]) -> str | None:
    """A1111's ControlNet model hash: the first 8 hex digits of its weights file's sha256 (one file: a folder's)."""
    files = sorted(name for name in sha256 if name.endswith(".safetensors")) or sorted(sha256)
    return sha256[files[0]][:8] if files else None
