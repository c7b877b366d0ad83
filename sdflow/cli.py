"""The ``sdflow`` command: a thin Hydra entry point.

Every job of the command line (one run, or each job of a ``-m`` sweep) is validated before Hydra
creates any output folder, so a broken workflow exits non-zero having written nothing.
"""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from .api import compose_config, plan_workflow, quote_text_values, run_plan
from .engine import WorkflowError, process_cache

log = logging.getLogger("sdflow")


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """The override list of every job a ``-m`` sweep would launch (Hydra's own sweep expansion)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    batches = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    return [list(job) for batch in batches for job in batch]


def validate_command_line(argv: list[str]) -> None:
    """Compose and validate the workflow of every job the command line asks for; raises WorkflowError."""
    overrides = [a for a in argv if not a.startswith("-")]
    multirun = any(a in ("-m", "--multirun") for a in argv)
    jobs = sweep_jobs(overrides) if multirun else [overrides]
    seen = set()
    for job in jobs:
        config = compose_config(job)
        key = repr(sorted(job))
        if key in seen:
            continue
        seen.add(key)
        try:
            plan_workflow(config)
        except WorkflowError as exc:
            if multirun:
                raise WorkflowError(f"sweep job [{' '.join(job)}]: {exc}") from None
            raise


class SweepGrid(Callback):
    """After a multirun, tile every job's images into one grid.png in the sweep folder."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if not config.get("grid", True):
            return
        from pathlib import Path

        from .info import image_grid

        folder = Path(config.hydra.sweep.dir)
        if any(folder.rglob("*.png")):
            log.info("sweep grid: %s", image_grid(folder))


@hydra.main(config_path="pkg://sdflow.conf", config_name="config", version_base=None)
def run_job(config: DictConfig) -> None:
    output_dir = HydraConfig.get().runtime.output_dir
    plan = plan_workflow(config)
    result = run_plan(plan, config, output_dir)
    for path in result.saved:
        log.info("wrote %s", path)
    flagged = result.record.get("safety", {})
    for node_id, report in flagged.items():
        if isinstance(report, dict) and any(report["flagged"]):
            log.warning("%s: %d image(s) flagged by the safety checker", node_id, sum(report["flagged"]))
    log.info("component cache: %s", process_cache().stats)


def main() -> None:
    argv = sys.argv[1:]
    if not any(a in ("-m", "--multirun") for a in argv):
        argv = quote_text_values(argv)
        sys.argv[1:] = argv  # what Hydra parses next
    asks_hydra_only = any(a in ("--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c", "--shell-completion")
                          or a.startswith(("--cfg", "--info")) for a in argv)
    if not asks_hydra_only:
        try:
            validate_command_line(argv)
        except WorkflowError as exc:
            print(f"sdflow: {exc}", file=sys.stderr)
            sys.exit(2)
        except Exception as exc:  # Hydra's own override / config errors
            print(f"sdflow: {type(exc).__name__}: {exc}", file=sys.stderr)
            sys.exit(2)
    try:
        run_job()
    except WorkflowError as exc:
        print(f"sdflow: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
