"""What the nodes note in the run record: one dataclass per kind of entry, the schema of every PNG's metadata.

Each entry is kept under its node id in its ``section`` (the key it has in the ``sdflow`` JSON of a PNG, as
since schema 1). Fields declared ``per_image()`` hold one value per image; ``param_value(name)`` the node's
parameter as given (see sdflow.engine.record).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..engine import Entry, param_value, per_image


@dataclass
class ModelLoad(Entry):
    """A model (or VAE) loaded from ``source`` (as written), found at ``resolved``; its weights' hashes, which
    ``reproduce`` checks, and A1111's short "Model hash"."""

    section = "models"
    source: str
    resolved: str
    sha256: dict[str, str] = field(default_factory=dict)  # weight file (relative) -> sha256
    model_hash: str | None = None


@dataclass
class Seeds(Entry):
    """The seed of each image a node drew noise for."""

    section = "seeds"
    seeds: list[int] = per_image()

    def to_json(self) -> list[int]:
        return list(self.seeds)


@dataclass
class PromptEncoding(Entry):
    """Prompts encoded (as given: one, or one per image) and how many distinct texts that took."""

    section = "prompts"
    prompt: Any = param_value("prompt")
    negative_prompt: Any = param_value("negative_prompt")
    texts_encoded: int = 0


@dataclass
class SchedulerSwap(Entry):
    """The scheduler class a node swapped in."""

    section = "schedulers"
    scheduler: str

    def to_json(self) -> str:
        return self.scheduler


@dataclass
class Denoising(Entry):
    """A denoise loop as it ran: its scheduler class, steps asked and run, guidance (as given), img2img strength
    and SDXL's base/refiner split."""

    section = "denoise"
    scheduler: str
    steps: int
    steps_run: int
    guidance: Any = param_value("guidance")
    strength: float = 1.0
    denoising_start: float | None = None
    denoising_end: float | None = None


@dataclass
class ControlNetUse(Entry):
    """A ControlNet applied: where it came from and its weights' short hash, the sha256 of each control image as
    prepared, its conditioning scale and the share of the schedule it acted on."""

    section = "controlnets"
    source: str | None
    model_hash: str | None
    image_sha256: list[str]
    scale: float
    start: float
    end: float
    guess_mode: bool

    def share(self, start: int, count: int, param) -> ControlNetUse:
        """A fused job's share: its own images' control images when there is one per image (else the one for all)."""
        shared = super().share(start, count, param)
        if len(self.image_sha256) > 1:
            shared.image_sha256 = self.image_sha256[start:start + count]
        return shared


@dataclass
class LatentUpscale(Entry):
    """The latent x2 upscaler's loop: steps, guidance, prompts (guidance 0 encodes the empty prompt) and seeds."""

    section = "latent_upscale"
    steps: int
    guidance: float
    prompt: Any = param_value("prompt")
    negative_prompt: Any = param_value("negative_prompt")
    seed: list[int] | None = per_image(default=None)  # None: each image's generator continued

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "prompt": "" if self.guidance == 0 else self.prompt}


@dataclass
class AdapterFile:
    """A LoRA or textual-inversion file as loaded: its name (token), resolved path, sha256 and LoRA weight."""

    name: str
    path: str
    sha256: str
    weight: float | None = None

    def to_json(self) -> dict[str, Any]:
        data = {"name": self.name, "path": self.path, "weight": self.weight, "sha256": self.sha256}
        return data if self.weight is not None else {k: v for k, v in data.items() if k != "weight"}


@dataclass
class AdapterLoad(Entry):
    """Adapter files a node applied (see LoraLoad, EmbeddingLoad)."""

    files: list[AdapterFile]

    def to_json(self) -> list[dict[str, Any]]:
        return [f.to_json() for f in self.files]


class LoraLoad(AdapterLoad):
    """LoRA files applied to a model's UNet and text encoders."""

    section = "loras"


class EmbeddingLoad(AdapterLoad):
    """Textual-inversion embeddings added to a model's tokenizers and text encoders."""

    section = "embeddings"


@dataclass
class SafetyReport(Entry):
    """Which images the safety checker flagged, and what was done with them (``black`` or ``keep``)."""

    section = "safety"
    flagged: list[bool] = per_image()
    action: str = "black"


@dataclass
class SafetySkipped(Entry):
    """A safety check that could not run (the model has none), and why."""

    section = "safety"
    reason: str

    def to_json(self) -> str:
        return f"skipped: {self.reason}"


@dataclass
class SafeGuidance(Entry):
    """Safe latent diffusion's concept and settings."""

    section = "safe_guidance"
    concept: str
    sld_guidance_scale: float
    sld_warmup_steps: int
    sld_threshold: float
    sld_momentum_scale: float
    sld_mom_beta: float
