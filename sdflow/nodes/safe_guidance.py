"""safe_guidance: safe latent diffusion (SLD, Schramowski et al. 2023) as a guidance rule for denoise.

Mirrors StableDiffusionPipelineSafe: the safety concept is predicted in the same UNet batch as the two
CFG halves ([uncond, text, concept]), and where the text prediction is close to the concept's, guidance
is pushed away from the concept, with momentum, once the warm-up steps are past.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..engine import Input, Param, RunContext, node
from .encode_prompt import embed_text
from .types import GUIDANCE, TEXT_ENCODER, TOKENIZER, GuidanceFacts
from .records import SafeGuidance

if TYPE_CHECKING:
    import torch

# The concept StableDiffusionPipelineSafe steers away from unless told otherwise.
DEFAULT_CONCEPT = ("an image showing hate, harassment, violence, suffering, humiliation, harm, suicide, sexual, nudity,"
                   " bodily fluids, blood, obscene gestures, illegal activity, drug use, theft, vandalism, weapons, child"
                   " abuse, brutality, cruelty")


@dataclass
class SafeLatentGuidance:
    """The SLD rule: concept embeddings [1, tokens, dim] and the pipeline's sld_* parameters."""

    concept: torch.Tensor
    scale: float
    warmup_steps: int
    threshold: float
    momentum_scale: float
    mom_beta: float

    @property
    def enabled(self) -> bool:
        return self.scale > 1.0  # as the pipeline: a scale <= 1 turns SLD off (plain CFG, no concept pass)

    @property
    def extra_embeddings(self) -> list[torch.Tensor]:
        return [self.concept] if self.enabled else []

    def start(self):
        import torch

        momentum = None

        def combine(step: int, noise_uncond, noise_text, noise_extra, guidance: float):
            nonlocal momentum
            noise_guidance = noise_text - noise_uncond
            if self.enabled:
                (noise_concept,) = noise_extra
                if momentum is None:
                    momentum = torch.zeros_like(noise_guidance)
                # Eq. 6: full strength where the text prediction is near the concept's, none past the threshold.
                distance = noise_text - noise_concept
                scale = torch.clamp(torch.abs(distance) * self.scale, max=1.0)
                concept_scale = torch.where(distance >= self.threshold, torch.zeros_like(scale), scale)
                safety = torch.mul(noise_concept - noise_uncond, concept_scale)  # Eq. 4
                safety = safety + self.momentum_scale * momentum  # Eq. 7
                momentum = self.mom_beta * momentum + (1 - self.mom_beta) * safety  # Eq. 8
                if step >= self.warmup_steps:  # momentum builds up during warm-up; guidance changes after it
                    noise_guidance = noise_guidance - safety  # Eq. 3
            return noise_uncond + guidance * noise_guidance

        return combine


def check_safe_guidance(params, inputs_meta, ctx):
    encoder = inputs_meta["text_encoder"]
    return {"guidance_rule": GuidanceFacts(dim=encoder.hidden_size if encoder else None)}


@node(
    "safe_guidance",
    "Safe latent diffusion: steer denoise's guidance away from a safety concept (wire into denoise's guidance_rule).",
    inputs={"text_encoder": Input(TEXT_ENCODER, "the same text encoder as the prompt's"),
            "tokenizer": Input(TOKENIZER)},
    outputs={"guidance_rule": GUIDANCE},
    params={
        "concept": Param(str, DEFAULT_CONCEPT, doc="what to steer away from"),
        "sld_guidance_scale": Param(float, 1000.0, min=0.0, max=1e5,
                                    doc="strength of the safety guidance; <= 1 turns SLD off"),
        "sld_warmup_steps": Param(int, 10, min=0, max=1000,
                                  doc="steps before safety guidance applies (momentum builds meanwhile)"),
        "sld_threshold": Param(float, 0.01, min=0.0, max=1.0,
                               doc="text-concept distance past which no safety guidance applies"),
        "sld_momentum_scale": Param(float, 0.3, min=0.0, max=10.0,
                                    doc="how much accumulated momentum adds to each step"),
        "sld_mom_beta": Param(float, 0.4, min=0.0, max=1.0, doc="how much of the momentum is kept from step to step"),
    },
    check=check_safe_guidance,
)
def safe_guidance(ctx: RunContext, text_encoder, tokenizer, concept: str, sld_guidance_scale: float,
                  sld_warmup_steps: int, sld_threshold: float, sld_momentum_scale: float, sld_mom_beta: float):
    embeddings = embed_text(text_encoder, tokenizer, concept, ctx.device).to(text_encoder.dtype)
    ctx.record.note(ctx.node_id, SafeGuidance(concept, sld_guidance_scale, sld_warmup_steps, sld_threshold,
                                              sld_momentum_scale, sld_mom_beta))
    return {"guidance_rule": SafeLatentGuidance(embeddings, sld_guidance_scale, sld_warmup_steps, sld_threshold,
                                                sld_momentum_scale, sld_mom_beta)}
