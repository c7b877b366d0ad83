"""encode_prompt: CLIP text embeddings of a prompt and its negative, for classifier-free guidance.

Either may be a list, one text per image; each distinct text is encoded once.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Callable, TypeVar

from ..engine import Input, Param, RunContext, node
from ..prompt_syntax import common_length, embed_prompt
from .types import EMBEDDINGS, TEXT_ENCODER, TOKENIZER, EmbeddingFacts, Embeddings, broadcast_lists
from .records import PromptEncoding

if TYPE_CHECKING:
    import torch

T = TypeVar("T")


def embed_text(text_encoder, tokenizer, text: str, device: str) -> torch.Tensor:
    """[1, max_length, dim] hidden states, tokenized exactly as diffusers' pipelines do."""
    import torch

    ids = tokenizer(text, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt")
    attention_mask = None
    if getattr(text_encoder.config, "use_attention_mask", False):
        attention_mask = ids.attention_mask.to(device)
    with torch.no_grad():
        return text_encoder(ids.input_ids.to(device), attention_mask=attention_mask)[0]


def encode_distinct(texts: list[str], encode: Callable[[str], T]) -> tuple[list[T], int]:
    """``encode(text)`` for every text, each distinct text encoded once; also how many encodes ran."""
    done: dict[str, T] = {}
    for text in texts:
        if text not in done:
            done[text] = encode(text)
    return [done[text] for text in texts], len(done)


def prompt_list_facts(params, ctx) -> EmbeddingFacts:
    """How many images a node's per-image prompt lists speak for (``count``), and the longest list (``count_field``).

    Lists of the node must agree (each K long, or one for all); the consumer checks K against its images.
    """
    lengths = ctx.per_image_lengths(params)
    if not lengths:
        return EmbeddingFacts(count=1)
    longest = max(lengths, key=lengths.get)
    ctx.check_per_image_count(params, lengths[longest], f"'{longest}' is a list of {lengths[longest]}")
    return EmbeddingFacts(count=lengths[longest], count_field=longest)


def check_encode_prompt(params, inputs_meta, ctx):
    encoder = inputs_meta["text_encoder"]
    counts = prompt_list_facts(params, ctx)
    return {"embeddings": replace(counts, dim=encoder.hidden_size if encoder else None)}


@node(
    "encode_prompt",
    "Encode a prompt and a negative prompt into CLIP text embeddings (the negative is the unconditional half of CFG).",
    inputs={"text_encoder": Input(TEXT_ENCODER), "tokenizer": Input(TOKENIZER)},
    outputs={"embeddings": EMBEDDINGS},
    params={
        "prompt": Param(str, doc="what to draw; (word:1.2) / (word) / [word] weights, BREAK and prompts over 77 "
                        "tokens as AUTOMATIC1111 reads them", per_image=True, role="prompt"),
        "negative_prompt": Param(str, "", doc="what to steer away from; empty is the plain unconditional prompt",
                                 per_image=True, role="prompt"),
    },
    check=check_encode_prompt,
)
def encode_prompt(ctx: RunContext, text_encoder, tokenizer, prompt: str | list[str], negative_prompt: str | list[str]):
    import torch

    texts = broadcast_lists(prompt=prompt, negative_prompt=negative_prompt)
    count = len(texts["prompt"])
    embedded, encodes = encode_distinct(texts["prompt"] + texts["negative_prompt"],
                                        lambda text: embed_prompt(text_encoder, tokenizer, text, ctx.device))
    # long prompts: 77 tokens per chunk; a prompt and its negative get the same number of chunks
    embedded = common_length(embedded, list(range(count)) * 2,
                             lambda: embed_prompt(text_encoder, tokenizer, "", ctx.device), ctx.node_id, ctx.record.warnings)
    positive, negative = torch.cat(embedded[:count]), torch.cat(embedded[count:])
    ctx.record.note(ctx.node_id, PromptEncoding(prompt, negative_prompt, encodes))
    return {"embeddings": Embeddings(positive.to(text_encoder.dtype), negative.to(text_encoder.dtype),
                                     texts["prompt"], texts["negative_prompt"])}
