"""The Hydra callback that ends a sweep with grid.png: every job's images tiled in the sweep folder."""

from __future__ import annotations

import logging

log = logging.getLogger("sdflow")


def sweep_grid_callback():
    """The SweepGrid class (Hydra imports it by name: sdflow.cli.SweepGrid), made on first use."""
    from hydra.experimental.callback import Callback

    class SweepGrid(Callback):
        """After a multirun, tile every job's images into one grid.png in the sweep folder."""

        def on_multirun_end(self, config, **kwargs) -> None:
            if not config.get("grid", True):
                return
            from pathlib import Path

            from ..info import image_grid

            folder = Path(config.hydra.sweep.dir)
            if any(folder.rglob("*.png")):
                log.info("sweep grid: %s", image_grid(folder))

    return SweepGrid
