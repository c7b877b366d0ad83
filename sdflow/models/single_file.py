"""Single-file checkpoints: one .safetensors in the original Stable Diffusion layout, as A1111 and Civitai share them.

The family (SD1.x, SD2.x, SDXL base or refiner) is read from the file's tensor names and shapes, from its
header alone, before anything loads. The architecture is not in the file: it comes from a folder of diffusers
configs (``model_index.json``, each component's ``config.json``, the tokenizers, the scheduler) — the ones
sdflow ships for the family (``configs/``: sd15, sd2 (768 v-prediction), sd2_base (512, epsilon), sdxl,
sdxl_refiner, with the real CLIP tokenizer), or a folder the user gives. Each component is then converted by
diffusers' own single-file loaders (``from_single_file(..., config=folder)`` and
``create_diffusers_clip_model_from_ldm``), reading only that component's tensors.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from .model_source import ModelSource, SourceError
from .weight_files import PICKLE_SUFFIXES, safetensors_problem

CONFIGS = Path(__file__).parent / "configs"
CONFIG_VERSION = 1  # bump when a shipped config changes, so materialised copies are rebuilt
SHIPPED = ("sd15", "sd2", "sd2_base", "sdxl", "sdxl_refiner")
# Where each component's tensors live in the original layout, per family.
PREFIXES = {
    "sd15": {"unet": "model.diffusion_model.", "vae": "first_stage_model.", "text_encoder": "cond_stage_model.transformer."},
    "sd2": {"unet": "model.diffusion_model.", "vae": "first_stage_model.", "text_encoder": "cond_stage_model.model."},
    "sdxl": {"unet": "model.diffusion_model.", "vae": "first_stage_model.",
             "text_encoder": "conditioner.embedders.0.transformer.", "text_encoder_2": "conditioner.embedders.1.model."},
    "sdxl_refiner": {"unet": "model.diffusion_model.", "vae": "first_stage_model.",
                     "text_encoder_2": "conditioner.embedders.0.model."},
}
PREFIXES["sd2_base"] = PREFIXES["sd2"]
FAMILY_NAMES = {"sd15": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL base", "sdxl_refiner": "SDXL refiner"}
# The UNet's cross-attention width tells the family when the text encoders are not in the file.
CONTEXT_WIDTHS = {768: "sd15", 1024: "sd2", 2048: "sdxl", 1280: "sdxl_refiner"}
ZIP_MAGIC, PICKLE_MAGIC = b"PK\x03\x04", b"\x80"


def is_pickle(path: Path) -> bool:
    """A pickle checkpoint by its name (.ckpt, .pt, ...) or its first bytes (a zip, as torch.save writes, or a pickle)."""
    if path.suffix in PICKLE_SUFFIXES:
        return True
    with open(path, "rb") as handle:
        head = handle.read(4)
    return head == ZIP_MAGIC or head[:1] == PICKLE_MAGIC


def tensor_shapes(path: Path) -> dict[str, list[int]]:
    """Every tensor's name and shape, from a safetensors header (no tensor is read)."""
    problem = safetensors_problem(path)
    if problem:
        raise SourceError(f"'{path}' {problem}")
    with open(path, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(length))
    return {name: entry["shape"] for name, entry in header.items() if name != "__metadata__"}


def _looks_like(names: list[str]) -> str:
    if any(n.startswith(("lora_unet_", "lora_te", "lora_te1_", "lora_te2_")) or ".lora_down." in n or ".lora_A." in n
           for n in names):
        return "; it looks like a LoRA: give it as loras=[{path: FILE, weight: 0.8}]"
    if any(n.startswith(("encoder.down", "decoder.up", "encoder.down_blocks")) for n in names):
        return "; it looks like a VAE alone: give it as vae=FILE"
    if any(n.startswith(("down_blocks.", "conv_in.", "time_embedding.")) for n in names):
        return "; it looks like one diffusers component (a UNet's diffusion_pytorch_model.safetensors): give the model folder"
    if any(n.startswith(("string_to_param", "emb_params", "clip_l", "clip_g")) for n in names) or len(names) <= 2:
        return "; it looks like a textual-inversion embedding"
    return ""


def detect_family(shapes: dict[str, list[int]], path: Path) -> str:
    """sd15, sd2, sdxl or sdxl_refiner, from the tensor names (and the UNet's widths); SourceError otherwise."""
    names = list(shapes)
    unet = [n for n in names if n.startswith("model.diffusion_model.")]
    if not unet and not any(n.startswith(("first_stage_model.", "cond_stage_model.", "conditioner.")) for n in names):
        raise SourceError(f"'{path}' is not a Stable Diffusion checkpoint: none of its {len(names)} tensors has the "
                          "original layout's names (model.diffusion_model.*, first_stage_model.*, cond_stage_model.* or "
                          f"conditioner.*){_looks_like(names)}")
    in_channels = shapes.get("model.diffusion_model.input_blocks.0.0.weight", [0, 4])[1]
    if in_channels != 4:
        raise SourceError(f"'{path}' has a {in_channels}-channel UNet (an inpainting or other special checkpoint); sdflow "
                          "ships configs for 4-channel text-to-image models only: give model_config=FOLDER with the "
                          "diffusers configs of its architecture (e.g. a copy of stable-diffusion-inpainting without weights)")
    if any(n.startswith("conditioner.embedders.1.model.") for n in names):
        return "sdxl"
    if any(n.startswith("conditioner.embedders.0.model.") for n in names):
        return "sdxl_refiner"
    if any(n.startswith("cond_stage_model.model.") for n in names):
        return "sd2"
    if any(n.startswith("cond_stage_model.transformer.") for n in names):
        return "sd15"
    widths = {shape[-1] for n, shape in shapes.items() if n.startswith("model.diffusion_model.") and n.endswith("attn2.to_k.weight")}
    for width in widths:
        if width in CONTEXT_WIDTHS:
            return CONTEXT_WIDTHS[width]
    known = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner.")
    raise SourceError(f"'{path}' has an unknown layout: its UNet attends to {sorted(widths) or 'no'} wide text embeddings "
                      f"and it has no text encoder sdflow knows (tensors under: "
                      f"{', '.join(sorted({n.split('.')[0] for n in names if n.startswith(known)}))}); sdflow loads "
                      "SD1.x, SD2.x and SDXL base/refiner checkpoints")


def present_components(shapes: dict[str, list[int]], family: str) -> set[str]:
    return {component for component, prefix in PREFIXES[family].items() if any(n.startswith(prefix) for n in shapes)}


def config_folder(config: str | None, family: str) -> Path:
    """The folder of diffusers configs: a shipped name (built once into SDFLOW_HOME with the CLIP tokenizer files),
    or the user's folder."""
    name = config or family
    if name in SHIPPED:
        return _materialised(name)
    folder = Path(os.path.expanduser(name))
    if not (folder / "model_index.json").is_file():
        raise SourceError(f"model_config '{config}' is neither a shipped config ({', '.join(SHIPPED)}) nor a folder with "
                          "a model_index.json (a diffusers model folder; its weights are not needed)")
    return folder.resolve()


def _materialised(name: str) -> Path:
    from .clip_vocab import END_TOKEN, START_TOKEN, bytes_to_unicode
    from .builtin import build_once, builtin_root

    def build(scratch: Path) -> None:
        shutil.copytree(CONFIGS / name, scratch, dirs_exist_ok=True)
        merges_text = (CONFIGS / "clip_merges.txt").read_text(encoding="utf-8")
        merges = [line.split() for line in merges_text.splitlines()[1:] if line]
        # CLIP's vocabulary follows from its merges: the 256 byte symbols, each also word-final, every merge, specials.
        symbols = list(bytes_to_unicode().values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [START_TOKEN, END_TOKEN]
        for tokenizer in scratch.glob("tokenizer*"):
            (tokenizer / "merges.txt").write_text(merges_text, encoding="utf-8")
            (tokenizer / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False),
                                                  encoding="utf-8")

    return build_once(builtin_root().parent / "configs" / f"{name}-v{CONFIG_VERSION}", build)


def _fit_problem(shapes: dict[str, list[int]], folder: Path, path: Path) -> str | None:
    """Whether the UNet configs fit the file: cross-attention width and input channels, named both ways."""
    config = json.loads((folder / "unet" / "config.json").read_text()) if (folder / "unet" / "config.json").exists() else {}
    widths = sorted({s[-1] for n, s in shapes.items() if n.startswith("model.diffusion_model.") and n.endswith("attn2.to_k.weight")})
    expected = config.get("cross_attention_dim")
    if widths and expected is not None and expected not in widths and not isinstance(expected, list):
        return (f"'{path}' attends to {widths[0]}-wide text embeddings, but the configs in '{folder}' describe a UNet "
                f"attending to {expected}-wide ones: give model_config= the configs of its architecture")
    return None


def resolve_single_file(spec: str, path: Path, config: str | None = None, allow_pickle: bool = False) -> ModelSource:
    """A single-file checkpoint as a model source: its config folder stands in for a model folder's JSON files."""
    if is_pickle(path):
        if not allow_pickle:
            renamed = "" if path.suffix in PICKLE_SUFFIXES else (
                f" (its name says safetensors, but it is a pickle: a .ckpt renamed; rename it to {path.stem}.ckpt)")
            raise SourceError(f"'{spec}' is a pickle checkpoint{renamed}, which sdflow refuses by default because loading "
                              "it can run code: convert it to safetensors, or pass allow_pickle=true if you trust the source")
        shapes = {name: list(t.shape) for name, t in load_checkpoint(path).items() if hasattr(t, "shape")}
    else:
        shapes = tensor_shapes(path)
    family = detect_family(shapes, path)
    folder = config_folder(config, family)
    problem = _fit_problem(shapes, folder, path)
    if problem:
        raise SourceError(problem)
    return ModelSource(spec, folder, file=path, family=family)


def load_checkpoint(path: Path, prefix: str = "") -> dict:
    """The tensors of ``path`` whose names start with ``prefix``; only those are read (a pickle is read whole,
    memory-mapped, with torch's weights-only unpickler)."""
    import torch

    if is_pickle(path):
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        while isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        return {k: v for k, v in state.items() if k.startswith(prefix)}
    from safetensors import safe_open

    with safe_open(path, framework="pt", device="cpu") as handle:
        return {name: handle.get_tensor(name) for name in handle.keys() if name.startswith(prefix)}


def component_problem(source: ModelSource, component: str) -> str | None:
    """Why ``component`` cannot be loaded from the checkpoint (its tensors are not in it), or None."""
    shapes = tensor_shapes(source.file) if not is_pickle(source.file) else None
    if shapes is None or component not in PREFIXES[source.family]:
        return None
    if component not in present_components(shapes, source.family):
        prefix = PREFIXES[source.family][component]
        return (f"'{source.file.name}' holds no {component} ({FAMILY_NAMES.get(source.family, source.family)} checkpoints "
                f"keep it under {prefix}*)" + ("; give another with vae=..." if component == "vae" else ""))
    return None


def load_component(source: ModelSource, component: str, dtype):
    """One module (unet, vae, text_encoder, text_encoder_2) of a single-file checkpoint, converted by diffusers."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm

    prefix = PREFIXES[source.family].get(component)
    if prefix is None:
        raise SourceError(f"'{source.file.name}' ({FAMILY_NAMES.get(source.family, source.family)}) has no {component}")
    checkpoint = load_checkpoint(source.file, prefix)
    if not checkpoint:
        raise SourceError(component_problem(source, component) or f"'{source.file.name}' holds no {component}")
    config = str(source.folder)
    # diffusers' from_single_file casts with .to(dtype) itself, and then warns about its own cast: keep that quiet
    quiet = logging.getLogger("diffusers.models.modeling_utils")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        if component == "unet":
            return UNet2DConditionModel.from_single_file(checkpoint, config=config, subfolder="unet", torch_dtype=dtype,
                                                         local_files_only=True)
        if component == "vae":
            return AutoencoderKL.from_single_file(checkpoint, config=config, subfolder="vae", torch_dtype=dtype,
                                                  local_files_only=True)
        cls = CLIPTextModelWithProjection if component == "text_encoder_2" else CLIPTextModel
        return create_diffusers_clip_model_from_ldm(cls, checkpoint, subfolder=component, config=config,
                                                    torch_dtype=dtype, local_files_only=True)
    except (ValueError, RuntimeError, KeyError) as exc:  # shapes that do not fit the configs
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SourceError(f"'{source.file.name}': its {component} does not fit the configs in '{source.folder}' "
                          f"({first[:300]}); give model_config= the configs of its architecture") from None
    finally:
        quiet.setLevel(level)
