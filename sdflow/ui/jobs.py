"""Runs for the web UI and the HTTP API: check and validate a request at once, then queue it; one runs at a time.

A request names a workflow (or sends one's text) with overrides (``KEY=VALUE``, as on the command line)
and typed values (JSON). It is refused, with every problem at once, before it is queued: by the server's
limits (sdflow/ui/limits.py) and by sdflow.run.plan, the checks every door runs (the runtime's among them).
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..engine import Plan, Problem, RunRecord, ValidationError, WorkflowError, parse_workflow
from ..nodes.previews import StepPreview
from ..run import claim_folder, compose_config, plan, run
from ..run.outputs import StaticFile, write_new_file
from .form import form_fields
from .limits import (MAX_WORKFLOW_BYTES, REQUEST_GROUPS, Folders, check_files, check_overrides, check_values,
                     check_workflow_name)

log = logging.getLogger("sdflow.ui")
SUBMITTED = "submitted.yaml"  # the file name a sent workflow's problems and records carry


@dataclass
class RunRequest:
    """What to run: ``workflow`` (a name) or ``workflow_yaml`` (a workflow's text), with overrides and values.

    ``values`` are typed: ``{"seed": [1, 2, 3], "prompt": "a red circle"}``; a file value (``image``, ``mask``,
    ``depth_map``) is the name of an upload; a config group's value (``model``, ``scheduler``) is a preset name.
    """

    workflow: str | None = None
    workflow_yaml: str | None = None
    overrides: list[str] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)


@dataclass
class Job:
    """A queued, running or finished run. ``version`` grows with every change, for those who follow it."""

    id: str
    request: RunRequest
    config: DictConfig
    plan: Plan
    output_dir: Path
    status: str = "queued"  # queued, running, done, failed
    node: str = ""
    step: int = 0
    total: int = 0
    preview: Any = None  # the latest preview, a PIL image
    previews: int = 0
    images: list[Path] = field(default_factory=list)
    record: RunRecord | None = None
    error: str | None = None
    version: int = 0
    created: float = field(default_factory=time.time)

    @property
    def finished(self) -> bool:
        return self.status in ("done", "failed")

    def summary(self) -> dict:
        return {"id": self.id, "status": self.status, "workflow": self.plan.workflow.path, "node": self.node,
                "step": self.step, "total": self.total, "previews": self.previews, "error": self.error,
                "images": [p.name for p in self.images], "output_dir": str(self.output_dir),
                "warnings": list(self.record.warnings) if self.record is not None else []}


def prepare(request: RunRequest, folders: Folders, compose_lock: threading.Lock) -> tuple[DictConfig, Plan]:
    """The config and validated plan of ``request``; raises ValidationError with every problem found."""
    problems = []
    if (request.workflow is None) == (request.workflow_yaml is None):
        raise ValidationError([Problem("request", None, "workflow", "give a workflow name or a workflow's text "
                                       "(workflow_yaml), one of the two")])
    if request.workflow is not None:
        problem = check_workflow_name(request.workflow)
        if problem:
            raise ValidationError([problem])
        from ..workflows import workflow_path

        path = workflow_path(request.workflow)
        text, where = path.read_text(encoding="utf-8"), str(path)
    else:
        text, where = str(request.workflow_yaml), SUBMITTED
        if len(text.encode()) > MAX_WORKFLOW_BYTES:
            raise ValidationError([Problem(SUBMITTED, None, None, f"workflow text is over {MAX_WORKFLOW_BYTES} bytes")])
    workflow = parse_workflow(text, where)  # raises ValidationError
    interpolated = {(e.id, name) for e in workflow.nodes.values() for name, v in e.fields.items() if "${" in str(v)}

    values = dict(request.values)
    overrides = [str(o) for o in request.overrides]
    overrides += [f"{key}={values.pop(key)}" for key in REQUEST_GROUPS if isinstance(values.get(key), str)]
    problems += check_overrides(overrides)
    problems += check_values(values)
    file_keys = {f.key for f in form_fields(workflow, OmegaConf.create({})) if f.kind == "file"}
    for override in [o for o in overrides if o.partition("=")[0] in file_keys]:  # file=UPLOAD on a command line
        overrides.remove(override)
        key, _, name = override.partition("=")
        values[key] = None if name in ("null", "") else name
    for key in file_keys & set(values):
        if values[key] is not None:
            stored = folders.upload_path(values[key])
            if stored is None:
                problems.append(Problem("values", None, key, f"{values[key]!r} is not an upload: upload the image "
                                        "first (POST /api/uploads) and give the name it returns"))
            else:
                values[key] = str(stored)
    if problems:
        raise ValidationError(problems)

    with compose_lock:  # Hydra's global state: one composition at a time
        try:
            config = compose_config(overrides)
        except ValidationError:
            raise
        except Exception as exc:  # Hydra's own override and composition errors
            raise ValidationError([Problem("overrides", None, None, str(exc).splitlines()[0])]) from None
    OmegaConf.set_struct(config, False)
    for key, value in values.items():
        OmegaConf.update(config, key, value, merge=False)
    config.workflow = request.workflow or SUBMITTED

    only = interpolated if request.workflow is not None else None
    return config, plan(workflow, config, screen=lambda resolved: check_files(resolved, folders, only))


class JobQueue:
    """Checks and queues runs; one worker thread runs them one at a time (one GPU, one component cache)."""

    def __init__(self, folders: Folders, keep: int = 500):
        self.folders = folders
        self.jobs: dict[str, Job] = {}
        self.keep = keep
        self._compose_lock = threading.Lock()
        self._changed = threading.Condition()
        self._queue: queue.Queue[Job] = queue.Queue()
        self._counter = itertools.count(1)
        self._worker = threading.Thread(target=self._work, name="sdflow-ui-runs", daemon=True)
        self._worker.start()

    def submit(self, request: RunRequest) -> Job:
        """Check, validate and queue ``request``; raises ValidationError (nothing queued) with every problem."""
        config, planned = prepare(request, self.folders, self._compose_lock)
        job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{next(self._counter):04d}"
        job = Job(job_id, request, config, planned, self.folders.outputs / "ui" / job_id)
        with self._changed:
            self.jobs[job.id] = job
            for old in list(self.jobs)[: max(0, len(self.jobs) - self.keep)]:
                if self.jobs[old].finished:
                    del self.jobs[old]
        self._queue.put(job)
        return job

    def compose(self, overrides: list[str]) -> DictConfig:
        """The config for ``overrides`` (e.g. ``["model=tiny"]``): form defaults come from it."""
        with self._compose_lock:
            return compose_config(overrides)

    def ahead_of(self, job: Job) -> int:
        """How many queued or running jobs will run before ``job``."""
        return sum(1 for other in list(self.jobs.values()) if not other.finished and other.created < job.created
                   and other is not job)

    def wait(self, job: Job, version: int, timeout: float) -> int:
        """Block until ``job`` changes past ``version`` (or ``timeout`` seconds pass); returns its version."""
        with self._changed:
            self._changed.wait_for(lambda: job.version > version, timeout=timeout)
            return job.version

    def _update(self, job: Job, **changes) -> None:
        with self._changed:
            # status last: whoever reads a finished status then finds the images and record already set
            for name in sorted(changes, key=lambda name: name == "status"):
                setattr(job, name, changes[name])
            job.version += 1
            self._changed.notify_all()

    def _on_step(self, job: Job, event: StepPreview) -> None:
        changes = {"node": event.node, "step": event.step, "total": event.total}
        if event.image is not None:
            changes.update(preview=event.image, previews=job.previews + 1)
        self._update(job, **changes)

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            self._update(job, status="running")
            try:
                job.output_dir = claim_folder(job.output_dir)  # its own folder, even past a restart in the same second
                if job.request.workflow_yaml is not None:  # the run folder keeps the workflow it ran
                    write_new_file(job.output_dir, SUBMITTED, StaticFile(job.request.workflow_yaml.encode("utf-8")))
                result = run(job.plan, job.config, job.output_dir, progress=False,
                             on_preview=lambda event, job=job: self._on_step(job, event))
                self._update(job, status="done", images=list(result.saved), record=result.record)
            except WorkflowError as exc:
                self._update(job, status="failed", error=str(exc))
            except Exception as exc:  # a server keeps serving: the job says what went wrong
                log.exception("job %s failed", job.id)
                self._update(job, status="failed", error=f"{type(exc).__name__}: {exc}")
