"""manifest.json: what a run folder holds and how its run ended, kept up to date while the run goes.

A run writes ``manifest.json`` in its folder when it starts (status ``running``), adds each image as soon as
it is written (file name, sha256, the node that saved it), and ends with ``done``, ``failed`` (with the
failing node and the error) or ``interrupted`` (Ctrl-C), with start and end times. A folder that still says
``running`` after its process is gone was killed (SIGKILL, power loss): its listed images are whole.

Another run into the same folder keeps what was there: the earlier runs move to ``earlier_runs``. The file
is rewritten atomically (a reader never sees half of it), under a lock on the folder where the system
has one, so two processes writing into one folder lose no entry.

    with run_manifest(folder, workflow="text2img.yaml", record=ctx.record):
        ...                    # the run's writer (sdflow.run.outputs.RunFolder) calls add_image(folder, name, ...)
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from ..engine import SCHEMA_VERSION, RunRecord, WorkflowError

try:
    import fcntl
except ImportError:  # Windows: no folder lock (two processes in one folder may then lose an entry)
    fcntl = None

MANIFEST = "manifest.json"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    """The folder's manifest: this run's fields at the top, earlier runs in ``earlier_runs``; None if it has none."""
    try:
        return json.loads((Path(folder) / MANIFEST).read_text())
    except FileNotFoundError:
        return None


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    if fcntl is None:
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _write(folder: Path, manifest: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".manifest-", suffix=".json.tmp", dir=folder)
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.fchmod(fd, 0o666 & ~mask)
        with os.fdopen(fd, "w") as handle:
            json.dump(manifest, handle, indent=2)
        os.replace(tmp, folder / MANIFEST)  # the manifest (not an image) is meant to be replaced
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _this_run(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The entry of this process's running run: the top level, or one moved down by a later run meanwhile."""
    for run in [manifest] + manifest.get("earlier_runs", []):
        if run.get("pid") == os.getpid() and run.get("status") == "running":
            return run
    return None


def _update(folder: Path, change) -> None:
    with _locked(folder):
        manifest = read_manifest(folder)
        run = _this_run(manifest) if manifest else None
        if run is not None:
            change(run)
            _write(folder, manifest)


def add_image(folder: str | Path, name: str, sha256: str, node: str) -> None:
    """List an image just written in its folder's manifest (nothing happens when no run of this process keeps one)."""
    folder = Path(folder)
    if (folder / MANIFEST).exists():
        _update(folder, lambda run: run["images"].append({"file": name, "sha256": sha256, "node": node}))


@contextlib.contextmanager
def run_manifest(folder: str | Path, workflow: str = "", record: RunRecord | None = None,
                 started: str | None = None) -> Iterator[None]:
    """Keep ``folder``'s manifest for the run inside the ``with``: running, then done / failed / interrupted.

    ``record``: the run's record (RunContext.record), whose ``fallbacks`` and ``reused`` nodes (their outputs taken
    from an earlier run: the output cache) are copied in at the end, and whose schema version the manifest carries.
    ``started``: when the run began, if before the ``with`` (a fused sweep job's batch); default: now.
    A failure names the node from the exception's ``node`` attribute (NodeRunError, ModelSourceError).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    run = {"schema": SCHEMA_VERSION, "status": "running", "workflow": workflow, "started": started or now(),
           "ended": None, "pid": os.getpid(), "images": [], "fallbacks": [], "reused": [], "node": None, "error": None}
    with _locked(folder):
        earlier = read_manifest(folder)
        if earlier is not None:
            run["earlier_runs"] = earlier.pop("earlier_runs", []) + [earlier]
        _write(folder, run)
    _running.add(folder)

    def end(status: str, error: BaseException | None = None):
        def change(entry):
            fallbacks = [event.to_json() for event in (record.fallbacks if record else [])]
            entry.update(status=status, ended=now(), fallbacks=fallbacks, reused=list(record.reused) if record else [])
            if error is not None:
                message = str(error) if isinstance(error, WorkflowError) else f"{type(error).__name__}: {error}"
                entry.update(node=getattr(error, "node", None), error=message)
        _update(folder, change)

    try:
        yield
    except KeyboardInterrupt:
        end("interrupted")
        raise
    except BaseException as exc:
        end("failed", exc)
        raise
    else:
        end("done")
    finally:
        _running.discard(folder)


_running: set[Path] = set()  # the folders whose run in this process has not ended yet


def interrupt_running_runs() -> None:
    """Say ``interrupted`` in the manifest of every run of this process still going: the command answers Ctrl-C
    while a run's thread is inside one long operation (a huge decode), and exits before the run can say it."""
    for folder in list(_running):
        _update(folder, lambda entry: entry.update(status="interrupted", ended=now()))

