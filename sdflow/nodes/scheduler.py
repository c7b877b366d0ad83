"""scheduler: swap the model's noise scheduler for another diffusers scheduler, by name."""

from __future__ import annotations

from ..engine import Input, Param, RunContext, node
from .types import SCHEDULER
from .records import SchedulerSwap

# Short names users type on the command line (scheduler=euler); any diffusers *Scheduler class name works too.
ALIASES = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "pndm": "PNDMScheduler",
    "lms": "LMSDiscreteScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "dpm_single": "DPMSolverSinglestepScheduler",
    "kdpm2": "KDPM2DiscreteScheduler",
    "kdpm2_a": "KDPM2AncestralDiscreteScheduler",
    "unipc": "UniPCMultistepScheduler",
    "deis": "DEISMultistepScheduler",
}


# diffusers' scheduler classes, written out so that validation and `sdflow --help` need not import diffusers
# (seconds); tests/test_imports.py checks it against diffusers_scheduler_classes(), so it cannot drift.
SCHEDULER_CLASSES = (
    "AmusedScheduler", "BlockRefinementScheduler", "CMStochasticIterativeScheduler", "CogVideoXDDIMScheduler",
    "CogVideoXDPMScheduler", "CosineDPMSolverMultistepScheduler", "DDIMInverseScheduler", "DDIMParallelScheduler",
    "DDIMScheduler", "DDPMParallelScheduler", "DDPMScheduler", "DDPMWuerstchenScheduler", "DEISMultistepScheduler",
    "DPMSolverMultistepInverseScheduler", "DPMSolverMultistepScheduler", "DPMSolverSDEScheduler",
    "DPMSolverSinglestepScheduler", "DiscreteDDIMScheduler", "EDMDPMSolverMultistepScheduler", "EDMEulerScheduler",
    "EntropyBoundScheduler", "EulerAncestralDiscreteScheduler", "EulerDiscreteScheduler", "HeliosDMDScheduler",
    "HeliosScheduler", "HeunDiscreteScheduler", "IPNDMScheduler", "KDPM2AncestralDiscreteScheduler",
    "KDPM2DiscreteScheduler", "KarrasVeScheduler", "LCMScheduler", "LMSDiscreteScheduler",
    "LTXEulerAncestralRFScheduler", "MiniMaxH3Scheduler", "PNDMScheduler", "PiflowScheduler",
    "RFD4ProteinaScheduler", "RePaintScheduler", "SASolverScheduler", "SCMScheduler", "ScoreSdeVeScheduler",
    "TCDScheduler", "UnCLIPScheduler", "UniPCMultistepScheduler",
)


def diffusers_scheduler_classes() -> list[str]:
    """The scheduler classes the installed diffusers offers (not flow-matching, Flax or VQ ones); imports diffusers."""
    import diffusers

    return sorted(n for n in dir(diffusers) if n.endswith("Scheduler") and n != "SchedulerMixin"
                  and "Flow" not in n and not n.startswith(("Flax", "VQ")))


def scheduler_names() -> list[str]:
    """Every name the ``name`` parameter accepts: aliases, 'model', and diffusers' scheduler classes."""
    return ["model"] + sorted(ALIASES) + list(SCHEDULER_CLASSES)


def scheduler_class(name: str):
    """The diffusers scheduler class for ``name`` (an alias or a class name); None for 'model'."""
    if name == "model":
        return None
    import diffusers

    return getattr(diffusers, ALIASES.get(name, name))


def check_scheduler(params, inputs_meta, ctx):
    return {"scheduler": inputs_meta["scheduler"]}  # the same model's noise schedule, stepped another way


@node(
    "scheduler",
    "Use another diffusers scheduler with the model's noise schedule (like Scheduler.from_config(pipe.scheduler.config)).",
    inputs={"scheduler": Input(SCHEDULER, "the model's scheduler, whose config is reused")},
    outputs={"scheduler": SCHEDULER},
    params={
        "name": Param(str, "model", doc="'model' keeps the model's own; an alias (euler, dpm, ddim, ...) or class name",
                      choices=tuple(scheduler_names())),
        "karras_sigmas": Param(bool, False, doc="use Karras sigmas (schedulers that support them)"),
    },
    check=check_scheduler,
)
def scheduler(ctx: RunContext, scheduler, name: str, karras_sigmas: bool):
    cls = scheduler_class(name) or type(scheduler)
    overrides = {"use_karras_sigmas": True} if karras_sigmas else {}
    swapped = cls.from_config(scheduler.config, **overrides)
    ctx.record.note(ctx.node_id, SchedulerSwap(type(swapped).__name__))
    return {"scheduler": swapped}
