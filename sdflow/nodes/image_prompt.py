"""encode_image_prompt: a CLIP image embedding as the UNet's conditioning, for image variations.

Mirrors StableDiffusionImageVariationPipeline._encode_image: the image processor prepares the picture,
the vision encoder's projected embedding becomes a one-token "prompt" [1, 1, dim], and the unconditional
half of classifier-free guidance is all zeros.
"""

from __future__ import annotations

from ..engine import Input, RunContext, node
from .images import pixels_to_pil
from .load_model import MISSING_COMPONENT_HINTS
from .offload import compute_device
from .types import EMBEDDINGS, IMAGE, IMAGE_ENCODER, IMAGE_PROCESSOR, EmbeddingFacts, Embeddings, Images

def check_encode_image_prompt(params, inputs_meta, ctx):
    encoder = inputs_meta["image_encoder"]
    return {"embeddings": EmbeddingFacts(dim=encoder.projection_dim if encoder else None)}


@node(
    "encode_image_prompt",
    "Encode an image into a CLIP image embedding that conditions the UNet in place of a prompt (zeros as negative).",
    inputs={"image_encoder": Input(IMAGE_ENCODER),
            "feature_extractor": Input(IMAGE_PROCESSOR, "prepares the encoder's input"),
            "image": Input(IMAGE, "the one image to make variations of")},
    outputs={"embeddings": EMBEDDINGS},
    check=check_encode_image_prompt,
)
def encode_image_prompt(ctx: RunContext, image_encoder, feature_extractor, image: Images):
    import torch

    if image_encoder is None or feature_extractor is None:
        raise ValueError("the model has no image encoder; this workflow needs "
                         + MISSING_COMPONENT_HINTS["image_encoder"])
    if image.pixels.shape[0] != 1:
        raise ValueError(f"expected one image, given {image.pixels.shape[0]}; use several seeds for several variations")
    # The processor gets the same PIL image the pipeline would (pixels are exact multiples of 1/255).
    pixel_values = feature_extractor(images=pixels_to_pil(image.pixels), return_tensors="pt").pixel_values
    with torch.no_grad():
        embeds = image_encoder(pixel_values.to(device=compute_device(image_encoder), dtype=image_encoder.dtype)).image_embeds
    positive = embeds.unsqueeze(1)
    return {"embeddings": Embeddings(positive, torch.zeros_like(positive), prompts=[""], negative_prompts=[""])}
