"""A sweep's progress as a whole: jobs done of all, images done, images per second, time left, failures so far.

``SweepFigures`` computes the figures (told of each job as it ends); ``SweepProgress`` shows them as one tqdm bar on
a terminal and stays quiet when its stream is not one (a log file, a pipe, CI). While the bar shows, lines written to
standard output (the jobs' log lines) are written above it, and the denoise loop's own bars (tqdm, ``leave=False``)
take the line under it and vanish when their loop ends.

    progress = SweepProgress(jobs=64)
    progress.job_done(images=4)            # or job_done(images=0, failed=True)
    progress.figures.text()                # "3/64 jobs, 12 images, 2.10 images/s, 1:30 left, 1 failed"
    progress.close()                       # the bar stays as the sweep's last line
"""

from __future__ import annotations

import io
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, TextIO


def clock_text(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


@dataclass
class SweepFigures:
    """What a sweep has done so far, from when its first job started (``start``)."""

    jobs: int  # the sweep's jobs, all of them
    clock: Callable[[], float] = time.monotonic
    jobs_done: int = 0  # failed ones included
    images_done: int = 0
    failures: int = 0
    started: float | None = None

    def start(self) -> None:
        if self.started is None:
            self.started = self.clock()

    def job_done(self, images: int, failed: bool = False) -> None:
        self.start()
        self.jobs_done += 1
        self.images_done += images
        self.failures += bool(failed)

    @property
    def elapsed(self) -> float:
        return 0.0 if self.started is None else max(self.clock() - self.started, 0.0)

    @property
    def images_per_second(self) -> float | None:
        return self.images_done / self.elapsed if self.images_done and self.elapsed > 0 else None

    @property
    def seconds_left(self) -> float | None:
        """The jobs left at the pace of the jobs done so far; None before the first job ends."""
        if not self.jobs_done:
            return None
        return max(self.jobs - self.jobs_done, 0) * self.elapsed / self.jobs_done

    def as_dict(self) -> dict:
        return {"jobs": self.jobs, "jobs_done": self.jobs_done, "images_done": self.images_done,
                "failures": self.failures, "images_per_second": self.images_per_second,
                "seconds_left": self.seconds_left, "elapsed": self.elapsed}

    def text(self) -> str:
        parts = [f"{self.jobs_done}/{self.jobs} jobs", f"{self.images_done} images"]
        rate, left = self.images_per_second, self.seconds_left
        if rate is not None:
            parts.append(f"{rate:.2f} images/s")
        if left is not None and self.jobs_done < self.jobs:
            parts.append(f"{clock_text(left)} left")
        if self.failures:
            parts.append(f"{self.failures} failed")
        return ", ".join(parts)


class _AboveTheBar(io.TextIOBase):
    """Standard output while the bar shows: each write clears the bars, writes, and draws them again."""

    def __init__(self, stream: TextIO, bar_stream: TextIO):
        self.stream, self.bar_stream = stream, bar_stream

    def write(self, text: str) -> int:
        from tqdm import tqdm

        with tqdm.external_write_mode(file=self.bar_stream):
            written = self.stream.write(text)
            self.stream.flush()
        return written

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self):  # the wrapped stream's
        return getattr(self.stream, "encoding", "utf-8")

    def __getattr__(self, name: str):  # anything else (``buffer``, ``errors``...): the wrapped stream's
        return getattr(self.stream, name)


@dataclass
class SweepProgress:
    """The sweep's figures as one progress bar on ``stream`` (standard error) when it is a terminal, else nothing."""

    jobs: int
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    clock: Callable[[], float] = time.monotonic
    figures: SweepFigures = field(init=False)
    bar: object = field(default=None, init=False)
    _stdout: TextIO | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.figures = SweepFigures(self.jobs, self.clock)
        if not self.shown:
            return
        from tqdm import tqdm

        self.bar = tqdm(total=self.jobs, desc=f"sweep {self.figures.text()}", file=self.stream, position=0,
                        dynamic_ncols=True, bar_format="{desc} |{bar}| {percentage:3.0f}%")
        # Log handlers made from here on write to sys.stdout as it is now: above the bar.
        if sys.stdout is not self.stream and not isinstance(sys.stdout, _AboveTheBar):
            self._stdout, sys.stdout = sys.stdout, _AboveTheBar(sys.stdout, self.stream)

    @property
    def shown(self) -> bool:
        return bool(getattr(self.stream, "isatty", lambda: False)())

    def start(self) -> None:
        """The first job starts: the clock runs from here."""
        self.figures.start()

    def job_done(self, images: int, failed: bool = False) -> None:
        self.figures.job_done(images, failed)
        if self.bar is not None:
            self.bar.set_description_str(f"sweep {self.figures.text()}", refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self._stdout is not None:
            sys.stdout, self._stdout = self._stdout, None
