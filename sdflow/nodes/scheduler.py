"""scheduler: swap the model's noise scheduler for another diffusers scheduler, by name."""

from __future__ import annotations

import diffusers

from ..engine import Input, Param, RunContext, node
from .types import SCHEDULER

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


def scheduler_names() -> list[str]:
    """Every name the ``name`` parameter accepts: aliases, 'model', and diffusers' scheduler classes."""
    classes = sorted(n for n in dir(diffusers) if n.endswith("Scheduler") and n != "SchedulerMixin"
                     and "Flow" not in n and not n.startswith(("Flax", "VQ")))
    return ["model"] + sorted(ALIASES) + classes


def scheduler_class(name: str):
    """The diffusers scheduler class for ``name`` (an alias or a class name); None for 'model'."""
    if name == "model":
        return None
    return getattr(diffusers, ALIASES.get(name, name))


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
)
def scheduler(ctx: RunContext, scheduler, name: str, karras_sigmas: bool):
    cls = scheduler_class(name) or type(scheduler)
    overrides = {"use_karras_sigmas": True} if karras_sigmas else {}
    swapped = cls.from_config(scheduler.config, **overrides)
    ctx.record.setdefault("schedulers", {})[ctx.node_id] = type(swapped).__name__
    return {"scheduler": swapped}
