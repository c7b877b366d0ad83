"""What sdflow's sweeps take from Hydra's internals, and Hydra's per-job work done without what nothing reads.

The one module that imports Hydra's private parts (tests/test_hydra_contract.py pins what it relies on):
- ``BasicSweeper`` and ``sweep_jobs``: Hydra's expansion of ``-m`` overrides into jobs;
- ``SweepConfigs``: each job's config exactly as ``load_sweep_config`` composes it, Hydra's composition run once
  per shape of job (about 60 ms a job here) and the other jobs derived from it;
- ``run_hydra_job``: Hydra's ``run_job`` (the job folder, its ``.hydra/`` files, log, callbacks, JobReturn) for a
  job whose task config is already made, without run_job's two deep copies and second masked copy of the config;
  ``SweepLogging``: Hydra's logging set-up around each job, its handlers made once where only file names differ.
"""

import copy
import logging
import os
import pickle
import re
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

import yaml
from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobRuntime, JobStatus, configure_log, env_override
from hydra.types import HydraContext
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf._utils import OmegaConfDumper, get_omega_conf_dumper
from omegaconf.nodes import AnyNode, StringNode, ValueNode

from sdflow.run.yaml_text import YamlBlocks

__all__ = ["BasicSweeper", "HydraFiles", "SweepConfigs", "SweepLogging", "run_hydra_job", "sweep_jobs"]


def sweep_jobs(overrides: List[str], config_loader: Any = None) -> List[List[str]]:
    """The override list of every job a ``-m`` sweep would launch (Hydra's own sweep expansion).

    ``config_loader``: where ``glob()`` over a config group finds the group's options (default: sdflow's config).
    """
    if config_loader is None:
        from hydra import initialize_config_module
        from hydra.core.global_hydra import GlobalHydra

        if not GlobalHydra.instance().is_initialized():
            with initialize_config_module(config_module="sdflow.conf", version_base=None):
                return sweep_jobs(overrides, GlobalHydra.instance().config_loader())
        config_loader = GlobalHydra.instance().config_loader()
    parsed = OverridesParser.create(config_loader=config_loader).parse_overrides(overrides)
    batches = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    return [list(job) for batch in batches for job in batch]


def without_hydra(config: DictConfig) -> DictConfig:
    """A job's config as its task function sees it: without the ``hydra`` node."""
    task = copy.deepcopy(config)
    with open_dict(task):
        del task["hydra"]
    return task


class SweepConfigs:
    """Each job's (sweep config, task config) exactly as Hydra makes them, composed once per shape of job.

    Jobs whose overrides differ only in plain values (``key=value`` of a key that is not a config group, no
    ``+``/``~``/package, not ``hydra.*``, not a dict) share one composition: the first is composed by Hydra, the
    others are copies of it with their own values applied by Hydra's own function, and their ``overrides.task`` and
    ``override_dirname`` made as Hydra makes them. tests/test_sweep_configs.py holds derived and composed configs
    equal across the sweep forms Hydra supports.
    """

    def __init__(self, hydra_context: HydraContext, master: DictConfig):
        self.loader, self.master = hydra_context.config_loader, master
        self.parser = OverridesParser.create(config_loader=self.loader)
        # shape -> the first job's (sweep config, task config), pickled: unpickling copies one in a third of the time
        # a deep copy takes (both keep every flag, type and parent link: tests/test_sweep_configs.py)
        self.composed: Dict[tuple, Tuple[bytes, bytes]] = {}
        self.choices: set = set()  # the config groups the composed jobs chose options of
        self.groups: Dict[str, bool] = {}  # key -> whether it names a config group
        self.parsed: Dict[str, Any] = {}  # override text -> Hydra's Override (read, never changed)

    def is_group(self, key: str) -> bool:
        if key not in self.groups:
            self.groups[key] = self.loader.repository.group_exists(key) or key in self.choices
        return self.groups[key]

    def plain(self, override) -> bool:
        """Whether an override only sets a value (what a derived config can apply)."""
        return not (override.is_hydra_override() or override.is_add() or override.is_force_add()
                    or override.is_delete() or override.package is not None or override.is_sweep_override()
                    or self.is_group(override.key_or_group) or isinstance(override.value(), dict))

    def parse(self, overrides: Sequence[str]) -> list:
        """Hydra's parsed overrides, each text parsed once (a sweep's jobs share most of theirs)."""
        missing = [o for o in overrides if o not in self.parsed]
        self.parsed.update(zip(missing, self.parser.parse_overrides(missing)))
        return [self.parsed[o] for o in overrides]

    def __call__(self, job_overrides: Sequence[str]) -> Tuple[DictConfig, DictConfig]:
        parsed = self.parse(list(job_overrides))
        plain = [self.plain(o) for o in parsed]
        shape = tuple(("value", o.key_or_group) if p else o.input_line for o, p in zip(parsed, plain))
        if shape not in self.composed:
            sweep = self.loader.load_sweep_config(self.master, list(job_overrides))
            self.choices |= set(sweep.hydra.runtime.choices)
            self.composed[shape] = (pickle.dumps(sweep, pickle.HIGHEST_PROTOCOL),
                                    pickle.dumps(without_hydra(sweep), pickle.HIGHEST_PROTOCOL))
            return sweep, pickle.loads(self.composed[shape][1])
        sweep, task = (pickle.loads(data) for data in self.composed[shape])
        values = [o for o, p in zip(parsed, plain) if p]
        ConfigLoaderImpl._apply_overrides_to_config(values, sweep)
        ConfigLoaderImpl._apply_overrides_to_config(values, task)
        app = [o for o in parsed if not o.is_hydra_override()]
        dirname = sweep.hydra.job.config.override_dirname
        with read_write(sweep.hydra), open_dict(sweep.hydra):
            sweep.hydra.overrides.task = [o.input_line for o in app]
            sweep.hydra.job.override_dirname = get_overrides_dirname(
                overrides=app, kv_sep=dirname.kv_sep, item_sep=dirname.item_sep, exclude_keys=dirname.exclude_keys)
        OmegaConf.copy_cache(from_config=self.master, to_config=sweep)
        return sweep, task


class _FastDumper(getattr(yaml, "CDumper", yaml.Dumper)):
    """OmegaConf's YAML dumper (its quoting of strings that read as other types) on libyaml's emitter."""


_FastDumper.add_representer(str, OmegaConfDumper.str_representer)


def _plain(value: Any) -> Any:
    """A config node as plain Python (a dict of nodes too), interpolations kept, as ``OmegaConf.to_yaml`` dumps it."""
    if isinstance(value, dict):
        return {key: _plain(v) for key, v in value.items()}
    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=False, enum_to_str=True)
    if hasattr(value, "_value"):  # a value node
        inner = value._value()
        return inner.name if isinstance(inner, Enum) else inner
    return value


def config_yaml(config: Any) -> str:
    """``OmegaConf.to_yaml(config)``, the same text, emitted by libyaml (tested equal on every sweep form).

    ``config``: a config, a dict of configs (``{"hydra": node}``: what a masked copy of the node dumps as), or a
    plain list.
    """
    if isinstance(config, list):  # already plain (a job's overrides)
        container: Any = config
    elif isinstance(config, dict):
        container = {key: _plain(value) for key, value in config.items()}
    else:
        container = OmegaConf.to_container(config, resolve=False, enum_to_str=True)
    dumper = _FastDumper if yaml.__with_libyaml__ else get_omega_conf_dumper()
    return yaml.dump(container, default_flow_style=False, allow_unicode=True, sort_keys=False, Dumper=dumper)


_PLAIN = re.compile(r"\$\{([A-Za-z_][\w.]*)\}")  # ${dotted.key}: an interpolation that only reads another value


def _node(config: DictConfig, key: str) -> Any:
    """The node at dotted ``key`` (None: none), found without resolving anything on the way."""
    node: Any = config
    for part in key.split("."):
        node = node._get_node(part) if isinstance(node, DictConfig) else None
        if node is None:
            return None
    return node


def select_value(config: DictConfig, key: str) -> Any:
    """``OmegaConf.select(config, key)``, without OmegaConf's parser where the value is plain or only joins plain
    values (``${hydra.runtime.output_dir}/${hydra.job.name}.log``, ``${hydra.job.num}``): a sweep asks for every job,
    and OmegaConf parses each interpolation afresh each time."""
    target = _node(config, key)
    if isinstance(target, ValueNode) and not target._is_interpolation() and not target._is_missing():
        return target._value()
    raw = target._value() if isinstance(target, (AnyNode, StringNode)) else None
    if isinstance(raw, str) and "${" in raw and _PLAIN.sub("", raw).count("${") == 0:
        parts = {}
        for ref in set(_PLAIN.findall(raw)):
            node = _node(config, ref)
            if not isinstance(node, ValueNode) or node._is_interpolation() or node._is_missing():
                return OmegaConf.select(config, key)  # a value that is itself computed: OmegaConf's own way
            parts[ref] = node._value()
        whole = _PLAIN.fullmatch(raw)
        if whole and isinstance(target, AnyNode):  # one interpolation keeps its value's type, as OmegaConf does
            return parts[whole.group(1)]
        return str(parts[whole.group(1)]) if whole else _PLAIN.sub(lambda m: str(parts[m.group(1)]), raw)
    return OmegaConf.select(config, key)


class HydraFiles:
    """The ``.hydra/`` files of each job of a sweep, as Hydra writes them (``OmegaConf.to_yaml`` of the task config,
    of the masked ``hydra`` node and of the overrides), with the ``hydra.yaml`` parts that a plain-value job cannot
    change (all but ``overrides``, ``job`` and ``runtime``) emitted once per launch and config.yaml's values
    emitted when they change: a YAML block mapping is the concatenation of its keys' blocks, so each part is
    emitted alone (sdflow.run.yaml_text; tests/test_sweep_configs.py)."""

    PER_JOB = ("overrides", "job", "runtime")

    def __init__(self) -> None:
        self.parts: Dict[str, str] = {}  # top-level hydra key -> its YAML lines
        self.task = YamlBlocks(_FastDumper if yaml.__with_libyaml__ else get_omega_conf_dumper())

    def hydra_yaml(self, config: DictConfig) -> str:
        lines = ["hydra:\n"]
        for key in config.hydra:
            if key in self.PER_JOB or key not in self.parts:
                text = config_yaml({"hydra": {key: config.hydra._get_node(key)}})[len("hydra:\n"):]
                if key not in self.PER_JOB:
                    self.parts[key] = text
                lines.append(text)
            else:
                lines.append(self.parts[key])
        return "".join(lines)

    def write(self, config: DictConfig, task_config: DictConfig, overrides: list) -> None:
        folder = Path(config.hydra.runtime.output_dir) / Path(config.hydra.output_subdir)
        _write(folder, "config.yaml", self.task.dump(_plain(task_config)))  # only the values that changed emitted
        _write(folder, "hydra.yaml", self.hydra_yaml(config))
        _write(folder, "overrides.yaml", config_yaml(overrides))


def _write(folder: Path, name: str, text: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / name, "w", encoding="utf-8") as file:
        file.write(text)


def _interpolated(container: Any, path: str = "") -> List[str]:
    """Dotted paths of the values of a plain container that hold an interpolation."""
    if isinstance(container, dict):
        return [p for key, value in container.items() for p in _interpolated(value, f"{path}.{key}" if path else key)]
    return [path] if isinstance(container, str) and "${" in container else []


class SweepLogging:
    """Hydra's ``configure_log`` around each job of a sweep (its job_logging while it runs, hydra_logging between
    jobs), done once when the jobs' logging configs differ only in their log files' names (Hydra's default
    job_logging names ``${hydra.runtime.output_dir}/${hydra.job.name}.log``): the root logger's handlers are then
    swapped, each job's file handler made anew for its file, instead of Python's dictConfig tearing down and
    building every handler twice a job."""

    def __init__(self, sweep_config: DictConfig):
        self.hydra_logging, self.verbose = sweep_config.hydra.hydra_logging, sweep_config.hydra.verbose
        self.configured: Any = None  # (the job_logging container, its interpolated values) as first configured
        self.job_handlers: List[logging.Handler] = []
        self.between_jobs: List[logging.Handler] | None = None  # the root's handlers under hydra_logging
        self.levels: Tuple[int, int] = (logging.INFO, logging.INFO)  # the root's level: in a job, between jobs

    def start_job(self, config: DictConfig) -> None:
        """As ``configure_log(config.hydra.job_logging, config.hydra.verbose)``."""
        job_logging = config.hydra.job_logging
        unresolved = OmegaConf.to_container(job_logging, resolve=False)
        values = {path: select_value(config, f"hydra.job_logging.{path}") for path in _interpolated(unresolved)}
        others = {path: value for path, value in values.items() if not path.endswith(".filename")}
        root = logging.getLogger()
        if (self.configured is None or unresolved != self.configured[0] or others != self.configured[1]
                or unresolved.get("loggers")):
            configure_log(job_logging, config.hydra.verbose)
            self.configured = (unresolved, others)
            self.job_handlers, self.levels = list(root.handlers), (root.level, self.levels[1])
            return
        files = {path.split(".")[1]: value for path, value in values.items() if path.endswith(".filename")}
        for index, handler in enumerate(self.job_handlers):
            name = getattr(handler, "name", None)
            if isinstance(handler, logging.FileHandler) and name in files:
                handler.close()
                new = type(handler)(files[name], mode=handler.mode, encoding=handler.encoding, delay=handler.delay,
                                    errors=handler.errors)
                new.name, new.formatter, new.level, new.filters = name, handler.formatter, handler.level, handler.filters
                self.job_handlers[index] = new
        root.handlers = list(self.job_handlers)
        if root.level != self.levels[0]:  # setLevel clears every logger's cache
            root.setLevel(self.levels[0])

    def end_job(self) -> None:
        """As ``configure_log(hydra_logging, verbose)``, as Hydra's basic launcher does after each job."""
        root = logging.getLogger()
        if self.between_jobs is None:
            configure_log(self.hydra_logging, self.verbose)
            self.between_jobs, self.levels = list(root.handlers), (self.levels[0], root.level)
            return
        for handler in root.handlers:
            if handler not in self.between_jobs:
                handler.flush()
        root.handlers = list(self.between_jobs)
        if root.level != self.levels[1]:
            root.setLevel(self.levels[1])


def run_hydra_job(hydra_context: HydraContext, task_function: Callable[[DictConfig], Any], config: DictConfig,
                  task_config: DictConfig, logs: SweepLogging | None = None, files: HydraFiles | None = None) -> JobReturn:
    """Run one sweep job as ``hydra.core.utils.run_job(..., "hydra.sweep.dir", "hydra.sweep.subdir")`` does.

    The same: HydraConfig while it runs, its folder (and working directory when ``hydra.job.chdir``), ``.hydra/``
    config.yaml, hydra.yaml and overrides.yaml, its job log, ``env_set``, the callbacks and the JobReturn.
    Different: ``task_config`` is the job's config without ``hydra`` made once already (run_job deep-copies the
    config twice, and masks a copy of it twice, for each job): HydraConfig and the JobReturn's ``hydra_cfg`` hold
    the job's config itself; the files are emitted by libyaml.
    """
    callbacks = hydra_context.callbacks
    old_cwd = os.getcwd()
    orig_hydra_cfg = HydraConfig.instance().cfg
    # HydraConfig holds the job's own config (each job has its own copy): HydraConfig.get() is its hydra node, as
    # with set_config, which would mask a copy of it first. The folder's name may read it (${hydra:...}).
    OmegaConf.set_readonly(config.hydra, True)
    HydraConfig.instance().cfg = config
    output_dir = os.path.join(str(select_value(config, "hydra.sweep.dir")), str(select_value(config, "hydra.sweep.subdir")))
    with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
        config.hydra.runtime.output_dir = os.path.abspath(output_dir)
    chdir = bool(config.hydra.job.chdir)
    try:
        ret = JobReturn()
        ret.cfg, ret.hydra_cfg = task_config, config
        ret.overrides = OmegaConf.to_container(config.hydra.overrides.task)  # also overrides.yaml
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        if chdir:
            os.chdir(output_dir)
            ret.working_dir = output_dir
        else:
            ret.working_dir = os.getcwd()
        if logs is not None:
            logs.start_job(config)
        else:
            configure_log(config.hydra.job_logging, config.hydra.verbose)
        if config.hydra.output_subdir is not None:
            (files or HydraFiles()).write(config, task_config, ret.overrides)
        with env_override(config.hydra.job.env_set):
            callbacks.on_job_start(config=config, task_function=task_function)
            try:
                ret.return_value = task_function(task_config)
                ret.status = JobStatus.COMPLETED
            except Exception as exc:
                ret.return_value = exc
                ret.status = JobStatus.FAILED
        ret.task_name = JobRuntime.instance().get("name")
        for handler in list(logging.getLogger().handlers):
            handler.flush()
        callbacks.on_job_end(config=config, job_return=ret)
        return ret
    finally:
        HydraConfig.instance().cfg = orig_hydra_cfg
        if chdir:
            os.chdir(old_cwd)
