"""load_vae: another VAE in place of the model's (a diffusers folder, a hub id, or a single .safetensors file).

A VAE of the wrong family is caught before anything loads: latents are scaled by the VAE's scaling factor
(SD1/SD2 0.18215, SDXL 0.13025) and have its latent channels, so both must match the model's own VAE. A single
file (A1111's vae-ft-mse-840000-ema-pruned.safetensors, sdxl_vae.safetensors) has no config: it takes the config
of the model's VAE it replaces, as A1111 does, and diffusers converts its tensors.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..engine import Input, ModelSourceError, Param, RunContext, node
from ..models.single_file import is_pickle, load_checkpoint, tensor_shapes
from ..models.model_source import SourceError
from .load_model import model_load
from .offload import offloaded
from .types import VAE, VAEFacts
from .vae_facts import vae_facts

DEFAULT_SCALING = 0.18215  # diffusers' AutoencoderKL default, what a config without scaling_factor means
FAMILY_BY_SCALING = {0.18215: "SD 1.x/2.x", 0.13025: "SDXL"}


def vae_config_folder(source: str) -> Path | None:
    """The folder holding a VAE's config.json: a bare VAE folder, a model folder's vae/, or a cached hub id."""
    path = Path(os.path.expanduser(source))
    for folder in (path, path / "vae"):
        if (folder / "config.json").is_file():
            return folder
    if not path.exists():
        try:
            from huggingface_hub import try_to_load_from_cache

            for name in ("config.json", "vae/config.json"):
                found = try_to_load_from_cache(source, name)
                if isinstance(found, str):
                    return Path(found).parent
        except Exception:  # a malformed id: not cached; loading says why
            return None
    return None


def single_file_latent_channels(path: Path) -> int:
    """Latent channels of a single-file VAE (its quant_conv holds mean and log-variance); SourceError if no VAE."""
    shapes = tensor_shapes(path)
    for name, shape in shapes.items():
        if name.endswith("quant_conv.weight") and not name.endswith("post_quant_conv.weight"):
            return shape[0] // 2
    raise SourceError(f"'{path}' holds no VAE (no quant_conv among its {len(shapes)} tensors)")


def check_load_vae(params, inputs_meta, ctx):
    given: VAEFacts | None = inputs_meta["vae"]
    source = params["source"]
    if not source:
        return {"vae": given}
    path = Path(os.path.expanduser(source))
    facts = None
    try:
        if path.is_file():
            if is_pickle(path):
                raise SourceError(f"VAE '{source}' is a pickle file, which sdflow refuses because loading it can run "
                                  "code: use its .safetensors version")
            channels = single_file_latent_channels(path)
            facts = VAEFacts(source, latent_channels=channels, scaling_factor=given.scaling_factor if given else None,
                             scale_factor=given.scale_factor if given else 8, out_channels=given.out_channels if given else 3)
        else:
            folder = vae_config_folder(source)
            if folder is None and path.exists():
                raise SourceError(f"'{source}' has no config.json (nor vae/config.json): give a VAE folder, a model "
                                  "folder, a hub id or a .safetensors file")
            if folder is not None:
                facts = vae_facts(source, json.loads((folder / "config.json").read_text(encoding="utf-8")))
    except SourceError as exc:
        ctx.problem("source", str(exc))
        return {"vae": given}
    if facts is not None and given is not None:
        ours = facts.scaling_factor or DEFAULT_SCALING
        theirs = given.scaling_factor or DEFAULT_SCALING
        if facts.latent_channels != given.latent_channels or abs(ours - theirs) > 1e-6:
            ctx.problem("source", f"the VAE '{source}' ({facts.latent_channels} latent channels, scaling "
                        f"{ours} = {FAMILY_BY_SCALING.get(ours, 'another family')}) does not fit the model whose VAE "
                        f"comes from '{ctx.source_of('vae')}' ({given.latent_channels} latent channels, scaling "
                        f"{theirs} = {FAMILY_BY_SCALING.get(theirs, 'another family')})")
    return {"vae": facts or given}


@node(
    "load_vae",
    "Use another VAE than the model's: a diffusers folder, a hub id or a single .safetensors file (A1111's VAE files).",
    inputs={"vae": Input(VAE, "the model's own VAE: kept when source is empty, and the config a single file takes")},
    outputs={"vae": VAE},
    params={"source": Param(str, "", doc="a VAE folder (or model folder), hub id, or .safetensors file; empty: the "
                            "model's own", role="model_source")},
    check=check_load_vae,
)
def load_vae(ctx: RunContext, vae, source: str):
    if not source:
        return {"vae": vae}

    def load():
        import torch
        from diffusers import AutoencoderKL

        path = Path(os.path.expanduser(source))
        dtype = getattr(torch, ctx.dtype)
        if path.is_file():
            from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

            model = AutoencoderKL.from_config(vae.config)
            state = load_checkpoint(path)
            if not any(key.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for key in state):
                state = convert_ldm_vae_checkpoint(state, model.config)  # original layout -> diffusers names
            model.load_state_dict(state)
        else:
            folder = vae_config_folder(source)
            where = str(folder) if folder is not None else source
            model = AutoencoderKL.from_pretrained(where, torch_dtype=dtype, use_safetensors=True)
        if model.dtype != dtype:
            model = model.to(dtype=dtype)
        return offloaded(model.eval().requires_grad_(False), ctx.offload, ctx.device)

    path = Path(os.path.expanduser(source))
    where = str(path.resolve()) if path.exists() else source
    # keyed by the replaced VAE's config too: a single file takes that config
    key = (f"vae:{where}", "vae", ctx.dtype, ctx.device, json.dumps(dict(vae.config), sort_keys=True, default=str),
           ctx.offload)
    try:
        swapped = ctx.cache.get(key, load)
    except (OSError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelSourceError(ctx.workflow_file, ctx.node_id, "source", f"cannot load the VAE '{source}': {first}") from None
    # recorded like a model: its weight hashes go into the image's metadata, and reproduce checks them
    ctx.record.note(ctx.node_id, model_load(source, where))
    return {"vae": swapped}
