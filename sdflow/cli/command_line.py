"""What the ``sdflow`` command line asks for: its overrides and config folders, and whether it sweeps."""

from __future__ import annotations

# Hydra's command-line flags that take a value (the next argument, or after "=").
FLAGS_WITH_VALUE = ("--config-dir", "-cd", "--config-path", "-cp", "--config-name", "-cn", "--experimental-rerun")
# Flags that ask Hydra about its config instead of running anything.
HYDRA_ONLY = ("--hydra-help", "--info", "-i", "--cfg", "-c", "--shell-completion", "--package", "-p",
              "--resolve", "--version")


def split_command_line(argv: list[str]) -> tuple[list[str], list[str]]:
    """(overrides, extra config folders) of a command line; other flags are Hydra's own business."""
    overrides, config_dirs, skip = [], [], False
    for index, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        flag, eq, value = arg.partition("=")
        if flag in FLAGS_WITH_VALUE:
            value = value if eq else (argv[index + 1] if index + 1 < len(argv) else "")
            skip = not eq
            if flag in ("--config-dir", "-cd"):
                config_dirs.append(value)
        elif not arg.startswith("-"):
            overrides.append(arg)
    return overrides, config_dirs


def is_multirun(argv: list[str]) -> bool:
    return any(a in ("-m", "--multirun") for a in argv)


def launches_elsewhere(argv: list[str]) -> bool:
    """Whether a sweep's jobs run on other machines (``hydra/launcher=sdflow_ray`` or ``sdflow_slurm``), which
    check their own hardware: a login node or a CPU Ray head need have no GPU."""
    return any(override.lstrip("+~").partition("=")[0] in ("hydra/launcher", "override hydra/launcher")
               and override.partition("=")[2] in ("sdflow_ray", "sdflow_slurm")
               for override in split_command_line(argv)[0])


def asks_hydra_only(argv: list[str]) -> bool:
    """Whether the command only asks Hydra about its config (``--cfg job``, ``--info``): nothing runs."""
    return any(a in HYDRA_ONLY or a.startswith(("--cfg", "--info")) for a in argv)


def output_folder(argv: list[str]) -> tuple[str, str]:
    """(the config key of the run folder, its value as given or its default's start) for this command line."""
    key = "hydra.sweep.dir" if is_multirun(argv) else "hydra.run.dir"
    folder = "multirun" if is_multirun(argv) else "outputs"
    for override in split_command_line(argv)[0]:
        name, _, value = override.partition("=")
        if name == key:
            folder = value.strip("'\"")
    return key, folder
