"""Fused sweeps: the jobs of a ``-m`` sweep whose plans differ only in per-image values run as shared batches.

Each job stays a real Hydra job (its folder, ``.hydra/`` files, log, images and metadata are its own);
only the work in the middle is shared. Jobs are grouped by their plan with every per-image parameter
(declared ``per_image`` on the node: prompts, seeds, guidance) left out; a group's jobs are packed
whole into batches of at most ``runtime.max_batch`` images, their per-image values concatenated, and the
batch runs once without its sink nodes (save_image). Each job then runs the sinks itself on its own
slice of the images. Seeds travel per image, so grouping never changes a pixel.

A batch that fails at run time is not a failure of its jobs: they run again one by one, so only the job
whose input is at fault fails. A CUDA out-of-memory batch is split in half and retried (same pixels).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .api import RunResult, plan_workflow, resolved_workflow_yaml, run_plan, runtime_compile, saved_paths
from .engine import NodeRunError, Plan, RunContext, process_cache
from .engine.execute import per_image_values
from .manifest import now, run_manifest
from .nodes.types import Images, seeds_list

log = logging.getLogger("sdflow.sweep")


@dataclass
class Job:
    """One job of a sweep: its Hydra number, overrides, task config and validated plan."""

    num: int
    overrides: tuple[str, ...]
    config: DictConfig
    plan: Plan

    @property
    def images(self) -> int:
        return image_count(self.plan)


def _per_image_lists(plan: Plan) -> dict[tuple[str, str], list]:
    """Every per-image parameter of ``plan`` as one value per image (seeds expanded by batch_size)."""
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
            if param.type == "seeds":  # an int means consecutive seeds, one per image of the job
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
            if param.type == "seeds" and value is not None:
                counts.append(len(seeds_list(value, planned.params.get("batch_size", 1))))
            elif param.per_image and isinstance(value, list):
                counts.append(len(value))
    return max(counts)


def fuse_key(job: Job) -> str:
    """Jobs with equal keys can share batches: same workflow, runtime and every value that is not per image."""
    parts: list[Any] = [job.plan.workflow.path, OmegaConf.to_container(job.config.get("runtime") or {}, resolve=True)]
    for node_id in job.plan.order:
        planned = job.plan.nodes[node_id]
        seeded = any(p.type == "seeds" for p in planned.spec.params.values())
        # Per-image values may differ within a batch; whether an optional one is given may not.
        fixed = {k: v if not planned.spec.params[k].per_image else v is None for k, v in planned.params.items()
                 if not (seeded and k == "batch_size")}
        parts.append((node_id, planned.spec.name, sorted((k, str(r)) for k, r in planned.inputs.items()),
                      sorted(fixed.items(), key=lambda kv: kv[0])))
    return repr(parts)


def sinks(plan: Plan) -> list[str]:
    """Nodes that only write (no outputs): each job runs these itself, on its own images."""
    return [n for n in plan.order if not plan.nodes[n].spec.outputs]


def fusable(plan: Plan) -> bool:
    """A plan can join a batch when its sinks read only image batches (which slice per job)."""
    from .nodes.types import IMAGE

    return all(spec_input.type == IMAGE for n in sinks(plan) for spec_input in plan.nodes[n].spec.inputs.values())


def merged_plan(jobs: list[Job]) -> Plan:
    """One plan for the images of ``jobs``: per-image values concatenated, sinks left out.

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
            single = param.type != "seeds" and all(v == values[0] for v in values)
            params[name] = values[0] if single else values
            if param.type == "seeds" and "batch_size" in params:
                params["batch_size"] = 1
        nodes[node_id] = replace(planned, params=params)
    order = [n for n in base.order if n not in sinks(base)]
    return Plan(base.workflow, nodes, order, base.graph)


def _cat_images(parts: list[Images]) -> Images:
    import torch

    return Images(torch.cat([p.pixels for p in parts]), [s for p in parts for s in p.seeds],
                  [f for p in parts for f in p.flagged] if all(p.flagged for p in parts) else [])


def _is_oom(exc: BaseException) -> bool:
    cause = exc.__cause__ or exc
    return type(cause).__name__ == "OutOfMemoryError"


@dataclass
class Batch:
    """Some whole jobs of one group, run together; after running, each sink input's images on the CPU."""

    jobs: list[Job]
    images: dict[tuple[str, str], Images] = field(default_factory=dict)  # (sink node, input) -> all jobs' images
    record: dict[str, Any] = field(default_factory=dict)
    state: str = "pending"  # pending -> ready (images held) -> released (all jobs saved), or failed
    splits: int = 0  # out-of-memory halvings it took
    started: str = ""  # when the batch began: each job's manifest counts its run from then

    def offset(self, job: Job) -> int:
        return sum(j.images for j in self.jobs[: self.jobs.index(job)])

    def run(self, cache) -> None:
        self.started = self.started or now()
        try:
            self.images, self.record = _run_images(self.jobs, cache)
        except NodeRunError as exc:
            if not _is_oom(exc) or len(self.jobs) == 1:
                raise
            self._run_split(cache)

    def _run_split(self, cache) -> None:
        """Out of memory: free it, run each half on its own (seeds are per image: the same pixels)."""
        import torch

        torch.cuda.empty_cache()
        half = len(self.jobs) // 2
        log.warning("out of memory on a batch of %d images; splitting it in two", sum(j.images for j in self.jobs))
        parts = [Batch(self.jobs[:half]), Batch(self.jobs[half:])]
        for part in parts:
            part.run(cache)
        self.images = {key: _cat_images([p.images[key] for p in parts]) for key in parts[0].images}
        self.record = parts[0].record
        self.splits = 1 + max(p.splits for p in parts)


def _run_images(jobs: list[Job], cache) -> tuple[dict[tuple[str, str], Images], dict[str, Any]]:
    plan = merged_plan(jobs)
    result = run_plan(plan, jobs[0].config, output_dir=None, cache=cache, warn=False)
    images = {}
    for sink in sinks(jobs[0].plan):
        for name, ref in jobs[0].plan.nodes[sink].inputs.items():
            batch = result.outputs[ref.node][ref.output]
            images[(sink, name)] = Images(batch.pixels.detach().cpu(), list(batch.seeds), list(batch.flagged))
    return images, result.record


def _job_record(batch: Batch, job: Job) -> dict[str, Any]:
    """The batch's run record, made this job's: its own workflow, per-image values and slice of per-image lists."""
    record = copy.deepcopy({k: v for k, v in batch.record.items() if k not in ("saved", "warnings")})
    start, count, total = batch.offset(job), job.images, sum(j.images for j in batch.jobs)

    def own(value):
        # Lists with one entry per image of the batch (seeds, safety flags) become this job's slice.
        if isinstance(value, list) and len(value) == total and total != count:
            return value[start:start + count]
        if isinstance(value, dict):
            return {k: own(v) for k, v in value.items()}
        return value

    record = {k: v if k == "fallbacks" else own(v) for k, v in record.items()}
    # Per-image parameters that nodes record under their id take this job's values (prompts, guidance).
    for key, value in per_image_values(job.plan).items():
        node_id, name = key.split(".", 1)
        for section in record.values():
            if isinstance(section, dict) and isinstance(section.get(node_id), dict) and name in section[node_id]:
                section[node_id][name] = value
    record["workflow_yaml"] = resolved_workflow_yaml(job.plan)
    if batch.splits:
        record["fallbacks"] = record.get("fallbacks", []) + [f"out of memory: batch split {batch.splits}x"]
    record["batch"] = {"jobs": [j.num for j in batch.jobs], "images": total}
    return record


def _save(batch: Batch, job: Job, output_dir: Path, cache) -> RunResult:
    """Run the job's sinks on its slice of the batch's images, with its own record."""
    runtime = job.config.get("runtime") or {}
    ctx = RunContext(cache=cache, device=str(runtime.get("device", "cpu")), dtype=str(runtime.get("dtype", "float32")),
                     output_dir=output_dir, progress=False, record=_job_record(batch, job),
                     workflow_file=job.plan.workflow.path, per_image=per_image_values(job.plan),
                     compile=runtime_compile(runtime))
    start = batch.offset(job)
    with run_manifest(output_dir, workflow=job.plan.workflow.path, record=ctx.record, started=batch.started):
        for sink in sinks(job.plan):
            planned = job.plan.nodes[sink]
            kwargs = dict(planned.params)
            for name in planned.inputs:
                kwargs[name] = batch.images[(sink, name)].take(start, start + job.images)
            ctx.node_id = sink
            try:
                planned.spec.fn(ctx, **kwargs)
            except Exception as exc:
                raise NodeRunError(job.plan.workflow.path, sink, planned.spec.name, exc) from exc
            finally:
                saved_paths.extend(Path(p) for p in ctx.record.get("saved", []) if Path(p) not in saved_paths)
    return RunResult({}, ctx.record, [Path(p) for p in ctx.record.get("saved", [])], job.plan)


class Sweep:
    """The jobs of one launch, grouped into batches; a job's task function asks it for its result."""

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

    def run_job(self, num: int, output_dir: str | Path, cache=None) -> RunResult:
        """The result of job ``num``: its batch's images saved in its folder, or, unfused, its own run."""
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
            return run_plan(job.plan, job.config, output_dir, cache=cache)
        result = _save(batch, job, Path(output_dir), cache)
        if job is batch.jobs[-1]:
            batch.images, batch.state = {}, "released"  # every job of the batch has its images: free them
        return result


_active: Sweep | None = None
_planned: dict[tuple[str, ...], tuple[DictConfig, Plan]] = {}


def remember_plan(overrides, sweep_config: DictConfig, plan: Plan) -> None:
    """Kept from validation, so a job is composed and validated once per sweep."""
    _planned[tuple(overrides)] = (sweep_config, plan)


def planned(overrides) -> tuple[DictConfig, Plan] | None:
    return _planned.get(tuple(overrides))


def activate(sweep: Sweep | None) -> None:
    global _active
    _active = sweep


def forget_plans() -> None:
    _planned.clear()


failures: list[str] = []  # "job N [overrides]: error" of every job of this process's sweep that failed


def job_failed(num: int, overrides, error: BaseException) -> None:
    failures.append(f"job {num} [{' '.join(overrides)}]: {error}")


def max_batch(config: DictConfig) -> int:
    """``runtime.max_batch``, or a default: 8 images on the CPU, on CUDA what free memory holds at this size.

    The CUDA estimate (~0.6 GiB of activations per 512x512 image in fp16, scaled by pixel count, 80% of
    the free memory) is deliberately rough: an out-of-memory batch is split and retried anyway.
    """
    runtime = config.get("runtime") or {}
    if runtime.get("max_batch"):
        return int(runtime.max_batch)
    if str(runtime.get("device", "cpu")).startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            free, _ = torch.cuda.mem_get_info()
            pixels = int(config.get("width") or 512) * int(config.get("height") or 512)
            per_image = 0.6 * 2**30 * pixels / (512 * 512)
            return max(1, min(64, int(0.8 * free / per_image)))
    return 8


def run_task(config: DictConfig, overrides, job_num: int | None, output_dir: str | Path) -> RunResult:
    """What a job's task function runs: its fused batch's images when it is in one, else its own plan."""
    if _active is not None and job_num in _active.jobs:
        return _active.run_job(job_num, output_dir)
    remembered = planned(overrides)
    plan = remembered[1] if remembered is not None else plan_workflow(config)
    return run_plan(plan, config, output_dir)
