"""The AUTOMATIC1111 ``parameters`` text of an image, which A1111, Civitai and most image viewers read.

    a photo of a cat
    Negative prompt: blurry
    Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, Seed: 3, Size: 512x512, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Version: sdflow 0.1.0

Values come from the run as it happened: the resolved workflow (which denoise made the image, its model,
scheduler and steps), each image's own prompt, seed and guidance, and the weight hashes recorded for its
model. A1111's "Model hash" is the first 10 hex digits of the sha256 of the checkpoint file; LoRA and
textual-inversion hashes the first 12.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from . import __version__

# diffusers scheduler classes by the sampler names A1111 gives them (others are written as the class name).
SAMPLER_NAMES = {
    "EulerDiscreteScheduler": "Euler", "EulerAncestralDiscreteScheduler": "Euler a", "HeunDiscreteScheduler": "Heun",
    "LMSDiscreteScheduler": "LMS", "DPMSolverMultistepScheduler": "DPM++ 2M", "DPMSolverSDEScheduler": "DPM++ SDE",
    "KDPM2DiscreteScheduler": "DPM2", "KDPM2AncestralDiscreteScheduler": "DPM2 a", "DDIMScheduler": "DDIM",
    "PNDMScheduler": "PLMS", "UniPCMultistepScheduler": "UniPC", "LCMScheduler": "LCM",
}


def quote(value: Any) -> str:
    """A value as A1111 writes it: as is, or JSON-quoted when it holds a comma, colon or newline."""
    text = str(value)
    return text if not any(c in text for c in ",:\n") else json.dumps(text, ensure_ascii=False)


def workflow_nodes(workflow_yaml: str) -> dict[str, dict]:
    return (yaml.safe_load(workflow_yaml or "") or {}).get("nodes") or {}


def node_inputs(nodes: dict[str, dict], node_id: str) -> dict[str, str]:
    """``{input name: source node id}`` of a node in a resolved workflow (inputs per the node type's declaration)."""
    from .engine.declare import REGISTRY

    body = nodes.get(node_id) or {}
    spec = REGISTRY.get(body.get("type"))
    if spec is None:
        return {}
    return {name: str(body[name]).split(".")[0] for name in spec.inputs if isinstance(body.get(name), str)}


def upstream(nodes: dict[str, dict], node_id: str) -> list[str]:
    """Every node ``node_id`` reads from, nearest first."""
    seen, queue = [], [node_id]
    while queue:
        for source in node_inputs(nodes, queue.pop(0)).values():
            if source not in seen and source in nodes:
                seen.append(source)
                queue.append(source)
    return seen


def making_denoise(nodes: dict[str, dict], save_id: str) -> str | None:
    """The denoise step nearest upstream of a save node: the one that made its images."""
    return next((n for n in upstream(nodes, save_id) if nodes[n].get("type") == "denoise"), None)


def model_name(source: str) -> str:
    """What A1111 writes as "Model": the checkpoint's file name without extension (a folder's name, a hub id)."""
    if source.startswith("builtin:"):
        return source.split(":", 1)[1]
    path = Path(source)
    return path.stem if path.suffix in (".safetensors", ".ckpt") else (path.name if path.exists() else source)


def settings_for_image(record: dict, per_image: dict, save_id: str, seed: int | None, size: tuple[int, int],
                       index: int) -> tuple[str, str, dict[str, Any]]:
    """(prompt, negative prompt, {A1111 setting: value}) of image ``index`` saved by node ``save_id``."""
    from .engine.execute import value_for_image

    nodes = workflow_nodes(record.get("workflow_yaml", ""))
    denoise = making_denoise(nodes, save_id)
    settings: dict[str, Any] = {}
    prompt = negative = ""
    if denoise is not None:
        inputs = node_inputs(nodes, denoise)
        body = nodes[denoise]
        encoder = inputs.get("embeddings")
        if encoder is not None:
            prompt = value_for_image(per_image.get(f"{encoder}.prompt", nodes[encoder].get("prompt", "")), index)
            negative = value_for_image(per_image.get(f"{encoder}.negative_prompt",
                                                     nodes[encoder].get("negative_prompt", "")), index)
        made = (record.get("denoise") or {}).get(denoise) or {}
        settings["Steps"] = body.get("steps")
        scheduler_node = nodes.get(inputs.get("scheduler"), {})
        settings["Sampler"] = SAMPLER_NAMES.get(made.get("scheduler"), made.get("scheduler"))
        if scheduler_node.get("karras_sigmas"):
            settings["Schedule type"] = "Karras"
        settings["CFG scale"] = value_for_image(per_image.get(f"{denoise}.guidance", body.get("guidance")), index)
        settings["Seed"] = seed
        settings["Size"] = f"{size[0]}x{size[1]}"
        unet_from = inputs.get("unet")  # through any LoRA node, to the model it was loaded from
        model_node = next((n for n in [unet_from] + upstream(nodes, unet_from or "")
                           if (nodes.get(n) or {}).get("type") == "load_model"), None)
        model = (record.get("models") or {}).get(model_node) or {}
        if model:
            settings["Model hash"] = model.get("model_hash")
            settings["Model"] = model_name(model.get("source", ""))
        strength = body.get("strength")
        if isinstance(strength, (int, float)) and strength < 1.0:  # img2img: the share of the schedule that ran
            settings["Denoising strength"] = strength
    else:
        settings["Seed"] = seed
        settings["Size"] = f"{size[0]}x{size[1]}"
    adapters = adapter_hashes(record)
    settings.update(adapters)
    settings["Version"] = f"sdflow {__version__}"
    return str(prompt), str(negative), settings


def adapter_hashes(record: dict) -> dict[str, str]:
    """A1111's "Lora hashes" and "TI hashes" settings, from what the run recorded as loaded."""
    out = {}
    for key, label in (("loras", "Lora hashes"), ("embeddings", "TI hashes")):
        entries = [e for per_node in (record.get(key) or {}).values() for e in per_node]
        if entries:
            out[label] = ", ".join(f"{e['name']}: {e['sha256'][:12]}" for e in entries)
    return out


def infotext(prompt: str, negative: str, settings: dict[str, Any]) -> str:
    """The ``parameters`` text: the prompt, ``Negative prompt: ...`` when there is one, then the settings line."""
    lines = [prompt]
    if negative:
        lines.append(f"Negative prompt: {negative}")
    lines.append(", ".join(f"{key}: {quote(value)}" for key, value in settings.items() if value is not None))
    return "\n".join(lines)


def parameters(ctx, image, index: int) -> str:
    """The A1111 ``parameters`` text of image ``index`` of the ``image`` a save node is writing."""
    seed = image.seeds[index] if index < len(image.seeds) else None
    height, width = image.pixels.shape[-2:]
    return infotext(*settings_for_image(ctx.record, ctx.per_image, ctx.node_id, seed, (width, height), index))


def record_weight_hashes(record: dict) -> None:
    """Add each loaded model's weight hashes to the run record (once per run): the sha256 of every weight file,
    which ``reproduce`` checks, and A1111's short "Model hash"."""
    from .models.hashes import model_location, short_hash, weight_hashes

    for entry in (record.get("models") or {}).values():
        if "sha256" in entry:
            continue
        location = model_location(entry["source"])
        if location is None:
            continue
        hashes = weight_hashes(location)
        entry["sha256"] = hashes
        entry["model_hash"] = short_hash(location, hashes)


_SETTING = re.compile(r'\s*([\w ]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def parse_parameters(text: str) -> dict[str, Any]:
    """An A1111 ``parameters`` text as ``{"Prompt": ..., "Negative prompt": ..., setting: value as text}``."""
    *lines, last = text.strip().split("\n")
    settings = dict(_SETTING.findall(last)) if len(_SETTING.findall(last)) >= 3 else {}
    if not settings:
        lines.append(last)
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    out: dict[str, Any] = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in settings.items():
        out[key.strip()] = json.loads(value) if value.startswith('"') else value.strip()
    return out
