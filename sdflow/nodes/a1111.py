"""The AUTOMATIC1111 ``parameters`` text of an image, which A1111, Civitai and most image viewers read.

    a photo of a cat
    Negative prompt: blurry
    Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, Seed: 3, Size: 512x512, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Version: sdflow 0.1.0

Values come from the run as it happened: the plan (which denoise loop made the image, and the prompt, scheduler
and model wired into it) and the run record (each image's own prompt, seed and guidance, the weight hashes noted
when its model loaded). A1111's "Model hash" is the first 10 hex digits of the sha256 of the checkpoint file; LoRA and
textual-inversion hashes the first 12.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .. import __version__
from ..engine import Plan, RunContext, RunRecord, value_for_image
from .records import ControlNetUse, Denoising, EmbeddingLoad, LoraLoad, ModelLoad, PromptEncoding

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


def upstream(plan: Plan, node_id: str) -> list[str]:
    """Every node ``node_id`` reads from, nearest first."""
    seen, queue = [], [node_id]
    while queue:
        for source in sorted(plan.graph.predecessors(queue.pop(0))):
            if source not in seen:
                seen.append(source)
                queue.append(source)
    return seen


def model_name(source: str) -> str:
    """What A1111 writes as "Model": the checkpoint's file name without extension (a folder's name, a hub id)."""
    if source.startswith("builtin:"):
        return source.split(":", 1)[1]
    path = Path(source)
    return path.stem if path.suffix in (".safetensors", ".ckpt") else (path.name if path.exists() else source)


def settings_for_image(plan: Plan, record: RunRecord, save_id: str, seed: int | None, size: tuple[int, int],
                       index: int) -> tuple[str, str, dict[str, Any]]:
    """(prompt, negative prompt, {A1111 setting: value}) of image ``index`` saved by node ``save_id``.

    The denoise loop that made the image is the nearest node upstream that noted a Denoising entry; its prompt,
    scheduler and model are the nodes wired into its inputs.
    """
    denoise = next((n for n in upstream(plan, save_id) if record.get(Denoising, n)), None)
    settings: dict[str, Any] = {}
    prompt = negative = ""
    if denoise is not None:
        made = record.get(Denoising, denoise)
        wired = {name: ref.node for name, ref in plan.nodes[denoise].inputs.items()}
        encoded = record.get(PromptEncoding, wired.get("embeddings"))
        if encoded is not None:
            prompt = value_for_image(encoded.prompt, index)
            negative = value_for_image(encoded.negative_prompt, index)
        settings["Steps"] = made.steps
        settings["Sampler"] = SAMPLER_NAMES.get(made.scheduler, made.scheduler)
        scheduler = plan.nodes.get(wired.get("scheduler"))
        if scheduler is not None and scheduler.params.get("karras_sigmas"):
            settings["Schedule type"] = "Karras"
        settings["CFG scale"] = value_for_image(made.guidance, index)
        settings["Seed"] = seed
        settings["Size"] = f"{size[0]}x{size[1]}"
        unet_from = wired.get("unet")  # through any LoRA node, to the model it was loaded from
        model = next((record.get(ModelLoad, n) for n in [unet_from] + upstream(plan, unet_from)
                      if record.get(ModelLoad, n)), None) if unet_from else None
        if model is not None:
            settings["Model hash"] = model.model_hash
            settings["Model"] = model_name(model.source)
        if isinstance(made.strength, (int, float)) and made.strength < 1.0:  # img2img: the share of the schedule run
            settings["Denoising strength"] = made.strength
        settings.update(controlnet_units(plan, record, denoise))
    else:
        settings["Seed"] = seed
        settings["Size"] = f"{size[0]}x{size[1]}"
    settings.update(adapter_hashes(record))
    settings["Version"] = f"sdflow {__version__}"
    return str(prompt), str(negative), settings


def controlnet_units(plan: Plan, record: RunRecord, denoise: str) -> dict[str, str]:
    """A1111's ControlNet extension's "ControlNet 0", "ControlNet 1"... settings, of the ControlNets wired into the
    denoise loop, in the order they were chained."""
    chain, ref = [], plan.nodes[denoise].inputs.get("control")
    while ref is not None:  # from the last ControlNet back through each one's 'control' input
        chain.insert(0, ref.node)
        ref = plan.nodes[ref.node].inputs.get("control")
    units = [record.get(ControlNetUse, n) for n in chain]
    out = {}
    for index, unit in enumerate(u for u in units if u is not None):
        model = model_name(unit.source) + (f" [{unit.model_hash}]" if unit.model_hash else "") if unit.source else "None"
        mode = "ControlNet is more important" if unit.guess_mode else "Balanced"
        out[f"ControlNet {index}"] = (f"Model: {model}, Weight: {unit.scale}, Guidance Start: {unit.start}, "
                                      f"Guidance End: {unit.end}, Control Mode: {mode}")
    return out


def adapter_hashes(record: RunRecord) -> dict[str, str]:
    """A1111's "Lora hashes" and "TI hashes" settings, from what the run recorded as loaded."""
    out = {}
    for kind, label in ((LoraLoad, "Lora hashes"), (EmbeddingLoad, "TI hashes")):
        files = [f for entry in record.of(kind).values() for f in entry.files]
        if files:
            out[label] = ", ".join(f"{f.name}: {f.sha256[:12]}" for f in files)
    return out


def infotext(prompt: str, negative: str, settings: dict[str, Any]) -> str:
    """The ``parameters`` text: the prompt, ``Negative prompt: ...`` when there is one, then the settings line."""
    lines = [prompt]
    if negative:
        lines.append(f"Negative prompt: {negative}")
    lines.append(", ".join(f"{key}: {quote(value)}" for key, value in settings.items() if value is not None))
    return "\n".join(lines)


def parameters(ctx: RunContext, image, index: int) -> str:
    """The A1111 ``parameters`` text of image ``index`` of the ``image`` a save node is writing."""
    seed = image.seeds[index] if index < len(image.seeds) else None
    height, width = image.pixels.shape[-2:]
    return infotext(*settings_for_image(ctx.plan, ctx.record, ctx.node_id, seed, (width, height), index))


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
