"""``sdflow --help``: what sdflow does, its workflows and the values a user sets, read from the packaged files.

It imports neither Hydra nor torch, so it answers at once; Hydra's own help is ``sdflow --hydra-help``.
"""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
CONF = PACKAGE / "conf"
_TOP_LEVEL = re.compile(r"^([a-z_][a-z0-9_]*):\s*(.*?)\s*(?:#\s*(.*))?$")


def workflow_summaries() -> list[tuple[str, str]]:
    """(name, first sentence of its description) of every workflow sdflow finds by name."""
    import yaml

    from .workflows import available_workflows, workflow_path

    summaries = []
    for name in available_workflows():
        try:
            description = str((yaml.safe_load(workflow_path(name).read_text(encoding="utf-8")) or {}).get("description", ""))
        except (OSError, yaml.YAMLError, AttributeError):
            description = "(unreadable)"
        first = re.split(r"; |\. ", description)[0].rstrip(".")
        summaries.append((name, textwrap.shorten(first, width=82, placeholder=" ...")))
    return summaries


def config_values() -> list[tuple[str, str, str]]:
    """(key, default, comment) of every top-level value in conf/config.yaml, as written there."""
    values = []
    for line in (CONF / "config.yaml").read_text(encoding="utf-8").splitlines():
        if line.startswith(("defaults:", "hydra:")):
            continue
        found = _TOP_LEVEL.match(line)
        if not found:
            continue
        key, default, comment = found.groups()
        if default.startswith(">"):
            default = "(long text)"
        elif "${" in default:
            default = "(from the model preset)" if "model." in default else "(computed)"
        values.append((key, default, comment or ""))
    return values


def group_choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def command_help() -> str:
    width = 100
    lines = [
        "sdflow: Stable Diffusion as declarative YAML workflows of typed nodes, run with Hydra overrides.",
        "Each run validates the whole workflow before any model loads, loads each weight once, and writes",
        "PNGs that record how to make them again.",
        "",
        "Usage:",
        "  sdflow [KEY=VALUE ...]          one run; images in outputs/DATE/TIME/",
        "  sdflow -m KEY=A,B [KEY=C,D ...] a sweep, one job per combination, jobs fused into batches;",
        "                                  images in multirun/DATE/TIME/N/ and a grid.png",
        "",
        "Workflows (workflow=NAME, or workflow=path/to/your_own.yaml):",
    ]
    for name, summary in workflow_summaries():
        lines.append(f"  {name:<15} {summary}")
    lines += ["", "Values you set (KEY=VALUE; default, meaning):"]
    for key, default, comment in config_values():
        if len(default) > 14:  # a long default gets a line of its own
            lines += [f"  {key:<24} {default}", f"  {'':<24} {'':<14} {comment}".rstrip()]
            continue
        lines.append(f"  {key:<24} {default:<14} {textwrap.shorten(comment, width=width - 42, placeholder=' ...')}".rstrip())
    lines += [
        "",
        "Config groups (GROUP=CHOICE):",
        *(f"  {group:<10} {', '.join(group_choices(group))}" for group in ("model", "scheduler", "runtime")),
        "",
        "Examples:",
        '  sdflow prompt="a small red circle on the left, blue background" seed=3',
        '  sdflow -m seed=0,1,2,3 guidance=1.5,3',
        '  sdflow -m prompt=\'"a large green square","a small yellow triangle on the right"\'',
        "",
        "More: sdflow-info nodes (every node's fields), sdflow-info graph NAME (a workflow as a diagram),",
        "      sdflow --cfg job (the composed config), sdflow --hydra-help (Hydra's own options).",
    ]
    if os.environ.get("SDFLOW_WORKFLOW_PATH"):
        lines.append(f"Your workflow folders (SDFLOW_WORKFLOW_PATH): {os.environ['SDFLOW_WORKFLOW_PATH']}")
    return "\n".join(lines)
