"""The Hydra callback that ends a sweep with its grids (sdflow.run.grid_layout), whichever launcher ran its jobs."""

from __future__ import annotations

import logging

log = logging.getLogger("sdflow")


def sweep_grid_callback():
    """The SweepGrid class (Hydra imports it by name: sdflow.cli.SweepGrid), made on first use."""
    from hydra.experimental.callback import Callback

    class SweepGrid(Callback):
        """After a multirun, the sweep's grids in its folder, laid out by the swept keys (``grid.x`` etc. choose)."""

        def on_multirun_end(self, config, **kwargs) -> None:
            from ..run.grid_layout import AxisError, grid_setting, write_sweep_grids

            axes = grid_setting(config.get("grid", True))
            if axes is None:
                return
            try:
                for path in write_sweep_grids(config.hydra.sweep.dir, **axes):
                    log.info("sweep grid: %s", path)
            except AxisError as exc:
                log.error("no sweep grid: grid.%s", exc)

    return SweepGrid
