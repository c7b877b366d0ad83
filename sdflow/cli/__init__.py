"""The ``sdflow`` command: a thin front that parses what its user typed and calls the run layer (sdflow.run).

``main`` (main.py) answers ``--help`` from the packaged files, checks the command line and plans every job
before Hydra creates any folder, then hands Hydra the process's ``Command`` (command.py) as the task function
of every job; command_line.py reads the arguments; grid.py draws a sweep's grids when it ends, sweep_progress.py
shows its progress while it runs.
"""

from .main import main

__all__ = ["main"]


def __getattr__(name):  # Hydra instantiates sdflow.cli.SweepGrid and SweepProgress, built on first use (--help: none)
    if name == "SweepGrid":
        from .grid import sweep_grid_callback

        return sweep_grid_callback()
    if name == "SweepProgress":
        from .sweep_progress import sweep_progress_callback

        return sweep_progress_callback()
    raise AttributeError(name)
