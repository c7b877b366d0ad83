"""The Hydra callback that shows a sweep's progress as a whole on the terminal (sdflow.run.progress), whichever
launcher runs its jobs: Hydra calls it as each job starts and ends."""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger("sdflow")

# A Ray or Slurm sweep has its own bar, counting outcomes as its workers send them (sdflow.run.remote.sweep).
OWN_BAR = "hydra_plugins.sdflow_launcher.remote."


def job_images(folder: str | Path) -> int:
    """How many images a job wrote: its manifest's list (0 when it wrote none, or no manifest)."""
    try:
        return len(json.loads((Path(folder) / "manifest.json").read_text(encoding="utf-8")).get("images", []))
    except (OSError, ValueError):
        return 0


def sweep_size(config) -> int:
    """The number of jobs the sweep of ``config`` (the multirun's config) launches: Hydra's own expansion."""
    from hydra_plugins.sdflow_launcher.hydra_jobs import sweep_jobs

    params = config.hydra.sweeper.get("params") or {}
    overrides = [f"{key}={value}" for key, value in params.items()] + list(config.hydra.overrides.task)
    return len(sweep_jobs(overrides))


def sweep_progress_callback():
    """The SweepProgress class (Hydra imports it by name: sdflow.cli.SweepProgress), made on first use."""
    from hydra.core.utils import JobStatus
    from hydra.experimental.callback import Callback

    class SweepProgress(Callback):
        """One progress line for the whole sweep: jobs, images, images/s, time left, failures; quiet off a terminal."""

        def __init__(self) -> None:
            self.progress = None

        def on_multirun_start(self, config, **kwargs) -> None:
            from ..run.progress import SweepProgress as Progress

            if str(config.hydra.launcher.get("_target_", "")).startswith(OWN_BAR):
                return
            try:
                jobs = sweep_size(config)
            except Exception as exc:  # noqa: BLE001  (the sweeper reports a sweep it cannot expand, in its words)
                log.debug("no sweep progress: %s", exc)
                return
            self.progress = Progress(jobs)

        def on_job_start(self, config, **kwargs) -> None:
            if self.progress is not None:
                self.progress.start()

        def on_job_end(self, config, job_return, **kwargs) -> None:
            if self.progress is not None:
                self.progress.job_done(job_images(config.hydra.runtime.output_dir),
                                       failed=job_return.status == JobStatus.FAILED)

        def on_multirun_end(self, config, **kwargs) -> None:
            if self.progress is not None:
                self.progress.close()
                log.info("sweep: %s", self.progress.figures.text())
                self.progress = None

    return SweepProgress
