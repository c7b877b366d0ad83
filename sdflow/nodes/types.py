"""Port types of the Stable Diffusion vocabulary, and the values that travel along them."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable, Protocol

from ..engine import PortType, ValueType, given_text

if TYPE_CHECKING:  # the values hold tensors, but validation (which only needs the port types) never imports torch
    import torch

# What validation knows about the value on each port before anything loads, handed from check to check.
# A field is None when unknown (a hub model not downloaded yet, a config without the key): checks that need
# it then skip. Model parts' facts come from their config.json files (load_model's check).


@dataclass(frozen=True)
class UNetFacts:
    """A UNet's config.json, and the model_index.json setting that belongs with it."""

    source: str
    in_channels: int | None = None
    cross_attention_dim: int | None = None
    addition_embed_type: str | None = None  # "text_time": SDXL's pooled text + size conditioning
    addition_time_embed_dim: int | None = None
    projection_class_embeddings_input_dim: int | None = None
    time_cond_proj_dim: int | None = None  # set for the latent upscaler (and LCM) UNets
    force_zeros_for_empty_prompt: bool | None = None  # the model's model_index.json (SDXL)


@dataclass(frozen=True)
class VAEFacts:
    """A VAE's config.json: latent channels, scaling, and pixels per latent along one side."""

    source: str
    latent_channels: int | None = None
    scaling_factor: float | None = None
    scale_factor: int = 8
    out_channels: int | None = None


@dataclass(frozen=True)
class TextEncoderFacts:
    """A text encoder's config.json: the width of its hidden states and of its projection (SDXL's pooled)."""

    source: str
    hidden_size: int | None = None
    projection_dim: int | None = None


@dataclass(frozen=True)
class ImageEncoderFacts:
    """A CLIP vision encoder's config.json: the width of its projected image embedding."""

    source: str
    projection_dim: int | None = None


@dataclass(frozen=True)
class SchedulerFacts:
    """A scheduler of a model; ``max_noise_level`` is the x4 upscaler's limit (its model_index.json)."""

    source: str | None = None
    max_noise_level: int | None = None


@dataclass(frozen=True)
class ComponentFacts:
    """A model part no check looks into (tokenizer, image processor, depth estimator, safety checker)."""

    source: str


@dataclass(frozen=True)
class EmbeddingFacts:
    """Prompt embeddings: their width, SDXL's pooled width, and how many images their prompt lists speak for.

    ``count_field`` names the longest per-image list (where a count problem is reported); ``force_zeros``
    and ``empty_negative`` are SDXL's empty-negative setting, checked against the UNet's model.
    """

    dim: int | None = None
    pooled_dim: int | None = None
    count: int = 1
    count_field: str | None = None
    force_zeros: bool | None = None
    empty_negative: bool = False


@dataclass(frozen=True)
class LatentFacts:
    """Latents: ``kind`` (noise, image or denoised), channels, the VAE scaling they assume, images, and the
    img2img strength they were prepared for (None: any)."""

    kind: str | None = None
    channels: int | None = None
    scaling_factor: float | None = None
    count: int | None = None
    strength: float | None = None
    size: tuple[int, int] | None = None  # (width, height) of the images they make, in pixels; None: not known


@dataclass(frozen=True)
class ImageFacts:
    """Images (and masks): size in pixels, how many, and channels (3 RGB, 1 depth)."""

    width: int | None = None
    height: int | None = None
    count: int | None = None
    channels: int | None = None


@dataclass(frozen=True)
class ConditionFacts:
    """Extra UNet conditioning: channels joined to the latents, a hint for a UNet that lacks them, time ids."""

    channels: int = 0
    hint: str | None = None
    time_ids: int | None = None  # SDXL: how many micro-conditioning values


@dataclass(frozen=True)
class ControlNetFacts:
    """A ControlNet's config.json: what must match the UNet it steers, and how much its image embedding shrinks."""

    source: str
    in_channels: int | None = None
    cross_attention_dim: int | None = None
    addition_embed_type: str | None = None
    downscale: int | None = None  # 2 ** (image embedding blocks - 1): the control image over the latents' size
    global_pool_conditions: bool | None = None


@dataclass(frozen=True)
class ControlFacts:
    """ControlNet conditions (one per ControlNet, in order): each one's ControlNet, control image size and count."""

    controlnets: tuple[ControlNetFacts | None, ...] = ()
    sizes: tuple[tuple[int, int] | None, ...] = ()
    counts: tuple[int | None, ...] = ()
    nodes: tuple[str, ...] = ()  # the node that made each condition (problems are reported there)


@dataclass(frozen=True)
class GuidanceFacts:
    """A guidance rule: the width of the embeddings it adds to the UNet's batch."""

    dim: int | None = None


UNET = PortType("UNET", "a denoising UNet (UNet2DConditionModel)", UNetFacts)
VAE = PortType("VAE", "a variational autoencoder (AutoencoderKL)", VAEFacts)
TEXT_ENCODER = PortType("TEXT_ENCODER", "a CLIP text encoder", TextEncoderFacts)
TOKENIZER = PortType("TOKENIZER", "a CLIP tokenizer", ComponentFacts)
SCHEDULER = PortType("SCHEDULER", "a diffusers noise scheduler (a fresh copy is used per run)", SchedulerFacts)
SAFETY_CHECKER = PortType("SAFETY_CHECKER", "a safety checker and its feature extractor, or none", ComponentFacts)
IMAGE_ENCODER = PortType("IMAGE_ENCODER", "a CLIP vision encoder with projection (image variation)", ImageEncoderFacts)
IMAGE_PROCESSOR = PortType("IMAGE_PROCESSOR", "an image processor (feature extractor) preparing model inputs",
                           ComponentFacts)
DEPTH_ESTIMATOR = PortType("DEPTH_ESTIMATOR", "a monocular depth model (DPT)", ComponentFacts)
EMBEDDINGS = PortType("EMBEDDINGS", "prompt and negative-prompt text embeddings", EmbeddingFacts)
LATENTS = PortType("LATENTS", "latents with one seed and generator per image", LatentFacts)
IMAGE = PortType("IMAGE", "a batch of RGB images in [0, 1]", ImageFacts)
CONDITION = PortType("CONDITION", "extra UNet conditioning: channels concatenated to the latents, class labels",
                     ConditionFacts)
GUIDANCE = PortType("GUIDANCE", "a rule combining the UNet's predictions in place of plain CFG (safe latent diffusion)",
                    GuidanceFacts)
CONTROLNET = PortType("CONTROLNET", "a ControlNet (ControlNetModel)", ControlNetFacts)
CONTROL = PortType("CONTROL", "ControlNet conditions: a list of (ControlNet, prepared control image, scale, "
                   "start/end of the schedule)", ControlFacts)
MASK = PortType("MASK", "a batch of one-channel masks in [0, 1] (inpainting: white = repaint)", ImageFacts)


@dataclass
class Embeddings:
    """Text embeddings: ``positive`` and ``negative`` are [K, tokens, dim], K = 1 (one prompt for every image)
    or one row per image; ``prompts`` and ``negative_prompts`` are the K texts encoded."""

    positive: torch.Tensor
    negative: torch.Tensor | None
    prompts: list[str]
    negative_prompts: list[str]
    # SDXL: the second text encoder's pooled [K, dim] embeddings, for the UNet's "text_time" added embedding.
    positive_pooled: torch.Tensor | None = None
    negative_pooled: torch.Tensor | None = None

    def finite(self) -> bool:
        return all_finite(self.positive, self.negative, self.positive_pooled, self.negative_pooled)


@dataclass
class Latents:
    """A batch of latents, one seed and one generator per image.

    ``kind`` says what the samples are: ``noise`` (unit Gaussian, not yet scaled by the scheduler),
    ``image`` (an encoded image, to be noised by img2img ``strength``) or ``denoised``.
    Each image's generator is its single stream of randomness, consumed in workflow order, so an image
    never depends on the batch it was made in.
    """

    samples: torch.Tensor
    seeds: list[int]
    generators: list[torch.Generator]
    kind: str
    scaling_factor: float | None = None
    # img2img noise drawn ahead by the node that made these latents, when it must draw more after it
    # (inpainting); None: denoise draws it from the generators.
    noise: torch.Tensor | None = None

    def finite(self) -> bool:
        return all_finite(self.samples, self.noise)

    def for_reuse(self) -> Latents:
        """These latents with generators of their own in the state these are in now (the output cache hands a copy
        to each run that reuses them: later nodes advance the generators they are given)."""
        return replace(self, generators=[copy_generator(g) for g in self.generators])


@dataclass
class Images:
    """RGB images [N, 3, H, W] in [0, 1] with the seeds that made them and safety flags."""

    pixels: torch.Tensor
    seeds: list[int]
    flagged: list[bool] = field(default_factory=list)

    def take(self, start: int, stop: int) -> Images:
        """Images ``start`` to ``stop`` (exclusive) of the batch, with their seeds and flags."""
        return Images(self.pixels[start:stop], self.seeds[start:stop], self.flagged[start:stop])

    def finite(self) -> bool:
        return all_finite(self.pixels)


@dataclass
class Condition:
    """Extra UNet inputs that stay fixed through the loop.

    ``concat`` [N, C, h, w] is appended to the (scaled) latents on the channel axis, as the x4 upscaler,
    inpainting and depth UNets expect; ``class_labels`` [N] go to the UNet's class embedding.
    """

    concat: torch.Tensor | None = None
    class_labels: torch.Tensor | None = None
    blend: MaskBlend | None = None  # legacy inpainting with a 4-channel UNet
    # SDXL micro-conditioning [1, n] (sizes, crop, aesthetic score) for the "text_time" added embedding;
    # negative_time_ids is the unconditional CFG half's (None: the same as time_ids).
    time_ids: torch.Tensor | None = None
    negative_time_ids: torch.Tensor | None = None

    def finite(self) -> bool:
        blend = (self.blend.mask, self.blend.image_latents, self.blend.noise) if self.blend is not None else ()
        return all_finite(self.concat, self.time_ids, self.negative_time_ids, *blend)


@dataclass
class ControlNetCondition:
    """One ControlNet and its control image, as the denoise loop applies it (diffusers' ControlNet pipelines).

    ``image`` [K, 3, H, W] in [0, 1] (not normalized), K = 1 (every image) or one per image, at the output size;
    ``scale`` multiplies its residuals; it acts on the steps inside [``start``, ``end``] of the schedule;
    ``guess_mode``: it sees only the conditional CFG half (no prompt needed), its residuals scaled up by depth.
    """

    model: object
    image: torch.Tensor
    scale: float
    start: float = 0.0
    end: float = 1.0
    guess_mode: bool = False

    def finite(self) -> bool:
        return all_finite(self.image)


@dataclass
class MaskBlend:
    """Legacy inpainting: after each scheduler step, outside ``mask`` the latents are reset to the image.

    ``mask`` [N, 1, h, w] is 1 where to repaint; ``image_latents`` [N, C, h, w] are noised with ``noise`` to
    the next timestep before pasting, as StableDiffusionInpaintPipeline does for 4-channel UNets.
    """

    mask: torch.Tensor
    image_latents: torch.Tensor
    noise: torch.Tensor


@dataclass
class Mask:
    """One-channel masks [N, 1, H, W] in [0, 1], as read (not yet binarized)."""

    pixels: torch.Tensor

    def finite(self) -> bool:
        return all_finite(self.pixels)


class GuidanceRule(Protocol):
    """What denoise asks of a guidance rule (the GUIDANCE port).

    ``extra_embeddings`` ([1, tokens, dim] each) are predicted in the same UNet batch after [uncond, text];
    ``start()`` returns, once per run, ``combine(step_index, noise_uncond, noise_text, noise_extra, guidance)``
    giving the guided noise, so state such as momentum never carries over from one run to the next.
    ``guidance`` is one scale, or an [N, 1, 1, 1] tensor of per-image scales.
    """

    extra_embeddings: list[torch.Tensor]

    def start(self) -> Callable[[int, torch.Tensor, torch.Tensor, list[torch.Tensor], float | torch.Tensor],
                                torch.Tensor]: ...


@dataclass
class SafetyChecker:
    """A safety checker model with the feature extractor that prepares its input."""

    model: object
    feature_extractor: object


def all_finite(*tensors: torch.Tensor | None) -> bool:
    """Whether every value of ``tensors`` (None ones skipped) is finite: the ``finite()`` the engine asks each
    output after its node ran, so NaN/Inf stop the run there instead of reaching a PNG as black."""
    import torch

    return all(bool(torch.isfinite(t).all()) for t in tensors if t is not None and t.is_floating_point())


def check_seeds(value) -> str | None:
    """Why ``value`` is not a seed or a list of seeds (each an int in [0, 2**63)), or None."""
    seeds = value if isinstance(value, list) else [value]
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
        hint = " (remove the quotes)" if any(isinstance(s, str) and s.strip().lstrip("-").isdigit() for s in seeds) else ""
        return f"expected {SEEDS.description}, given {given_text(value)}{hint}"
    if any(s < 0 or s >= 2**63 for s in seeds):
        return f"seeds must be between 0 and 2**63-1, given {value!r}"
    return None


# The seeds parameter type: one seed, or a list with one seed per image (the list is the value: it says how many
# images a run makes). Outer code that needs "the seeds" (fused sweeps, the UI's form) asks for this type.
SEEDS = ValueType("seeds", "an integer seed or a list of integer seeds", check_seeds, whole_list=True)


def seeds_list(seed: int | list[int], batch_size: int = 1) -> list[int]:
    """``seed`` may be one int (expanded to ``batch_size`` consecutive seeds) or an explicit list."""
    if isinstance(seed, list):
        return list(seed)
    return [seed + i for i in range(batch_size)]


def check_seed_batch(params: dict, ctx) -> None:
    """A seed list with batch_size != 1 gives two answers to 'how many images?': refuse it rather than pick one."""
    seed, batch_size = params["seed"], params["batch_size"]
    if isinstance(seed, list) and batch_size != 1:
        ctx.problem("batch_size", f"conflicting settings: seed is a list of {len(seed)} seeds (one image each) and "
                    f"batch_size is {batch_size}; drop one: give the seeds as a list (seed=[1,2,3]), or one seed "
                    f"with batch_size (seed=1 batch_size=3){ctx.config_hint('batch_size')}")


def per_image_list(value) -> list:
    """A per-image value as a list: a single value is a list of one (it applies to every image)."""
    return list(value) if isinstance(value, list) else [value]


def broadcast_lists(**values) -> dict[str, list]:
    """Per-image values as lists of one common length K (lists of one are repeated); raises if lengths disagree."""
    lists = {name: per_image_list(value) for name, value in values.items()}
    count = max(len(v) for v in lists.values())
    for name, items in lists.items():
        if len(items) not in (1, count):
            given = ", ".join(f"{n}: {len(v)}" for n, v in lists.items())
            raise ValueError(f"per-image lists of different lengths ({given}); give each one value or {count}")
    return {name: items * count if len(items) == 1 else items for name, items in lists.items()}


def copy_generator(generator: torch.Generator) -> torch.Generator:
    """A new generator in the state ``generator`` is in now."""
    import torch

    copy = torch.Generator(device=generator.device)
    copy.set_state(generator.get_state())
    return copy


def generators_for(seeds: list[int], device: str) -> list[torch.Generator]:
    """One generator per image, never a shared one."""
    import torch

    return [torch.Generator(device=device).manual_seed(s) for s in seeds]
