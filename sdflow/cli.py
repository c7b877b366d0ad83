"""The ``sdflow`` command: a thin Hydra entry point.

Every job is validated before Hydra creates any output folder, so a broken workflow exits non-zero
having written nothing: a single run here, before Hydra; a ``-m`` sweep in sdflow's sweeper, which
also refuses a bare comma in a swept prompt. ``--help`` answers from the packaged files alone.
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("sdflow")

# Hydra's command-line flags that take a value (the next argument, or after "=").
FLAGS_WITH_VALUE = ("--config-dir", "-cd", "--config-path", "-cp", "--config-name", "-cn", "--experimental-rerun")


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


HYDRA_ONLY = ("--hydra-help", "--info", "-i", "--cfg", "-c", "--shell-completion", "--package", "-p",
              "--resolve", "--version")


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """The override list of every job a ``-m`` sweep would launch (Hydra's own sweep expansion)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    batches = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    return [list(job) for batch in batches for job in batch]


def validate_command_line(argv: list[str]) -> None:
    """Compose and validate the workflow of every job the command line asks for; raises WorkflowError.

    Validated plans are kept, so the job that runs next does not compose and validate again.
    """
    from .api import compose_config, plan_workflow
    from .engine import WorkflowError
    from .fused import remember_plan

    overrides, config_dirs = split_command_line(argv)
    multirun = any(a in ("-m", "--multirun") for a in argv)
    jobs = sweep_jobs(overrides) if multirun else [overrides]
    for job in jobs:
        config = compose_config(job, config_dirs=config_dirs)
        try:
            remember_plan(job, config, plan_workflow(config))
        except WorkflowError as exc:
            if multirun:
                raise WorkflowError(f"sweep job [{' '.join(job)}]: {exc}") from None
            raise


def _sweep_grid_callback():
    from hydra.experimental.callback import Callback

    class SweepGrid(Callback):
        """After a multirun, tile every job's images into one grid.png in the sweep folder."""

        def on_multirun_end(self, config, **kwargs) -> None:
            if not config.get("grid", True):
                return
            from pathlib import Path

            from .info import image_grid

            folder = Path(config.hydra.sweep.dir)
            if any(folder.rglob("*.png")):
                log.info("sweep grid: %s", image_grid(folder))

    return SweepGrid


def __getattr__(name):  # Hydra instantiates sdflow.cli.SweepGrid; built on first use, keeping --help import-free
    if name == "SweepGrid":
        return _sweep_grid_callback()
    raise AttributeError(name)


_single_run: list[BaseException] = []  # the failure of a single (non-sweep) run, raised again by main()


def run_job(config) -> None:
    """The task function of every job: run its plan (or its share of a fused batch), report what it wrote."""
    from hydra.core.hydra_config import HydraConfig

    from .engine import WorkflowError, process_cache
    from .fused import run_task

    hydra_config = HydraConfig.get()
    sweeping = str(hydra_config.mode) == "RunMode.MULTIRUN"
    try:
        result = run_task(config, list(hydra_config.overrides.task), hydra_config.job.get("num") if sweeping else None,
                          hydra_config.runtime.output_dir)
    except WorkflowError as exc:
        if sweeping:
            log.error("%s", exc)  # into the job's own log, besides the sweep's summary
            raise  # the job's JobReturn records the failure
        _single_run.append(exc)  # reported by main() in one line, past Hydra's traceback printing
        return
    for path in result.saved:
        log.info("wrote %s", path)
    for node_id, report in result.record.get("safety", {}).items():
        if isinstance(report, dict) and any(report["flagged"]):
            log.warning("%s: %d image(s) flagged by the safety checker", node_id, sum(report["flagged"]))
    if "ran_on" not in result.record:  # a remote worker's job logged its worker's cache instead
        log.info("component cache: %s", process_cache().stats)


def main() -> None:
    argv = sys.argv[1:]
    if any(a in ("--help", "-h") for a in argv):
        from .help import command_help

        print(command_help())
        return
    from .runtime_env import quiet_third_party

    quiet_third_party()  # before validation: building a tiny model there may print library notices
    if argv[:1] == ["reproduce"]:
        _note_interrupts()
        try:
            reproduce_command(argv[1:])
        except KeyboardInterrupt:
            _report_interrupt()
        except Exception as exc:  # noqa: BLE001  (one line, as for a run)
            _fail(exc)
        return
    multirun = any(a in ("-m", "--multirun") for a in argv)
    if not multirun:
        from .api import quote_text_values

        argv = quote_text_values(argv)
        sys.argv[1:] = argv  # what Hydra parses next
    asks_hydra_only = any(a in HYDRA_ONLY or a.startswith(("--cfg", "--info")) for a in argv)
    # A sweep is validated by sdflow's sweeper; another sweeper (hydra/sweeper=...) gets it done here.
    other_sweeper = any(a.startswith("hydra/sweeper=") for a in argv)
    _note_interrupts()
    try:
        from .api import check_command_line

        check_command_line(split_command_line(argv)[0])
        check_output_folder(argv, multirun)
        if not asks_hydra_only and (not multirun or other_sweeper):
            validate_command_line(argv)
        _run_hydra()
    except KeyboardInterrupt:
        _report_interrupt()
    except Exception as exc:  # noqa: BLE001  (every fault becomes one line; SDFLOW_DEBUG=1 shows the traceback)
        if _interrupted:  # a library turned the interrupt into its own error (e.g. a weight read cut short)
            _report_interrupt()
        _fail(exc)
    from .fused import failures

    if failures:
        print(f"sdflow: {len(failures)} job(s) of the sweep failed:" + "".join(f"\n  - {f}" for f in failures),
              file=sys.stderr)
        sys.exit(1)


_claimed: dict[str, str] = {}


def claim_folder(base: str) -> str:
    """``base``, or ``base_2``, ``base_3``...: the first that this process could create, so two runs started in
    the same second never share a folder (mkdir is atomic: exactly one process creates each name).

    Registered as the config resolver ``sdflow_new_folder``; Hydra reads the folder from many config copies,
    so the claim is remembered per process: every read gives the same folder.
    """
    import os

    if base in _claimed:
        return _claimed[base]
    candidate, number = base, 1
    while True:
        try:
            os.makedirs(os.path.dirname(candidate) or ".", exist_ok=True)
            os.mkdir(candidate)
            _claimed[base] = candidate
            return candidate
        except FileExistsError:
            number += 1
            candidate = f"{base}_{number}"


def reproduce_command(args: list[str]) -> None:
    """``sdflow reproduce IMAGE.png [overrides] [--no-check-models]``: make an image again from its metadata."""
    import time

    from .reproduce import reproduce

    if not args or args[0].startswith("-"):
        raise SystemExit("usage: sdflow reproduce IMAGE.png [node.param=value | param=value ...] [--no-check-models]")
    image, rest = args[0], args[1:]
    overrides = [a for a in rest if not a.startswith("--")]
    folder = claim_folder(time.strftime("outputs/%Y-%m-%d/%H-%M-%S"))
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    done = reproduce(image, overrides, output_dir=folder, check_models="--no-check-models" not in rest, progress=True)
    for note in done.notes:
        log.warning(note)
    log.info("wrote %s", done.remade)
    if done.same_pixels is None:
        log.info("changed by the overrides: not compared with %s", image)
    elif done.same_pixels:
        log.info("same pixels as %s", image)
    else:
        log.warning("differs from %s by up to %s levels", image, done.max_difference)


def check_output_folder(argv: list[str], multirun: bool) -> None:
    """A run folder that cannot be created is a validation error, before any model loads."""
    from .api import output_folder_problem
    from .engine import ValidationError

    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    folder = "multirun" if multirun else "outputs"
    for override in split_command_line(argv)[0]:
        name, _, value = override.partition("=")
        if name == key:
            folder = value.strip("'\"")
    problem = output_folder_problem(folder, key)
    if problem:
        raise ValidationError([problem])


_interrupted = False


def _note_interrupts() -> None:
    """Remember a Ctrl-C even when a library catches the KeyboardInterrupt and raises an error of its own."""
    import signal

    def interrupt(signum, frame):
        global _interrupted
        _interrupted = True
        signal.default_int_handler(signum, frame)

    signal.signal(signal.SIGINT, interrupt)


def _report_interrupt() -> None:
    from .api import saved_paths

    print(f"sdflow: interrupted; {len(saved_paths)} image(s) were saved before it"
          + "".join(f"\n  {p}" for p in saved_paths), file=sys.stderr)
    sys.exit(130)


def _run_hydra() -> None:
    """Hydra's own entry point, told to let exceptions through: sdflow reports them in one line."""
    import os

    import hydra
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("sdflow_new_folder"):
        OmegaConf.register_new_resolver("sdflow_new_folder", claim_folder)

    os.environ["HYDRA_FULL_ERROR"] = "1"  # exceptions come back here; sdflow prints them in one line
    hydra.main(config_path="pkg://sdflow.conf", config_name="config", version_base=None)(run_job)()
    if _single_run:
        raise _single_run.pop()


def _fail(exc: BaseException) -> None:
    import os
    import traceback

    from .engine import InvalidWorkflow, WorkflowError

    if os.environ.get("SDFLOW_DEBUG", "") not in ("", "0"):
        traceback.print_exception(exc)
    message = str(exc) if isinstance(exc, WorkflowError) else f"{type(exc).__name__}: {exc}"
    hint = "" if isinstance(exc, InvalidWorkflow) else "  (SDFLOW_DEBUG=1 shows the traceback)"
    print(f"sdflow: {message}{hint}", file=sys.stderr)
    known_before_running = isinstance(exc, InvalidWorkflow) or type(exc).__module__.startswith(("hydra", "omegaconf"))
    sys.exit(2 if known_before_running else 1)


if __name__ == "__main__":
    main()
