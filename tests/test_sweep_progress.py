"""The progress line of a whole sweep: its figures as jobs end (on a clock the test moves), one bar on a terminal,
nothing off one, log lines kept above the bar, and the callback's counts read from the jobs' folders."""

from __future__ import annotations

import io
import json
import sys

from omegaconf import OmegaConf

from sdflow.cli.sweep_progress import job_images, sweep_size
from sdflow.run.progress import SweepFigures, SweepProgress, clock_text


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_figures_as_jobs_end():
    clock = Clock()
    figures = SweepFigures(jobs=8, clock=clock)
    assert figures.text() == "0/8 jobs, 0 images" and figures.seconds_left is None
    figures.start()
    clock.now += 10
    figures.job_done(images=4)
    clock.now += 10
    figures.job_done(images=0, failed=True)
    assert (figures.jobs_done, figures.images_done, figures.failures) == (2, 4, 1)
    assert figures.images_per_second == 4 / 20
    assert figures.seconds_left == 6 * 20 / 2  # six jobs left at ten seconds a job
    assert figures.text() == "2/8 jobs, 4 images, 0.20 images/s, 1:00 left, 1 failed"
    assert figures.as_dict()["seconds_left"] == 60.0
    for _ in range(6):
        figures.job_done(images=2)
    assert figures.text() == "8/8 jobs, 16 images, 0.80 images/s, 1 failed"  # nothing left: no time left shown
    assert clock_text(3725) == "1:02:05" and clock_text(59.6) == "1:00"


def test_a_terminal_gets_one_bar_and_log_lines_above_it():
    clock, terminal, before = Clock(), FakeTerminal(), sys.stdout
    progress = SweepProgress(jobs=4, stream=terminal, clock=clock)
    try:
        assert sys.stdout is not before  # what the jobs print goes above the bar
        progress.start()
        clock.now += 5
        progress.job_done(images=2)
        print("a job's log line")
        clock.now += 5
        progress.job_done(images=0, failed=True)
    finally:
        progress.close()
    assert sys.stdout is before
    shown = terminal.getvalue()
    assert "sweep 1/4 jobs, 2 images, 0.40 images/s, 0:15 left" in shown
    assert "sweep 2/4 jobs, 2 images, 0.20 images/s, 0:10 left, 1 failed" in shown and "50%" in shown


def test_quiet_when_not_a_terminal(capsys):
    stream, before = io.StringIO(), sys.stdout
    progress = SweepProgress(jobs=3, stream=stream)
    assert sys.stdout is before and progress.bar is None
    progress.start()
    progress.job_done(images=1)
    progress.close()
    assert stream.getvalue() == "" and capsys.readouterr().err == ""
    assert progress.figures.text().startswith("1/3 jobs, 1 images")  # the figures are there all the same


def test_the_callback_counts_the_sweep_and_each_jobs_images(tmp_path):
    config = OmegaConf.create({"hydra": {"sweeper": {"params": {"steps": "1,2"}},
                                         "overrides": {"task": ["seed=0,1,2", "guidance=1.5,3", "model=tiny"]}}})
    assert sweep_size(config) == 12
    (tmp_path / "manifest.json").write_text(json.dumps({"status": "done", "images": [{"file": "a.png"}] * 3}))
    assert job_images(tmp_path) == 3
    assert job_images(tmp_path / "never_ran") == 0
