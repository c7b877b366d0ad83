"""load_model: a model's components (UNet, VAE, text encoder, ...) through the component cache."""

from __future__ import annotations

import importlib
from dataclasses import fields

from ..engine import ModelSourceError, Param, RunContext, node
from ..models.single_file import component_problem as single_file_problem
from ..models.single_file import load_component as load_single_file_component
from ..models.model_source import ModelSource, SourceError, hub_offline, hub_problem
from ..models.sources import resolve_source
from ..models.weight_files import weights_problem
from .types import (DEPTH_ESTIMATOR, IMAGE_ENCODER, IMAGE_PROCESSOR, SAFETY_CHECKER, SCHEDULER, TEXT_ENCODER,
                    TOKENIZER, UNET, VAE, ComponentFacts, ImageEncoderFacts, SafetyChecker, SchedulerFacts,
                    TextEncoderFacts, UNetFacts)
from .offload import offloaded
from .records import ModelLoad
from .vae_facts import vae_facts

# model_index.json names classes; only these may be loaded, so a model folder cannot make sdflow
# import an arbitrary object.
ALLOWED_CLASSES = {
    "diffusers": {"UNet2DConditionModel", "AutoencoderKL", "StableDiffusionSafetyChecker"},
    "transformers": {"CLIPTextModel", "CLIPTextModelWithProjection", "CLIPTokenizer", "CLIPTokenizerFast",
                     "CLIPImageProcessor", "CLIPImageProcessorPil", "CLIPFeatureExtractor",
                     "CLIPVisionModelWithProjection", "DPTForDepthEstimation", "DPTImageProcessor",
                     "DPTImageProcessorPil", "DPTFeatureExtractor"},
}
DTYPES = ("float32", "float16", "bfloat16")  # names of torch dtypes a run may load weights in
# Components that are torch modules: moved to the run's device and dtype. The rest are CPU objects.
MODULE_COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2", "image_encoder", "depth_estimator",
                     "safety_checker")
# Components a workflow can wire directly, with their port types (safety_checker is paired with its
# feature extractor below).
PLAIN_OUTPUTS = {"unet": UNET, "vae": VAE, "text_encoder": TEXT_ENCODER, "tokenizer": TOKENIZER,
                 "text_encoder_2": TEXT_ENCODER, "tokenizer_2": TOKENIZER, "scheduler": SCHEDULER,
                 "low_res_scheduler": SCHEDULER, "image_encoder": IMAGE_ENCODER, "feature_extractor": IMAGE_PROCESSOR,
                 "depth_estimator": DEPTH_ESTIMATOR}
# For components most Stable Diffusion models lack: the kind of model that has one, said when it is missing.
MISSING_COMPONENT_HINTS = {
    "image_encoder": "an image-variation model with an image encoder: model=tiny_variation (built in), or "
                     "model=variation (lambdalabs/sd-image-variations-diffusers), or model.path=/path/to/a/local/copy",
    "text_encoder_2": "an SDXL model with two text encoders: model=tiny_sdxl (built in), or model=sdxl "
                      "(stabilityai/stable-diffusion-xl-base-1.0), or model.path=/path/to/a/local/copy",
    "depth_estimator": "a depth-to-image model with a DPT depth estimator: model=tiny_depth (built in), or "
                       "model=sd2_depth (stabilityai/stable-diffusion-2-depth), or model.path=/path/to/a/local/copy",
}


def _component_class(source: ModelSource, component: str, index: dict):
    entry = index.get(component)
    if not entry or entry[0] is None:
        return None
    library, class_name = entry
    if component == "safety_checker":  # diffusers records it as ["stable_diffusion", ...]
        library = "diffusers"
    if class_name.endswith("Scheduler"):
        module = importlib.import_module("diffusers")
        cls = getattr(module, class_name, None)
        if cls is None or "SchedulerMixin" not in [c.__name__ for c in cls.__mro__]:
            raise ModelSourceError("", "", "source", f"{source.spec}: unknown scheduler class {class_name}")
        return cls
    if class_name not in ALLOWED_CLASSES.get(library, set()):
        raise ModelSourceError("", "", "source", f"{source.spec}: component '{component}' has class "
                               f"{library}.{class_name}, which sdflow does not load")
    if library == "diffusers" and class_name == "StableDiffusionSafetyChecker":
        from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker

        return StableDiffusionSafetyChecker
    return getattr(importlib.import_module(library), class_name)


def _index(source: ModelSource) -> dict:
    index = source.model_index()
    if index is None:
        from huggingface_hub import hf_hub_download

        import json

        with open(hf_hub_download(source.hub_id, "model_index.json")) as f:
            index = json.load(f)
    return index


def load_component(ctx: RunContext, source: ModelSource, component: str, allow_pickle: bool = False):
    """Load one component through the process cache, keyed by (source, component, dtype, device)."""
    index = _index(source)
    cls = _component_class(source, component, index)
    if cls is None:
        return None
    is_module = component in MODULE_COMPONENTS
    compiled = ctx.compile and component in COMPILED_COMPONENTS
    key = (source.location, component, ctx.dtype if is_module else "-", ctx.device if is_module else "-") + (
        ("compiled",) if compiled else ()) + ((f"offload={ctx.offload}",) if is_module and ctx.offload != "none" else ())

    # a single-file checkpoint: its modules are converted from the file, the rest read from its configs folder
    where = str(source.folder) if source.file is not None else source.location

    def load():
        kwargs = {"subfolder": component, **source.loader_kwargs()}  # cached hub model, hub unreachable: cache only
        if hasattr(cls, "set_timesteps"):
            return cls.from_pretrained(where, **kwargs)
        if is_module:
            if ctx.dtype not in DTYPES:
                raise ValueError(f"dtype '{ctx.dtype}' is not one of {', '.join(DTYPES)}")
            import torch

            kwargs["torch_dtype"] = getattr(torch, ctx.dtype)
            # Safetensors only, unless the user opts in: a pickle checkpoint can run code when loaded.
            kwargs["use_safetensors"] = None if allow_pickle else True  # None: safetensors first, then pickle
            if source.file is not None:
                model = load_single_file_component(source, component, kwargs["torch_dtype"])
            else:
                model = cls.from_pretrained(where, **kwargs)
            model = offloaded(model.eval().requires_grad_(False), ctx.offload, ctx.device)
            return compile_module(model, component, ctx.device, ctx.compile) if compiled else model
        return cls.from_pretrained(where, **kwargs)

    return ctx.cache.get(key, load)


# runtime.compile: the UNet (every denoise step) and the VAE's decoder. The compiled module is cached like
# any other component, so every later batch and job of the process reuses it (compiling once per shape).
COMPILED_COMPONENTS = ("unet", "vae")


def compile_module(model, component: str, device: str, mode):
    """torch.compile the part that runs hot; channels_last first on CUDA, where convolutions prefer it.

    ``mode``: True (torch's default), or a torch.compile mode: "reduce-overhead" (CUDA graphs, for small
    batches), "max-autotune".
    """
    import torch

    options = {} if mode is True else {"mode": str(mode)}
    if device.startswith("cuda"):
        model = model.to(memory_format=torch.channels_last)
    if component == "vae":
        model.decoder = torch.compile(model.decoder, **options)
        return model
    return torch.compile(model, **options)


def component_facts(component: str, source: str, config: dict, index: dict):
    """A model part's validation facts, from its config.json (and its model's model_index.json)."""
    if component == "unet":
        return UNetFacts(source, **{name: config.get(name) for name in UNET_CONFIG_KEYS},
                         force_zeros_for_empty_prompt=index.get("force_zeros_for_empty_prompt"))
    if component == "vae":
        return vae_facts(source, config)
    if component in ("text_encoder", "text_encoder_2"):
        return TextEncoderFacts(source, hidden_size=config.get("hidden_size"), projection_dim=config.get("projection_dim"))
    if component == "image_encoder":
        return ImageEncoderFacts(source, projection_dim=config.get("projection_dim"))
    if component in ("scheduler", "low_res_scheduler"):
        return SchedulerFacts(source, max_noise_level=index.get("max_noise_level"))
    return ComponentFacts(source)


UNET_CONFIG_KEYS = [f.name for f in fields(UNetFacts) if f.name not in ("source", "force_zeros_for_empty_prompt")]


def check_load_model(params, inputs_meta, ctx):
    try:
        # Built-in models are built here on first use (seconds, once per machine) so their configs can be checked.
        source = resolve_source(params["source"], params["config"] or None, params["allow_pickle"])
    except SourceError as exc:
        ctx.problem("source", str(exc))
        return {}
    if source.folder is None:  # a hub id not downloaded yet: its configs are checked when it loads
        problem = hub_problem(source.hub_id)  # ... if it can be downloaded at all: say so now, not after retries
        if problem:
            ctx.problem("source", problem)
        return {}
    index = source.model_index() or {}
    facts = {}
    for component in list(PLAIN_OUTPUTS) + ["safety_checker"]:
        entry = index.get(component)
        present = bool(entry) and entry[0] is not None
        wired = component in ctx.used_outputs
        if present:
            facts[component] = component_facts(component, source.spec, source.component_config(component) or {}, index)
        # A missing safety checker is fine (the safety_check node skips it, and says so).
        if not present and wired and component != "safety_checker":
            ctx.problem("source", f"{source.spec} has no '{component}' component, but "
                        f"'{ctx.node_id}.{component}' is wired to another node (is it the right kind of model?)"
                        + (f"; this workflow needs {MISSING_COMPONENT_HINTS[component]}"
                           if component in MISSING_COMPONENT_HINTS else ""))
        # Weights are only looked at (headers, not tensors) where the run would load them: a local folder, or the
        # cache of a hub model when HF_HUB_OFFLINE leaves nothing else (else loading may still download them).
        if present and wired and component in MODULE_COMPONENTS and (source.hub_id is None or hub_offline()):
            problem = (single_file_problem(source, component) if source.file is not None
                       else weights_problem(source.folder / component, params["allow_pickle"]))
            if problem:
                ctx.problem("source", f"{source.spec}: {problem}")
    return facts


def model_load(source: str, resolved: str) -> ModelLoad:
    """The record entry of a model loaded from ``source``: with its weight files' hashes (hashed once per machine),
    which ``reproduce`` checks, and A1111's short "Model hash"."""
    from ..models.hashes import model_location, short_hash, weight_hashes

    location = model_location(source)
    if location is None:
        return ModelLoad(source, resolved)
    hashes = weight_hashes(location)
    return ModelLoad(source, resolved, hashes, short_hash(location, hashes))


@node(
    "load_model",
    "Load a Stable Diffusion model's components (built-in name, local diffusers folder or hub id), each once per process.",
    outputs={**PLAIN_OUTPUTS, "safety_checker": SAFETY_CHECKER},
    params={
        "source": Param(str, doc="builtin:NAME, a local diffusers folder, a single-file checkpoint "
                        "(.safetensors in the original SD1/SD2/SDXL layout), or a hub id", role="model_source"),
        "allow_pickle": Param(bool, False, doc="also load .bin/.ckpt pickle weights (they can run code: trust the source)",
                              role="trust"),
        "config": Param(str, "", doc="single-file checkpoints: the diffusers configs of its architecture, a shipped "
                        "name (sd15, sd2, sd2_base, sdxl, sdxl_refiner) or a folder; empty: read from its tensors",
                        role="model_config"),
    },
    check=check_load_model,
)
def load_model(ctx: RunContext, source: str, allow_pickle: bool, config: str = ""):
    try:
        resolved = resolve_source(source, config or None, allow_pickle)
    except SourceError as exc:
        raise ModelSourceError(ctx.workflow_file, ctx.node_id, "source", str(exc)) from None
    ctx.record.note(ctx.node_id, model_load(source, resolved.location))
    outputs = {}
    try:
        for component in PLAIN_OUTPUTS:
            outputs[component] = load_component(ctx, resolved, component, allow_pickle) if ctx.needs(component) else None
        checker = None
        if ctx.needs("safety_checker"):
            model = load_component(ctx, resolved, "safety_checker", allow_pickle)
            if model is not None:
                checker = SafetyChecker(model, load_component(ctx, resolved, "feature_extractor", allow_pickle))
        outputs["safety_checker"] = checker
    except ModelSourceError as exc:
        raise ModelSourceError(ctx.workflow_file, ctx.node_id, "source", exc.problem.message) from None
    except (OSError, ValueError) as exc:
        # diffusers/transformers raise OSError for unreachable hub ids, missing files and refused pickles, and
        # ValueError for weights that do not fit their config (a tensor of another shape).
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = ""
        if not allow_pickle and resolved.folder is not None and any(
                p.suffix in (".bin", ".ckpt", ".pt", ".pth") for p in resolved.folder.rglob("*")):
            hint = ("; the folder has pickle weights (.bin/.ckpt), which sdflow refuses by default because loading "
                    "them can run code: convert them to safetensors, or pass allow_pickle=true if you trust the source")
        raise ModelSourceError(ctx.workflow_file, ctx.node_id, "source",
                               f"cannot load '{source}': {first_line}{hint}") from None
    return outputs
