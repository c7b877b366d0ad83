"""encode_prompt: CLIP text embeddings of a prompt and its negative, for classifier-free guidance."""

from __future__ import annotations

import torch

from ..engine import Input, Param, RunContext, node
from .types import EMBEDDINGS, TEXT_ENCODER, TOKENIZER, Embeddings


def embed_text(text_encoder, tokenizer, text: str, device: str) -> torch.Tensor:
    """[1, max_length, dim] hidden states, tokenized exactly as diffusers' pipelines do."""
    ids = tokenizer(text, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt")
    attention_mask = None
    if getattr(text_encoder.config, "use_attention_mask", False):
        attention_mask = ids.attention_mask.to(device)
    with torch.no_grad():
        return text_encoder(ids.input_ids.to(device), attention_mask=attention_mask)[0]


def check_encode_prompt(params, inputs_meta, ctx):
    encoder = inputs_meta.get("text_encoder") or {}
    return {"embeddings": {"dim": encoder.get("hidden_size"), "from": ctx.source_of("text_encoder")}}


@node(
    "encode_prompt",
    "Encode a prompt and a negative prompt into CLIP text embeddings (the negative is the unconditional half of CFG).",
    inputs={"text_encoder": Input(TEXT_ENCODER), "tokenizer": Input(TOKENIZER)},
    outputs={"embeddings": EMBEDDINGS},
    params={
        "prompt": Param(str, doc="what to draw"),
        "negative_prompt": Param(str, "", doc="what to steer away from; empty is the plain unconditional prompt"),
    },
    check=check_encode_prompt,
)
def encode_prompt(ctx: RunContext, text_encoder, tokenizer, prompt: str, negative_prompt: str):
    positive = embed_text(text_encoder, tokenizer, prompt, ctx.device)
    negative = embed_text(text_encoder, tokenizer, negative_prompt, ctx.device)
    ctx.record.setdefault("prompts", {})[ctx.node_id] = {"prompt": prompt, "negative_prompt": negative_prompt}
    return {"embeddings": Embeddings(positive.to(text_encoder.dtype), negative.to(text_encoder.dtype), prompt, negative_prompt)}
