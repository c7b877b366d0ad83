"""encode_prompt_sdxl, sdxl_condition: what SDXL adds before the shared denoise loop.

Read beside diffusers' StableDiffusionXLPipeline.encode_prompt and _get_add_time_ids (and the
refiner's, StableDiffusionXLImg2ImgPipeline._get_add_time_ids): two text encoders whose penultimate
hidden states are concatenated, a pooled embedding from the second, and the "micro-conditioning" time
ids (sizes, crop, aesthetic score) that the UNet's "text_time" added embedding reads with it.
"""

from __future__ import annotations

from dataclasses import replace

from ..engine import Input, Param, RunContext, node
from ..prompt_syntax import common_length, embed_prompt_sdxl
from .encode_prompt import encode_distinct, prompt_list_facts
from .types import (CONDITION, EMBEDDINGS, IMAGE, TEXT_ENCODER, TOKENIZER, UNET, Condition, ConditionFacts,
                    EmbeddingFacts, Embeddings, Images, broadcast_lists, per_image_list)
from .records import PromptEncoding

NEEDS_SDXL = "an SDXL model: model=tiny_sdxl (built in), model=sdxl, or model.path=/path/to/an/sdxl/folder"


def check_encode_prompt_sdxl(params, inputs_meta, ctx):
    first, second = inputs_meta["text_encoder"], inputs_meta["text_encoder_2"]
    if (ctx.source_of("text_encoder") is None) != (ctx.source_of("tokenizer") is None):
        ctx.problem("tokenizer", "wire text_encoder and tokenizer together, or neither (an SDXL refiner has only the second)")
    counts = prompt_list_facts(params, ctx)
    if second is None:
        return {"embeddings": counts}
    dim = ((first.hidden_size if first else None) or 0) + (second.hidden_size or 0)
    return {"embeddings": replace(counts, dim=dim or None, pooled_dim=second.projection_dim,
                                  # sdxl_condition checks these against the model of the UNet they will condition
                                  force_zeros=params["force_zeros_for_empty_prompt"],
                                  empty_negative=not all(per_image_list(params["negative_prompt"])))}


@node(
    "encode_prompt_sdxl",
    "Encode a prompt and negative prompt with SDXL's two text encoders: concatenated hidden states plus pooled embeddings.",
    inputs={
        "text_encoder": Input(TEXT_ENCODER, "the first CLIP encoder (the refiner has none)", optional=True),
        "tokenizer": Input(TOKENIZER, "the first encoder's tokenizer", optional=True),
        "text_encoder_2": Input(TEXT_ENCODER, "the second encoder, with projection: gives the pooled embedding"),
        "tokenizer_2": Input(TOKENIZER, "the second encoder's tokenizer (pads with '!')"),
    },
    outputs={"embeddings": EMBEDDINGS},
    params={
        "prompt": Param(str, doc="what to draw; (word:1.2) / (word) / [word] weights, BREAK and prompts over 77 "
                        "tokens as AUTOMATIC1111 reads them", per_image=True, role="prompt"),
        "negative_prompt": Param(str, "", doc="what to steer away from", per_image=True, role="prompt"),
        "force_zeros_for_empty_prompt": Param(bool, True, doc="an empty negative prompt gives zero embeddings, as "
                                              "the model's model_index.json says (SDXL base: true, refiner: false)"),
    },
    check=check_encode_prompt_sdxl,
)
def encode_prompt_sdxl(ctx: RunContext, text_encoder, tokenizer, text_encoder_2, tokenizer_2, prompt: str | list[str],
                       negative_prompt: str | list[str], force_zeros_for_empty_prompt: bool):
    import torch

    if text_encoder_2 is None or tokenizer_2 is None:
        raise ValueError(f"the model has no second text encoder; this workflow needs {NEEDS_SDXL}")
    encoders = [e for e in (text_encoder, text_encoder_2) if e is not None]
    tokenizers = [t for t in (tokenizer, tokenizer_2) if t is not None]
    texts = broadcast_lists(prompt=prompt, negative_prompt=negative_prompt)
    count = len(texts["prompt"])
    # An empty negative is zeros when the model says so, image by image (as that image made alone).
    zeroed = [force_zeros_for_empty_prompt and not text for text in texts["negative_prompt"]]
    encoded, encodes = encode_distinct(texts["prompt"] + [t for t, z in zip(texts["negative_prompt"], zeroed) if not z],
                                       lambda text: embed_prompt_sdxl(encoders, tokenizers, text, ctx.device))
    # long prompts: 77 tokens per chunk; a prompt and its negative get the same number of chunks
    hidden = common_length([h for h, _ in encoded], list(range(count)) + [i for i, z in enumerate(zeroed) if not z],
                           lambda: embed_prompt_sdxl(encoders, tokenizers, "", ctx.device)[0], ctx.node_id, ctx.record.warnings)
    encoded = [(h, p) for h, (_, p) in zip(hidden, encoded)]
    positives, encoded_negatives = encoded[:count], iter(encoded[count:])
    negatives = [tuple(map(torch.zeros_like, positives[0])) if z else next(encoded_negatives) for z in zeroed]
    positive, pooled = torch.cat([h for h, _ in positives]), torch.cat([p for _, p in positives])
    negative, negative_pooled = torch.cat([h for h, _ in negatives]), torch.cat([p for _, p in negatives])
    dtype = text_encoder_2.dtype
    ctx.record.note(ctx.node_id, PromptEncoding(prompt, negative_prompt, encodes))
    return {"embeddings": Embeddings(positive.to(dtype), negative.to(dtype), texts["prompt"], texts["negative_prompt"],
                                     positive_pooled=pooled.to(dtype), negative_pooled=negative_pooled.to(dtype))}


def time_id_lists(params) -> tuple[list[float], list[float]]:
    """Positive and negative time ids, as the base (target size) or the refiner (aesthetic score) builds them."""
    original = [params["original_height"] or params["height"], params["original_width"] or params["width"]]
    crop = [params["crop_top"], params["crop_left"]]
    if params["aesthetic_score"] is None:
        target = [params["target_height"] or params["height"], params["target_width"] or params["width"]]
        ids = original + crop + target
        return ids, ids  # the base pipeline's negative ids equal the positive ones unless given apart
    # The refiner's negative crop is its own default (0, 0), not the positive crop.
    return original + crop + [params["aesthetic_score"]], original + [0, 0] + [params["negative_aesthetic_score"]]


def check_sdxl_condition(params, inputs_meta, ctx):
    unet, embeddings = inputs_meta["unet"], inputs_meta["embeddings"] or EmbeddingFacts()
    count = len(time_id_lists(params)[0])
    if unet and unet.addition_embed_type != "text_time":
        ctx.problem("unet", f"the UNet from '{ctx.source_of('unet')}' takes no SDXL size conditioning "
                    f"(addition_embed_type is not 'text_time'); this node needs {NEEDS_SDXL}")
    elif unet and embeddings.pooled_dim and unet.addition_time_embed_dim is not None:
        expected = unet.projection_class_embeddings_input_dim
        given = unet.addition_time_embed_dim * count + embeddings.pooled_dim
        if expected is not None and expected != given:
            hint = ("it takes an aesthetic score (an SDXL refiner): set aesthetic_score" if expected < given
                    else "it takes target sizes (an SDXL base): set aesthetic_score to null")
            ctx.problem("aesthetic_score", f"the UNet from '{ctx.source_of('unet')}' expects {expected} added-embedding "
                        f"inputs, but {count} time ids x {unet.addition_time_embed_dim} + {embeddings.pooled_dim} "
                        f"pooled from '{ctx.source_of('embeddings')}' give {given}; {hint}")
    # The model that owns the UNet decides (a refiner borrows the base's encoder but not its setting).
    wanted = unet.force_zeros_for_empty_prompt if unet else None
    if wanted is not None and embeddings.empty_negative and embeddings.force_zeros != wanted:
        ctx.problem("embeddings", f"'{ctx.source_of('embeddings')}' has force_zeros_for_empty_prompt "
                    f"{str(embeddings.force_zeros).lower()}, but the model of '{ctx.source_of('unet')}' sets "
                    f"{str(wanted).lower()} in its model_index.json: set it to match (force_zeros_for_empty_prompt="
                    f"{str(wanted).lower()} on the command line for workflow=sdxl)")
    return {"condition": ConditionFacts(time_ids=count)}


@node(
    "sdxl_condition",
    "SDXL micro-conditioning: original size, crop and target size (base) or aesthetic score (refiner) as UNet time ids.",
    inputs={"unet": Input(UNET, "the SDXL UNet that reads the time ids"),
            "embeddings": Input(EMBEDDINGS, "SDXL embeddings: their pooled width completes the added embedding"),
            "image": Input(IMAGE, "img2img: the input image, whose size is the output size (width and height are "
                           "then not used), as StableDiffusionXLImg2ImgPipeline takes it", optional=True)},
    outputs={"condition": CONDITION},
    params={
        "width": Param(int, 1024, min=8, max=8192, doc="the output width (unless an image is wired)"),
        "height": Param(int, 1024, min=8, max=8192, doc="the output height (unless an image is wired)"),
        "original_width": Param(int, None, nullable=True, min=1, max=16384, doc="claimed source width (default: width)"),
        "original_height": Param(int, None, nullable=True, min=1, max=16384, doc="claimed source height (default: height)"),
        "crop_top": Param(int, 0, min=0, max=16384, doc="claimed crop offset from the top"),
        "crop_left": Param(int, 0, min=0, max=16384, doc="claimed crop offset from the left"),
        "target_width": Param(int, None, nullable=True, min=1, max=16384, doc="base only (default: width)"),
        "target_height": Param(int, None, nullable=True, min=1, max=16384, doc="base only (default: height)"),
        "aesthetic_score": Param(float, None, nullable=True, min=0.0, max=10.0,
                                 doc="refiner only: replaces the target size (null for a base model)"),
        "negative_aesthetic_score": Param(float, 2.5, min=0.0, max=10.0, doc="refiner only: the CFG negative's score"),
    },
    check=check_sdxl_condition,
)
def sdxl_condition(ctx: RunContext, unet, embeddings: Embeddings, image: Images | None = None, **params):
    import torch

    if image is not None:  # img2img: the sizes follow the image (the defaults of original and target size)
        params["height"], params["width"] = image.pixels.shape[-2:]
    positive, negative = time_id_lists(params)
    given = unet.config.addition_time_embed_dim * len(positive) + embeddings.positive_pooled.shape[-1]
    if given != unet.add_embedding.linear_1.in_features:
        raise ValueError(f"the UNet expects {unet.add_embedding.linear_1.in_features} added-embedding inputs, "
                         f"{len(positive)} time ids give {given}")
    positive, negative = (torch.tensor([ids], dtype=embeddings.positive.dtype, device=ctx.device)
                          for ids in (positive, negative))
    return {"condition": Condition(time_ids=positive, negative_time_ids=negative)}
