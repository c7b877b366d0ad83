"""Fused sweeps: the jobs of a ``-m`` sweep whose plans differ only in per-image values run as shared batches.

Each job stays a real Hydra job (its folder, ``.hydra/`` files, log, images and metadata are its own);
only the work in the middle is shared. Jobs are grouped by their plan with every per-image parameter
(declared ``per_image`` on the node: prompts, seeds, guidance) left out; a group's jobs are packed
whole into batches of at most ``runtime.max_batch`` images, their per-image values concatenated, and the
batch runs once without its sink nodes (save_image). Each job then runs the sinks itself, through the
engine, on its own share of the images and of the run record. Seeds travel per image, so grouping never
changes a pixel.

A batch that fails at run time is not a failure of its jobs: they run again one by one, so only the job
whose input is at fault fails. A CUDA out-of-memory batch is split in half and retried (same pixels).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from ..engine import ComponentCache, NodeRunError, Files, Plan, execute, process_cache
from ..nodes.memory import is_out_of_memory
from ..nodes.types import IMAGE, SEEDS, Images, seeds_list
from .manifest import now
from .outputs import files_of
from .execution import RunResult, run, run_context

log = logging.getLogger("sdflow.sweep")


@dataclass
class Job:
    """One job of a sweep: its Hydra number, overrides, task config and validated plan."""

    num: int
    overrides: tuple[str, ...]
    config: DictConfig
    plan: Plan

    @functools.cached_property
    def images(self) -> int:
        return image_count(self.plan)


def _seed_count(planned, name: str, param) -> int:
    """How many images a seeds parameter speaks for: its list's length, or the parameter counting it (batch_size)."""
    counter = next((other for other, p in planned.spec.params.items() if p.count_of == name), None)
    return len(seeds_list(planned.params[name], planned.params.get(counter, 1) if counter else 1))


def _per_image_lists(plan: Plan) -> dict[tuple[str, str], list]:
    """Every per-image parameter of ``plan`` as one value per image (seeds expanded by their count)."""
    count = image_count(plan)
    lists = {}
    for node_id in plan.order:
        planned = plan.nodes[node_id]
        for name, param in planned.spec.params.items():
            if not param.per_image:
                continue
            value = planned.params[name]
            if value is None:  # an optional seed left out (e.g. "continue each image's own generator")
                continue
            if param.type is SEEDS:  # an int means consecutive seeds, one per image of the job
                value = seeds_list(value, count)
            elif not isinstance(value, list):
                value = [value] * count
            elif len(value) == 1:
                value = value * count
            lists[(node_id, name)] = list(value)
    return lists


def image_count(plan: Plan) -> int:
    """How many images one run of ``plan`` makes: its seeds' count, or the longest per-image list."""
    counts = [1]
    for planned in plan.nodes.values():
        for name, param in planned.spec.params.items():
            value = planned.params.get(name)
            if param.type is SEEDS and value is not None:
                counts.append(_seed_count(planned, name, param))
            elif param.per_image and isinstance(value, list):
                counts.append(len(value))
    return max(counts)


def fuse_key(job: Job) -> str:
    """Jobs with equal keys can share batches: same workflow, runtime and every value that is not per image."""
    parts: list[Any] = [job.plan.workflow.path, OmegaConf.to_container(job.config.get("runtime") or {}, resolve=True)]
    for node_id in job.plan.order:
        planned = job.plan.nodes[node_id]
        # Per-image values may differ within a batch; whether an optional one is given may not. A count of
        # images (batch_size) is folded into the list of the seeds it counts.
        fixed = {k: v if not planned.spec.params[k].per_image else v is None for k, v in planned.params.items()
                 if not planned.spec.params[k].count_of}
        parts.append((node_id, planned.spec.name, sorted((k, str(r)) for k, r in planned.inputs.items()),
                      sorted(fixed.items(), key=lambda kv: kv[0])))
    return repr(parts)


def sinks(plan: Plan) -> list[str]:
    """Nodes that only write (no outputs): each job runs these itself, on its own images."""
    return [n for n in plan.order if not plan.nodes[n].spec.outputs]


def fusable(plan: Plan) -> bool:
    """A plan can join a batch when its sinks read only image batches (which are shared out per job)."""
    return all(spec_input.type == IMAGE for n in sinks(plan) for spec_input in plan.nodes[n].spec.inputs.values())


def merged_plan(jobs: list[Job]) -> Plan:
    """One plan for the images of ``jobs``: per-image values concatenated.

    A value every image shares stays a single value, so a batch whose jobs differ only in seeds
    runs exactly the code path of one job with a list of seeds.
    """
    base = jobs[0].plan
    per_job = [_per_image_lists(job.plan) for job in jobs]
    nodes = {}
    for node_id, planned in base.nodes.items():
        params = dict(planned.params)
        for name, param in planned.spec.params.items():
            if not param.per_image or (node_id, name) not in per_job[0]:
                continue
            values = [v for lists in per_job for v in lists[(node_id, name)]]
            single = param.type is not SEEDS and all(v == values[0] for v in values)
            params[name] = values[0] if single else values
            for counter, other in planned.spec.params.items():
                if other.count_of == name:
                    params[counter] = 1  # the seeds are a list now: one image each
        nodes[node_id] = replace(planned, params=params)
    return Plan(base.workflow, nodes, list(base.order), base.graph)


def _cat_images(parts: list[Images]) -> Images:
    import torch

    return Images(torch.cat([p.pixels for p in parts]), [s for p in parts for s in p.seeds],
                  [f for p in parts for f in p.flagged] if all(p.flagged for p in parts) else [])


@dataclass
class Batch:
    """Some whole jobs of one group, run together; after running, each sink input's images on the CPU."""

    jobs: list[Job]
    images: dict[tuple[str, str], Images] = field(default_factory=dict)  # (sink node, input) -> all jobs' images
    record: Any = None  # the batch run's RunRecord
    state: str = "pending"  # pending -> ready (images held) -> released (all jobs saved), or failed
    splits: int = 0  # out-of-memory halvings it took
    started: str = ""  # when the batch began: each job's manifest counts its run from then

    def offset(self, job: Job) -> int:
        return sum(j.images for j in self.jobs[: self.jobs.index(job)])

    def run(self, cache: ComponentCache) -> None:
        self.started = self.started or now()
        try:
            self.images, self.record = _run_images(self.jobs, cache)
        except NodeRunError as exc:
            if not is_out_of_memory(exc) or len(self.jobs) == 1:
                raise
            self._run_split(cache)

    def _run_split(self, cache: ComponentCache) -> None:
        """Out of memory: free it, run each half on its own (seeds are per image: the same pixels)."""
        from ..nodes.memory import free_memory

        free_memory()
        half = len(self.jobs) // 2
        log.warning("out of memory on a batch of %d images; splitting it in two", sum(j.images for j in self.jobs))
        parts = [Batch(self.jobs[:half]), Batch(self.jobs[half:])]
        for part in parts:
            part.run(cache)
        self.images = {key: _cat_images([p.images[key] for p in parts]) for key in parts[0].images}
        self.record = parts[0].record
        self.splits = 1 + max(p.splits for p in parts)

    def share(self, job: Job, into) -> None:
        """Make ``into`` (the job's own run record) hold the job's share of the batch's record."""
        start = self.offset(job)
        shared = self.record.share(start, job.images, lambda node_id, name: job.plan.nodes[node_id].params[name])
        into.entries, into.fallbacks = shared.entries, shared.fallbacks
        into.warnings = list(dict.fromkeys(into.warnings + shared.warnings))
        if self.splits:
            into.fallback(None, "batch_split", f"out of memory: batch split {self.splits}x")
        into.batch = {"jobs": [j.num for j in self.jobs], "images": sum(j.images for j in self.jobs)}

    def given(self, job: Job) -> dict[str, dict[str, Images]]:
        """The outputs the job's sinks read, as its share of the batch's images (what ``execute`` is given)."""
        start = self.offset(job)
        given: dict[str, dict[str, Images]] = {}
        for sink in sinks(job.plan):
            for name, ref in job.plan.nodes[sink].inputs.items():
                given.setdefault(ref.node, {})[ref.output] = self.images[(sink, name)].take(start, start + job.images)
        return given


def _run_images(jobs: list[Job], cache: ComponentCache) -> tuple[dict[tuple[str, str], Images], Any]:
    """Run the batch of ``jobs`` but its sinks; the images each sink input would get, on the CPU, and the record."""
    plan = merged_plan(jobs)
    ctx = run_context(plan, jobs[0].config, cache, progress=False)
    outputs = execute(plan, ctx, only=[n for n in plan.order if n not in sinks(plan)])
    images = {}
    for sink in sinks(jobs[0].plan):
        for name, ref in jobs[0].plan.nodes[sink].inputs.items():
            batch = outputs[ref.node][ref.output]
            images[(sink, name)] = Images(batch.pixels.detach().cpu(), list(batch.seeds), list(batch.flagged))
    return images, ctx.record


class Sweep:
    """The jobs of one launch, grouped into batches; each job's task asks it for the job's result."""

    def __init__(self, jobs: list[Job], max_batch: int):
        self.jobs = {job.num: job for job in jobs}
        self.batch_of: dict[int, Batch] = {}
        groups: dict[str, list[Job]] = {}
        for job in jobs:
            if fusable(job.plan):
                groups.setdefault(fuse_key(job), []).append(job)
        for members in groups.values():
            if len(members) < 2:
                continue  # nothing to share: the job runs on its own, exactly as without fusing
            batch: list[Job] = []
            for job in members:
                if batch and sum(j.images for j in batch) + job.images > max_batch:
                    self._add(batch)
                    batch = []
                batch.append(job)
            self._add(batch)
        fused = len(self.batch_of)
        batches = len({id(b) for b in self.batch_of.values()})
        log.info("sweep: %d jobs; %d of them fused into %d batches of up to %d images", len(jobs), fused, batches,
                 max_batch)

    def _add(self, jobs: list[Job]) -> None:
        if len(jobs) < 2:
            return
        batch = Batch(jobs)
        for job in jobs:
            self.batch_of[job.num] = batch

    def run_job(self, num: int, output: str | Path | Files, cache: ComponentCache | None = None,
                warn: Callable[[str], None] | None = None, on_write: Callable[[Path], None] | None = None) -> RunResult:
        """The result of job ``num``: its batch's images saved into ``output``, or, unfused, its own run."""
        cache = cache if cache is not None else process_cache()
        job = self.jobs[num]
        batch = self.batch_of.get(num)
        if batch is not None and batch.state == "pending":
            try:
                batch.run(cache)
                batch.state = "ready"
            except Exception as exc:  # noqa: BLE001  (any fault: its jobs run one by one, so only the culprit fails)
                batch.state = "failed"
                log.warning("a fused batch of jobs %s failed (%s); running its jobs one by one",
                            [j.num for j in batch.jobs], exc)
        if batch is None or batch.state != "ready":
            return run(job.plan, job.config, output, cache=cache, warn=warn, on_write=on_write)
        ctx = run_context(job.plan, job.config, cache, progress=False)
        batch.share(job, ctx.record)
        for warning in ctx.record.warnings if warn is not None else ():
            warn(warning)
        with files_of(output, ctx.record, started=batch.started, on_write=on_write) as files:
            ctx.files = files
            outputs = execute(job.plan, ctx, given=batch.given(job), only=sinks(job.plan))
        if job is batch.jobs[-1]:
            batch.images, batch.state = {}, "released"  # every job of the batch has its images: free them
        return RunResult(outputs, ctx.record, list(getattr(files, "saved", [])), job.plan)


def max_batch(config: DictConfig) -> int:
    """``runtime.max_batch``, or what memory holds at this image size: on the CPU 8 images of 512x512 (more of
    smaller ones, up to 64), on CUDA what free memory holds.

    The CUDA estimate (~0.6 GiB of activations per 512x512 image in fp16, scaled by pixel count, 80% of the
    free memory) is deliberately rough: an out-of-memory batch is split and retried anyway.
    """
    runtime = config.get("runtime") or {}
    if runtime.get("max_batch"):
        return int(runtime.max_batch)
    pixels = int(config.get("width") or 512) * int(config.get("height") or 512)
    if str(runtime.get("device", "cpu")).startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            free, _ = torch.cuda.mem_get_info()
            per_image = 0.6 * 2**30 * pixels / (512 * 512)
            return max(1, min(64, int(0.8 * free / per_image)))
    return max(1, min(64, 8 * 512 * 512 // pixels))
