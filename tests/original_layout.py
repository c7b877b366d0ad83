"""Test helper: write a diffusers model folder as one checkpoint in the original Stable Diffusion layout.

The inverse of diffusers' single-file conversion (``diffusers.loaders.single_file_utils``), for any number of
blocks, so that the tiny models become the kind of .safetensors file A1111 and Civitai share (UNet under
``model.diffusion_model.``, VAE under ``first_stage_model.``, CLIP under ``cond_stage_model.transformer.`` or
``conditioner.embedders.0.transformer.``, OpenCLIP under ``cond_stage_model.model.`` or
``conditioner.embedders.N.model.``). diffusers' scripts/convert_diffusers_to_original_*.py do the same for the
published block counts only.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"), ("conv2", "out_layers.3"),
          ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection")]


def unet_to_original(state: dict, config: dict) -> dict:
    blocks, per = len(config["block_out_channels"]), config["layers_per_block"]
    prefixes = {"conv_in.": "input_blocks.0.0.", "time_embedding.linear_1.": "time_embed.0.",
                "time_embedding.linear_2.": "time_embed.2.", "add_embedding.linear_1.": "label_emb.0.0.",
                "add_embedding.linear_2.": "label_emb.0.2.", "conv_norm_out.": "out.0.", "conv_out.": "out.2.",
                "mid_block.resnets.0.": "middle_block.0.", "mid_block.attentions.0.": "middle_block.1.",
                "mid_block.resnets.1.": "middle_block.2."}
    for i in range(blocks):
        for j in range(per):
            prefixes[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{1 + i * (per + 1) + j}.0."
            prefixes[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{1 + i * (per + 1) + j}.1."
        prefixes[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{(i + 1) * (per + 1)}.0.op."
        up_attention = any(k.startswith(f"up_blocks.{i}.attentions.") for k in state)
        for j in range(per + 1):
            prefixes[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{i * (per + 1) + j}.0."
            prefixes[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{i * (per + 1) + j}.1."
        prefixes[f"up_blocks.{i}.upsamplers.0.conv."] = f"output_blocks.{i * (per + 1) + per}.{2 if up_attention else 1}.conv."
    out = {}
    for key, value in state.items():
        prefix = max((p for p in prefixes if key.startswith(p)), key=len)
        rest = key[len(prefix):]
        if ".resnets." in prefix:
            for new, old in RESNET:
                rest = rest.replace(new, old) if rest.startswith(new) else rest
        out[prefixes[prefix] + rest] = value
    return out


def vae_to_original(state: dict, config: dict) -> dict:
    blocks, per = len(config["block_out_channels"]), config["layers_per_block"]
    prefixes = {}
    for part in ("encoder", "decoder"):
        prefixes[f"{part}.mid_block.resnets.0."] = f"{part}.mid.block_1."
        prefixes[f"{part}.mid_block.resnets.1."] = f"{part}.mid.block_2."
        prefixes[f"{part}.mid_block.attentions.0."] = f"{part}.mid.attn_1."
        prefixes[f"{part}.conv_norm_out."] = f"{part}.norm_out."
    for i in range(blocks):
        for j in range(per):
            prefixes[f"encoder.down_blocks.{i}.resnets.{j}."] = f"encoder.down.{i}.block.{j}."
        prefixes[f"encoder.down_blocks.{i}.downsamplers.0."] = f"encoder.down.{i}.downsample."
        for j in range(per + 1):
            prefixes[f"decoder.up_blocks.{i}.resnets.{j}."] = f"decoder.up.{blocks - 1 - i}.block.{j}."
        prefixes[f"decoder.up_blocks.{i}.upsamplers.0."] = f"decoder.up.{blocks - 1 - i}.upsample."
    attention = {"group_norm.": "norm.", "to_q.": "q.", "to_k.": "k.", "to_v.": "v.", "to_out.0.": "proj_out."}
    out = {}
    for key, value in state.items():
        matches = [p for p in prefixes if key.startswith(p)]
        if not matches:
            out[key] = value
            continue
        prefix = max(matches, key=len)
        rest = key[len(prefix):].replace("conv_shortcut", "nin_shortcut")
        if prefixes[prefix].endswith("attn_1."):
            inner = next(p for p in attention if rest.startswith(p))
            rest = attention[inner] + rest[len(inner):]
            if value.ndim == 2:
                value = value.reshape(*value.shape, 1, 1)  # linear -> 1x1 conv, as the original VAE has them
        out[prefixes[prefix] + rest] = value
    return out


def clip_to_original(state: dict) -> dict:
    return {(key if key.startswith("text_model.") else "text_model." + key): value for key, value in state.items()}


def openclip_to_original(state: dict, hidden: int) -> dict:
    projection = state.get("text_projection.weight", torch.eye(hidden))  # SD2's encoder has none: OpenCLIP's identity
    state = clip_to_original({k: v for k, v in state.items() if k != "text_projection.weight"})
    out, qkv = {}, {}
    names = {"text_model.embeddings.token_embedding.weight": "token_embedding.weight",
             "text_model.embeddings.position_embedding.weight": "positional_embedding",
             "text_model.final_layer_norm.weight": "ln_final.weight", "text_model.final_layer_norm.bias": "ln_final.bias"}
    for key, value in state.items():
        if key in names:
            out[names[key]] = value
            continue
        key = (key.replace("text_model.encoder.layers.", "transformer.resblocks.").replace("layer_norm1", "ln_1")
               .replace("layer_norm2", "ln_2").replace(".fc1.", ".c_fc.").replace(".fc2.", ".c_proj.")
               .replace(".self_attn.", ".attn."))
        for part in ("q", "k", "v"):
            if f".attn.{part}_proj." in key:
                head, kind = key.split(f".attn.{part}_proj.")
                qkv.setdefault((head, kind), {})[part] = value
                break
        else:
            out[key] = value
    for (head, kind), parts in qkv.items():
        out[f"{head}.attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    out["text_projection"] = projection.T.contiguous()
    return out


def write_original_checkpoint(folder: Path, path: Path, family: str) -> Path:
    """``folder`` (a diffusers model of ``family``: sd15, sd2, sdxl, sdxl_refiner) as one original-layout file."""
    folder = Path(folder)

    def read(component, name="diffusion_pytorch_model.safetensors"):
        return load_file(folder / component / name)

    def config(component):
        return json.loads((folder / component / "config.json").read_text())

    state = {f"model.diffusion_model.{k}": v for k, v in unet_to_original(read("unet"), config("unet")).items()}
    state.update({f"first_stage_model.{k}": v for k, v in vae_to_original(read("vae"), config("vae")).items()})
    if family == "sd15":
        state.update({f"cond_stage_model.transformer.{k}": v
                      for k, v in clip_to_original(read("text_encoder", "model.safetensors")).items()})
    elif family == "sd2":
        hidden = config("text_encoder")["hidden_size"]
        state.update({f"cond_stage_model.model.{k}": v
                      for k, v in openclip_to_original(read("text_encoder", "model.safetensors"), hidden).items()})
    else:
        if family == "sdxl":
            state.update({f"conditioner.embedders.0.transformer.{k}": v
                          for k, v in clip_to_original(read("text_encoder", "model.safetensors")).items()})
        second = read("text_encoder_2", "model.safetensors")
        index = 1 if family == "sdxl" else 0
        hidden = config("text_encoder_2")["hidden_size"]
        state.update({f"conditioner.embedders.{index}.model.{k}": v
                      for k, v in openclip_to_original(second, hidden).items()})
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def configs_only(folder: Path, target: Path) -> Path:
    """A copy of a diffusers model folder without its weights: what a single file's ``config`` folder holds."""
    shutil.copytree(folder, target, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    return target
