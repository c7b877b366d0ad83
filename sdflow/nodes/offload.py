"""runtime.offload: weights rest in CPU memory and visit the GPU only to compute, through accelerate's hooks, as
diffusers' enable_model_cpu_offload (``model``) and enable_sequential_cpu_offload (``sequential``) attach them.

``model``: a whole model moves to the GPU when called and stays there until another offloaded model is called
(the UNet stays for every step of a denoise loop). ``sequential``: each layer's weights move to the GPU for its own
forward only (the least GPU memory, far slower). The offloaded module is cached like any other component, so a
sweep still loads it once. A node that changes a copy of a model (a LoRA, an embedding) takes it off its hooks
with ``editable_copy`` and puts the copy back on the same ones with ``offloaded_like``.
"""

from __future__ import annotations

import copy
import functools
import weakref

OFFLOAD_MODES = ("none", "model", "sequential")


@functools.cache  # (one class: the hooks share its record of the model on the device)
def one_model_on_device_hook():
    """accelerate's CpuOffload hook, extended to the whole process: calling a model first sends the model that was
    on the GPU before back to CPU memory. (diffusers chains a pipeline's models in a fixed order; an sdflow
    workflow has no fixed order: a refiner, a second LoRA copy or a VAE may come next.)"""
    from accelerate.hooks import CpuOffload
    from accelerate.utils.memory import clear_device_cache

    class OneModelOnDevice(CpuOffload):
        resident: weakref.ref | None = None  # the offloaded model now on the execution device

        def pre_forward(self, module, *args, **kwargs):
            previous = OneModelOnDevice.resident() if OneModelOnDevice.resident is not None else None
            if previous is not None and previous is not module:
                previous.to("cpu")
                clear_device_cache()
            OneModelOnDevice.resident = weakref.ref(module)
            return super().pre_forward(module, *args, **kwargs)

    return OneModelOnDevice


def execution_device(device: str):
    """``cuda`` -> ``cuda:N`` (the current GPU): the hooks compare devices, and ``cuda`` never equals ``cuda:0``."""
    import torch

    found = torch.device(device)
    if found.type == "cuda" and found.index is None:
        found = torch.device("cuda", torch.cuda.current_device())
    return found


def offloaded(module, mode: str, device: str):
    """``module`` (just loaded, on any device) made ready to compute on ``device`` under ``mode``."""
    if mode == "model":
        from accelerate.hooks import add_hook_to_module

        return add_hook_to_module(module.to("cpu"), one_model_on_device_hook()(execution_device(device)))
    if mode == "sequential":
        from accelerate import cpu_offload

        # as diffusers' enable_sequential_cpu_offload: buffers too, for a module holding parameters of its own
        cpu_offload(module.to("cpu"), execution_device(device), offload_buffers=len(module._parameters) > 0)
        return module
    return module.to(device)


def offload_mode(module) -> tuple[str, object] | None:
    """(mode, execution device) of an offloaded module; None for one that is not."""
    hook = getattr(module, "_hf_hook", None)
    if hook is None:
        return None
    if isinstance(hook, one_model_on_device_hook()):
        return "model", hook.execution_device
    # sequential: the top module's hook only aligns devices; its layers' hooks know where they compute
    devices = (getattr(getattr(part, "_hf_hook", None), "execution_device", None) for part in module.modules())
    return "sequential", next((device for device in devices if device is not None), None)


def compute_device(module, default=None):
    """Where ``module`` computes: its hooks' execution device when offloaded (its parameters rest on the CPU, or
    nowhere: ``meta``), else its parameters' device. Inputs go there."""
    found = offload_mode(module)
    if found is not None:
        return found[1]
    first = next(module.parameters(), None)
    return first.device if first is not None else default


def editable_copy(module):
    """A copy of ``module`` with its real weights, off any offload hooks: a LoRA can be fused into it."""
    from accelerate.hooks import remove_hook_from_module

    duplicate = copy.deepcopy(module)
    if offload_mode(module) is not None:
        remove_hook_from_module(duplicate, recurse=True)  # (sequential: puts the weights back from the CPU copy)
        duplicate.to("cpu")
    return duplicate


def offloaded_like(duplicate, original):
    """``duplicate`` (from editable_copy) on the same offload as ``original``."""
    found = offload_mode(original)
    if found is None:
        return duplicate
    mode, device = found
    return offloaded(duplicate, mode, str(device))
