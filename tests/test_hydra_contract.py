"""What sdflow takes from Hydra's private parts, pinned: if a Hydra release changes them, this fails first.

Only hydra_plugins/sdflow_launcher/hydra_jobs.py imports Hydra's internals: the basic sweeper sdflow's subclasses
(its ``split_arguments``, ``_parse_config``, ``setup`` and the ``launcher``/``hydra_context``/``config`` it
keeps), which also expands ``-m`` overrides for other sweepers, and the config loader's ``_apply_overrides_to_config``
and ``get_overrides_dirname`` (derived sweep configs: tests/test_sweep_configs.py). The sweeper also reads a failed
job's exception from ``JobReturn._return_value`` (the public ``return_value`` prints and raises it).
"""

from __future__ import annotations

import inspect
from pathlib import Path

import hydra
from hydra.core.utils import JobReturn, JobStatus

from hydra_plugins.sdflow_launcher import sdflow_launcher
from hydra_plugins.sdflow_launcher.hydra_jobs import sweep_jobs

PLUGINS = Path(sdflow_launcher.__file__).parent
SDFLOW = Path(sdflow_launcher.__file__).parents[2] / "sdflow"


def test_only_the_sweeper_module_imports_hydras_private_modules():
    users = [path.relative_to(PLUGINS.parent.parent) for folder in (PLUGINS, SDFLOW) for path in folder.rglob("*.py")
             if "hydra._internal" in path.read_text()]
    assert [str(p) for p in users] == ["hydra_plugins/sdflow_launcher/hydra_jobs.py"]


def test_the_basic_sweeper_expands_a_sweep_into_jobs_in_hydras_order():
    assert hydra.__version__.startswith("1.3.")
    assert sweep_jobs(["seed=0,1", "prompt=a,b", "steps=3"]) == [
        ["seed=0", "prompt=a", "steps=3"], ["seed=0", "prompt=b", "steps=3"],
        ["seed=1", "prompt=a", "steps=3"], ["seed=1", "prompt=b", "steps=3"]]
    assert sweep_jobs(["seed=range(2)"]) == [["seed=0"], ["seed=1"]]


def test_the_basic_sweeper_hooks_sdflow_overrides_are_there():
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    assert isinstance(inspect.getattr_static(BasicSweeper, "split_arguments"), staticmethod)
    assert list(inspect.signature(BasicSweeper.split_arguments).parameters) == ["overrides", "max_batch_size"]
    assert list(inspect.signature(BasicSweeper.setup).parameters) == ["self", "hydra_context", "task_function", "config"]
    source = inspect.getsource(BasicSweeper.setup)
    assert all(f"self.{name} =" in source for name in ("hydra_context", "config", "launcher"))
    from hydra.core.plugins import Plugins

    Plugins.instance()  # its scan executes plugin modules again: take the class as Hydra will find it
    sweeper = sdflow_launcher.SdflowSweeper(max_batch_size=None, params={"seed": "0,1"})
    assert sweeper._parse_config() == ["seed=0,1"]  # params from an experiment config, as overrides


def test_the_config_loader_functions_derived_configs_use_are_there():
    from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname

    assert isinstance(inspect.getattr_static(ConfigLoaderImpl, "_apply_overrides_to_config"), staticmethod)
    assert list(inspect.signature(ConfigLoaderImpl._apply_overrides_to_config).parameters) == ["overrides", "cfg"]
    assert list(inspect.signature(get_overrides_dirname).parameters) == ["overrides", "exclude_keys", "item_sep",
                                                                         "kv_sep"]


def test_a_failed_jobs_exception_is_kept_in_its_return_value_field():
    error = ValueError("job 3 broke")
    failed = JobReturn(status=JobStatus.FAILED, _return_value=error)
    assert failed._return_value is error
