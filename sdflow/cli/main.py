"""``sdflow``: check the command line and plan every job before Hydra makes a folder, then let Hydra run them.

Every job is planned before Hydra creates any output folder, so a broken workflow exits non-zero having
written nothing: a single run and a sweep under any other sweeper here, an ``-m`` sweep in sdflow's sweeper.
Faults are one line (SDFLOW_DEBUG=1 shows the traceback); Ctrl-C lists what was saved.
"""

from __future__ import annotations

import logging
import sys

from .answer_ctrl_c import exit_now_if_work_abandoned, run_answering_ctrl_c
from .command import Command
from .command_line import asks_hydra_only, is_multirun, launches_elsewhere, output_folder, split_command_line

log = logging.getLogger("sdflow")


def main() -> None:
    argv = sys.argv[1:]
    if any(a in ("--help", "-h") for a in argv):
        from ..help import command_help

        print(command_help())
        return
    from ..runtime_env import quiet_third_party, settle_heap

    quiet_third_party()  # before validation: building a tiny model there may print library notices
    settle_heap()  # the libraries imported so far live as long as the command
    command = Command()
    _note_interrupts(command)
    try:
        if argv[:1] == ["reproduce"]:
            run_answering_ctrl_c(lambda: reproduce_command(argv[1:], command))
        elif is_multirun(argv) and launches_elsewhere(argv):
            _run(argv, command)  # (here the work is waiting on Ray or Slurm, which Ctrl-C reaches: the workers stop)
        else:
            run_answering_ctrl_c(lambda: _run(argv, command))
    except KeyboardInterrupt:
        _report_interrupt(command)
    except Exception as exc:  # noqa: BLE001  (every fault becomes one line; SDFLOW_DEBUG=1 shows the traceback)
        if command.interrupted:  # a library turned the interrupt into its own error (e.g. a weight read cut short)
            _report_interrupt(command)
        _fail(exc)
    if command.failures:
        print(command.failure_report(), file=sys.stderr)
        sys.exit(1)


def _run(argv: list[str], command: Command) -> None:
    from ..run import check_command_line, output_folder_problem, quote_text_values
    from ..engine import ValidationError

    multirun = is_multirun(argv)
    if not multirun:
        argv = quote_text_values(argv)
        sys.argv[1:] = argv  # what Hydra parses next
    check_command_line(split_command_line(argv)[0], sweep=multirun)
    key, folder = output_folder(argv)
    problem = output_folder_problem(folder, key)
    if problem:
        raise ValidationError([problem])
    # A sweep is planned by sdflow's sweeper; under another sweeper (hydra/sweeper=...) it is planned here.
    other_sweeper = any(a.startswith("hydra/sweeper=") for a in argv)
    if not asks_hydra_only(argv) and (not multirun or other_sweeper):
        plan_command_line(argv, command)
    _run_hydra(command)


def plan_command_line(argv: list[str], command: Command) -> None:
    """Compose and plan every job the command line asks for; raises WorkflowError. The plans are kept in the
    command, so the job that runs next does not compose and plan again."""
    from ..engine import InvalidWorkflow, WorkflowError
    from ..run import compose_config, plan

    overrides, config_dirs = split_command_line(argv)
    multirun = is_multirun(argv)
    if multirun:
        from hydra_plugins.sdflow_launcher.hydra_jobs import sweep_jobs

        jobs = sweep_jobs(overrides)
    else:
        jobs = [overrides]
    here = not (multirun and launches_elsewhere(argv))  # else the workers check their hardware
    for job in jobs:
        config = compose_config(job, config_dirs=config_dirs)
        try:
            command.keep_plan(job, plan(None, config, hardware=here), config)
        except WorkflowError as exc:
            if multirun:  # the job named, the kind kept (refused before running: exit status 2)
                kind = InvalidWorkflow if isinstance(exc, InvalidWorkflow) else WorkflowError
                raise kind(f"sweep job [{' '.join(job)}]: {exc}") from None
            raise


def reproduce_command(args: list[str], command: Command) -> None:
    """``sdflow reproduce IMAGE.png [overrides] [--no-check-models]``: make an image again from its metadata."""
    import time

    from ..reproduce import reproduce

    if not args or args[0].startswith("-"):
        raise SystemExit("usage: sdflow reproduce IMAGE.png [node.param=value | param=value ...] [--no-check-models]")
    image, rest = args[0], args[1:]
    overrides = [a for a in rest if not a.startswith("--")]
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    from ..run import claim_folder

    folder = claim_folder(time.strftime("outputs/%Y-%m-%d/%H-%M-%S"))
    done = reproduce(image, overrides, output_dir=folder,
                     check_models="--no-check-models" not in rest, progress=True, on_write=command.saved.append)
    for note in done.notes:
        log.warning(note)
    log.info("wrote %s", done.remade)
    if done.same_pixels is None:
        log.info("changed by the overrides: not compared with %s", image)
    elif done.same_pixels:
        log.info("same pixels as %s", image)
    else:
        log.warning("differs from %s by up to %s levels", image, done.max_difference)


def _note_interrupts(command: Command) -> None:
    """Remember a Ctrl-C even when a library catches the KeyboardInterrupt and raises an error of its own."""
    import signal

    def interrupt(signum, frame):
        command.interrupted = True
        signal.default_int_handler(signum, frame)

    signal.signal(signal.SIGINT, interrupt)


def _report_interrupt(command: Command) -> None:
    print(f"sdflow: interrupted; {len(command.saved)} image(s) were saved before it"
          + "".join(f"\n  {p}" for p in command.saved), file=sys.stderr)
    exit_now_if_work_abandoned(130)
    sys.exit(130)


def _run_hydra(command: Command) -> None:
    """Hydra's own entry point, told to let exceptions through: sdflow reports them in one line."""
    import os

    import hydra
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("sdflow_new_folder", command.claim_folder, replace=True)
    os.environ["HYDRA_FULL_ERROR"] = "1"  # exceptions come back here; sdflow prints them in one line
    hydra.main(config_path="pkg://sdflow.conf", config_name="config", version_base=None)(command)()
    if command.error is not None:
        raise command.error


def _fail(exc: BaseException) -> None:
    import os
    import traceback

    from ..engine import InvalidWorkflow, WorkflowError

    if os.environ.get("SDFLOW_DEBUG", "") not in ("", "0"):
        traceback.print_exception(exc)
    message = str(exc) if isinstance(exc, WorkflowError) else f"{type(exc).__name__}: {exc}"
    hint = "" if isinstance(exc, InvalidWorkflow) else "  (SDFLOW_DEBUG=1 shows the traceback)"
    print(f"sdflow: {message}{hint}", file=sys.stderr)
    known_before_running = isinstance(exc, InvalidWorkflow) or type(exc).__module__.startswith(("hydra", "omegaconf"))
    sys.exit(2 if known_before_running else 1)
