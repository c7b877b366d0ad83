"""lora: community LoRA files applied to a UNet and its text encoders, as diffusers' load_lora_weights does.

A LoRA is applied to copies of the cached modules: the base weights in the component cache never change, so a
job without the LoRA (or with another weight) gets the plain model, and a weight sweep never reloads the base.
Each LoRA is read by diffusers' own loader (kohya/A1111 files converted by diffusers), scaled by its weight and
fused into the copies' weights: the same as ``pipe.load_lora_weights(path); pipe.fuse_lora(lora_scale=weight)``.
"""

from __future__ import annotations

import copy
from pathlib import Path

from ..engine import Input, Param, RunContext, node
from ..models.single_file import is_pickle, tensor_shapes
from ..models.model_source import SourceError
from .offload import editable_copy, offloaded_like
from .types import TEXT_ENCODER, TOKENIZER, UNET
from .records import AdapterFile, EmbeddingLoad, LoraLoad

KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
PEFT_PREFIXES = ("unet.", "text_encoder.", "text_encoder_2.")


def lora_entries(loras) -> list[dict]:
    """``[{path, weight}]``, each weight a number (default 1.0); ValueError names what is wrong."""
    entries = []
    for index, entry in enumerate(loras or []):
        if isinstance(entry, str):
            entry = {"path": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise ValueError(f"element {index} ({entry!r}): expected {{path: FILE.safetensors, weight: 0.8}}")
        weight = entry.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise ValueError(f"element {index}: weight must be a number, given {weight!r}")
        unknown = set(entry) - {"path", "weight"}
        if unknown:
            raise ValueError(f"element {index}: unknown key(s) {', '.join(sorted(unknown))} (a LoRA has path and weight)")
        entries.append({"path": entry["path"], "weight": float(weight)})
    return entries


def lora_layout(path: Path) -> tuple[str, dict[str, list[int]]]:
    """("kohya" or "diffusers", tensor shapes) of a LoRA file, from its header; SourceError when it is not one."""
    if not path.is_file():
        raise SourceError(f"LoRA file '{path}' does not exist")
    if is_pickle(path):
        raise SourceError(f"LoRA '{path}' is a pickle file, which sdflow refuses because loading it can run code: "
                          "use its .safetensors version")
    shapes = tensor_shapes(path)
    names = list(shapes)
    if names and all(n.startswith(KOHYA_PREFIXES) for n in names):
        return "kohya", shapes
    if any(n.startswith(PEFT_PREFIXES) and ("lora" in n) for n in names):
        return "diffusers", shapes
    raise SourceError(f"'{path}' is not a LoRA: its tensors have neither kohya/A1111 names (lora_unet_*, lora_te_*) "
                      "nor diffusers ones (unet.*lora*, text_encoder.*lora*)"
                      + ("; it looks like a whole checkpoint: give it as model.path" if any(
                          n.startswith("model.diffusion_model.") for n in names) else ""))


def cross_attention_width(shapes: dict[str, list[int]]) -> int | None:
    """The text width a LoRA's cross-attention keys read (768 SD1, 1024 SD2, 2048 SDXL), or None if it has none."""
    for name, shape in shapes.items():
        if ("attn2_to_k" in name or "attn2.to_k" in name) and ("lora_down" in name or "lora_A" in name or
                                                               "lora.down" in name) and len(shape) == 2:
            return shape[1]
    return None


def check_lora(params, inputs_meta, ctx):
    unet = inputs_meta["unet"]
    try:
        entries = lora_entries(params["loras"])
    except ValueError as exc:
        ctx.problem("loras", str(exc))
        entries = []
    for entry in entries:
        try:
            layout, shapes = lora_layout(Path(entry["path"]).expanduser())
        except SourceError as exc:
            ctx.problem("loras", str(exc))
            continue
        width = cross_attention_width(shapes)
        if unet and unet.cross_attention_dim and width and width != unet.cross_attention_dim:
            ctx.problem("loras", f"LoRA '{entry['path']}' was made for a UNet attending to {width}-wide text "
                        f"({FAMILY_BY_WIDTH.get(width, 'another model')}), but the UNet from '{ctx.source_of('unet')}' "
                        f"attends to {unet.cross_attention_dim}-wide text "
                        f"({FAMILY_BY_WIDTH.get(unet.cross_attention_dim, 'another model')})")
        second = any(n.startswith(("lora_te2_", "text_encoder_2.")) for n in shapes)
        if second and ctx.source_of("text_encoder_2") is None:
            ctx.problem("loras", f"LoRA '{entry['path']}' also changes a second text encoder (SDXL), which is not "
                        "wired to this node")
    return {"unet": unet, "text_encoder": inputs_meta["text_encoder"], "text_encoder_2": inputs_meta["text_encoder_2"]}


FAMILY_BY_WIDTH = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL", 1280: "the SDXL refiner"}


def apply_loras(unet, text_encoders: dict, entries: list[dict]):
    """Copies of ``unet`` and ``text_encoders`` (``{"text_encoder": m, "text_encoder_2": m}``) with every LoRA
    fused at its weight. The given modules are never changed.

    The UNet's LoRA goes through diffusers' peft loader (``load_lora_into_unet``, ``set_adapters``, ``fuse_lora``),
    the text encoders' through diffusers' text-encoder loader (transformers' ``load_adapter``: peft >= 0.22), merged
    at the same weight.
    """
    from diffusers.loaders import StableDiffusionLoraLoaderMixin, StableDiffusionXLLoraLoaderMixin

    loader = StableDiffusionXLLoraLoaderMixin if text_encoders.get("text_encoder_2") is not None else \
        StableDiffusionLoraLoaderMixin
    originals = {"unet": unet, **text_encoders}
    unet = editable_copy(unet)  # (off its offload hooks, if any: put back on them below)
    text_encoders = {name: editable_copy(module) for name, module in text_encoders.items() if module is not None}
    names = []
    for index, entry in enumerate(entries):
        state, alphas, metadata = loader.lora_state_dict(str(Path(entry["path"]).expanduser()), return_lora_metadata=True)
        if any(key.startswith("unet.") for key in state):
            name = f"sdflow_lora_{index}"
            loader.load_lora_into_unet(state, alphas, unet, adapter_name=name, metadata=metadata)
            names.append((name, entry["weight"]))
        for prefix, encoder in text_encoders.items():
            merge_text_encoder_lora(loader, encoder, state, alphas, metadata, prefix, entry["weight"])
    if names:
        unet.set_adapters([n for n, _ in names], [w for _, w in names])
        unet.fuse_lora(lora_scale=1.0, adapter_names=[n for n, _ in names])
        unet.unload_lora()
    return (offloaded_like(unet, originals["unet"]),
            {name: offloaded_like(module, originals[name]) for name, module in text_encoders.items()})


def merge_text_encoder_lora(loader, encoder, state: dict, alphas: dict | None, metadata: dict | None, prefix: str,
                            weight: float) -> bool:
    """Merge the ``prefix`` part of a LoRA into ``encoder`` at ``weight`` as a pipeline's ``load_lora_weights`` +
    ``fuse_lora`` + ``unload_lora_weights`` do to its text encoder; whether it had a part."""
    from diffusers.loaders.lora_base import _remove_text_encoder_monkey_patch, fuse_text_encoder_lora

    if not any(key.startswith(f"{prefix}.") for key in state):
        return False
    loader.load_lora_into_text_encoder(state, alphas, encoder, prefix=prefix, adapter_name="sdflow",
                                       metadata=None if alphas else metadata)  # (diffusers takes one of the two)
    fuse_text_encoder_lora(encoder, lora_scale=weight, adapter_names=["sdflow"])
    _remove_text_encoder_monkey_patch(encoder)  # the adapter layers out, the merged weights kept
    return True


@node(
    "lora",
    "Apply LoRA files (kohya/A1111 or diffusers format) to a UNet and its text encoders at their weights, on copies "
    "(the cached model stays as it is).",
    inputs={"unet": Input(UNET), "text_encoder": Input(TEXT_ENCODER, optional=True),
            "text_encoder_2": Input(TEXT_ENCODER, "SDXL's second encoder", optional=True)},
    outputs={"unet": UNET, "text_encoder": TEXT_ENCODER, "text_encoder_2": TEXT_ENCODER},
    params={"loras": Param(list, [], doc="[{path: FILE.safetensors, weight: 0.8}, ...]; empty: the modules as given",
                           role="input_file")},
    check=check_lora,
)
def lora(ctx: RunContext, unet, text_encoder, text_encoder_2, loras: list):
    from ..models.hashes import file_sha256

    entries = lora_entries(loras)
    if not entries:
        return {"unet": unet, "text_encoder": text_encoder, "text_encoder_2": text_encoder_2}
    patched, encoders = apply_loras(unet, {"text_encoder": text_encoder, "text_encoder_2": text_encoder_2}, entries)
    ctx.record.note(ctx.node_id, LoraLoad([
        AdapterFile(Path(e["path"]).stem, str(Path(e["path"]).expanduser().resolve()),
                    file_sha256(Path(e["path"]).expanduser()), e["weight"]) for e in entries]))
    return {"unet": patched, "text_encoder": encoders.get("text_encoder"),
            "text_encoder_2": encoders.get("text_encoder_2")}


# Textual inversion -----------------------------------------------------------------------------------------------
SDXL_KEYS = {"text_encoder": "clip_l", "text_encoder_2": "clip_g"}  # SDXL embeddings hold one tensor per encoder


def embedding_entries(entries) -> list[dict]:
    """``[{path, token}]`` (token default: the file's name, A1111's trigger word); ValueError names what is wrong."""
    out = []
    for index, entry in enumerate(entries or []):
        if isinstance(entry, str):
            entry = {"path": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise ValueError(f"element {index} ({entry!r}): expected {{path: FILE.safetensors, token: WORD}}")
        unknown = set(entry) - {"path", "token"}
        if unknown:
            raise ValueError(f"element {index}: unknown key(s) {', '.join(sorted(unknown))} (an embedding has path "
                             "and token)")
        out.append({"path": entry["path"], "token": str(entry.get("token") or Path(entry["path"]).stem)})
    return out


def embedding_widths(path: Path, allow_pickle: bool) -> dict[str, int]:
    """``{"text_encoder": width[, "text_encoder_2": width]}`` an embedding file is made for; SourceError if not one."""
    if not path.is_file():
        raise SourceError(f"embedding file '{path}' does not exist")
    if is_pickle(path):
        if not allow_pickle:
            raise SourceError(f"embedding '{path}' is a pickle file (A1111's .pt), which sdflow refuses by default "
                              "because loading it can run code: use its .safetensors version, or pass allow_pickle=true")
        return {}  # its widths are checked when it loads
    shapes = tensor_shapes(path)
    if "clip_l" in shapes or "clip_g" in shapes:
        return {name: shapes[key][-1] for name, key in SDXL_KEYS.items() if key in shapes}
    if "emb_params" in shapes:
        return {"text_encoder": shapes["emb_params"][-1]}
    if len(shapes) == 1:  # diffusers' learned_embeds: {token: vector(s)}
        return {"text_encoder": next(iter(shapes.values()))[-1]}
    raise SourceError(f"'{path}' is not a textual-inversion embedding (A1111's emb_params, SDXL's clip_l/clip_g, or "
                      f"diffusers' one-token file); it has {len(shapes)} tensors"
                      + _not_embedding_hint(list(shapes)))


def _not_embedding_hint(names: list[str]) -> str:
    if any(n.startswith(KOHYA_PREFIXES + PEFT_PREFIXES) for n in names):
        return ": it looks like a LoRA, give it as loras=[...]"
    return ""


def check_textual_inversion(params, inputs_meta, ctx):
    try:
        entries = embedding_entries(params["files"])
    except ValueError as exc:
        ctx.problem("files", str(exc))
        entries = []
    sdxl = ctx.source_of("text_encoder_2") is not None
    for entry in entries:
        try:
            widths = embedding_widths(Path(entry["path"]).expanduser(), params["allow_pickle"])
        except SourceError as exc:
            ctx.problem("files", str(exc))
            continue
        if sdxl != ("text_encoder_2" in widths) and widths:
            ctx.problem("files", f"embedding '{entry['path']}' is for {'SDXL (clip_l and clip_g)' if not sdxl else 'one text encoder'}"
                        f", but this node has {'two text encoders (SDXL)' if sdxl else 'one text encoder'}")
            continue
        for name, width in widths.items():
            encoder = inputs_meta.get(name)
            if encoder and encoder.hidden_size and width != encoder.hidden_size:
                ctx.problem("files", f"embedding '{entry['path']}' has {width}-wide vectors "
                            f"({FAMILY_BY_WIDTH.get(width, 'another model')}), but the text encoder from "
                            f"'{ctx.source_of(name)}' reads {encoder.hidden_size}-wide ones")
    return {name: inputs_meta.get(name) for name in ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")}


def load_embedding(path: Path):
    """An embedding file's tensors: a safetensors dict, or an A1111 .pt read with torch's weights-only unpickler."""
    import torch
    from safetensors.torch import load_file

    if is_pickle(path):
        return torch.load(path, map_location="cpu", weights_only=True)
    return load_file(str(path))


class _Encoders:
    """What diffusers' TextualInversionLoaderMixin.load_textual_inversion reads of a pipeline (no offloading)."""

    hf_device_map = None
    components: dict = {}


def apply_textual_inversions(pairs: dict, entries: list[dict]) -> dict:
    """``{name: (tokenizer, text_encoder)}`` -> copies with every embedding's tokens added, as
    ``pipe.load_textual_inversion(path, token=...)`` adds them (SDXL: clip_l to the first pair, clip_g to the second)."""
    from diffusers.loaders import TextualInversionLoaderMixin

    holder = type("Encoders", (_Encoders, TextualInversionLoaderMixin), {})()
    originals = {name: encoder for name, (_, encoder) in pairs.items()}
    pairs = {name: (copy.deepcopy(tokenizer), editable_copy(encoder)) for name, (tokenizer, encoder) in pairs.items()}
    for entry in entries:
        state = load_embedding(Path(entry["path"]).expanduser())
        for name, (tokenizer, encoder) in pairs.items():
            part = state[SDXL_KEYS[name]] if SDXL_KEYS[name] in state else state
            holder.load_textual_inversion(part, token=entry["token"], tokenizer=tokenizer, text_encoder=encoder)
    return {name: (tokenizer, offloaded_like(encoder, originals[name])) for name, (tokenizer, encoder) in pairs.items()}


@node(
    "textual_inversion",
    "Add textual-inversion embeddings (A1111 .safetensors/.pt, SDXL clip_l/clip_g, diffusers) as new prompt words, "
    "on copies of the tokenizers and text encoders.",
    inputs={"text_encoder": Input(TEXT_ENCODER, optional=True), "tokenizer": Input(TOKENIZER, optional=True),
            "text_encoder_2": Input(TEXT_ENCODER, "SDXL's second encoder", optional=True),
            "tokenizer_2": Input(TOKENIZER, "SDXL's second tokenizer", optional=True)},
    outputs={"text_encoder": TEXT_ENCODER, "tokenizer": TOKENIZER, "text_encoder_2": TEXT_ENCODER,
             "tokenizer_2": TOKENIZER},
    params={"files": Param(list, [], doc="[{path: FILE.safetensors, token: WORD}, ...] (token default: the file name); "
                           "the prompt uses the word", role="input_file"),
            "allow_pickle": Param(bool, False, doc="also load A1111 .pt embeddings (pickle: trust the source)")},
    check=check_textual_inversion,
)
def textual_inversion(ctx: RunContext, text_encoder, tokenizer, text_encoder_2, tokenizer_2, files: list,
                      allow_pickle: bool):
    from ..models.hashes import file_sha256

    entries = embedding_entries(files)
    given = {"text_encoder": (tokenizer, text_encoder), "text_encoder_2": (tokenizer_2, text_encoder_2)}
    if not entries:
        return {"text_encoder": text_encoder, "tokenizer": tokenizer, "text_encoder_2": text_encoder_2,
                "tokenizer_2": tokenizer_2}
    pairs = apply_textual_inversions({k: v for k, v in given.items() if v[1] is not None}, entries)
    ctx.record.note(ctx.node_id, EmbeddingLoad([
        AdapterFile(e["token"], str(Path(e["path"]).expanduser().resolve()), file_sha256(Path(e["path"]).expanduser()))
        for e in entries]))
    first, second = pairs.get("text_encoder", (tokenizer, text_encoder)), pairs.get("text_encoder_2", (tokenizer_2, text_encoder_2))
    return {"tokenizer": first[0], "text_encoder": first[1], "tokenizer_2": second[0], "text_encoder_2": second[1]}
