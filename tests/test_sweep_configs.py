"""Derived sweep configs are Hydra's own: for every sweep form Hydra supports, each job's config made by
SweepConfigs (Hydra composing once per shape of job, the rest derived) equals what Hydra's load_sweep_config
composes for it, node for node and as the .hydra files write it; and the files a sweep writes are those of
``hydra/launcher=basic``."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.utils import setup_globals
from hydra.types import HydraContext, RunMode
from omegaconf import OmegaConf

from hydra_plugins.sdflow_launcher.hydra_jobs import (HydraFiles, SweepConfigs, config_yaml, select_value, sweep_jobs,
                                                      without_hydra)

FORMS = {
    "choices": ["seed=0,1,2", "guidance=1,2.5"],
    "range": ["seed=range(0,3)", "steps=4"],
    "sort": ["seed=sort(3,1,2)"],
    "config groups": ["model=tiny,tiny_sd2", "seed=0,1"],
    "glob over a group": ["model=glob(tiny_s*)", "seed=0,1"],
    "quoted texts with commas": ['prompt="a red circle, blue background","a square"', "negative_prompt=blurry"],
    "lists": ["seed=[1,2],[3,4]"],
    "interpolations": ["refine_seed=${seed},7", "seed=1,2"],
    "nulls and bools": ["image=null,x.png", "grid=true,false"],
    "appended keys": ["+extra=1,2", "seed=0,1"],
    "deleted key": ["~negative_prompt", "seed=0,1"],
    "a group choice with a value": ["scheduler=euler,ddim", "steps=2,3"],
    "hydra settings": ["hydra.job.chdir=false", "seed=0,1"],
    "override_dirname settings": ["hydra.job.config.override_dirname.exclude_keys=[seed]",
                                  "hydra.job.config.override_dirname.kv_sep=:", "seed=0,1", "steps=2,3"],
}


@pytest.fixture(scope="module")
def hydra_loader():
    setup_globals()
    with initialize_config_module(config_module="sdflow.conf", version_base=None):
        yield GlobalHydra.instance().hydra.config_loader


@pytest.mark.parametrize("form", FORMS)
def test_derived_configs_equal_hydras_composition(hydra_loader, form):
    overrides = FORMS[form]
    hydra_overrides = [o for o in overrides if o.startswith("hydra.")]
    master = hydra_loader.load_configuration("config", overrides, RunMode.MULTIRUN)
    configs = SweepConfigs(HydraContext(config_loader=hydra_loader, callbacks=None), master)
    jobs = sweep_jobs([o for o in overrides if o not in hydra_overrides], hydra_loader)
    assert len(jobs) >= 2
    files = HydraFiles()  # one per launch: its hydra.yaml parts are emitted once
    for num, job in enumerate(jobs):
        derived, task = configs(job)
        composed = hydra_loader.load_sweep_config(master, list(job))
        assert OmegaConf.to_yaml(derived) == OmegaConf.to_yaml(composed), job
        assert OmegaConf.to_container(derived) == OmegaConf.to_container(composed), job
        assert OmegaConf.to_yaml(task) == OmegaConf.to_yaml(without_hydra(composed)), job
        assert OmegaConf.is_struct(task) == OmegaConf.is_struct(without_hydra(composed))
        for node in ("hydra", "hydra.job", "hydra.runtime"):  # structured types and flags kept (HydraConfig needs them)
            ours, theirs = OmegaConf.select(derived, node), OmegaConf.select(composed, node)
            assert OmegaConf.get_type(ours) is OmegaConf.get_type(theirs)
            assert (OmegaConf.is_struct(ours), OmegaConf.is_readonly(ours)) == (OmegaConf.is_struct(theirs),
                                                                                  OmegaConf.is_readonly(theirs))
        assert derived.hydra._get_parent() is derived  # interpolations from the hydra node reach the user's config
        for config in (derived, composed):  # as the launcher sets them before the job runs
            OmegaConf.update(config, "hydra.job.num", num)
            OmegaConf.update(config, "hydra.job.id", num)
            OmegaConf.update(config, "hydra.runtime.output_dir", f"/sweep/{num}", force_add=True)
        assert files.hydra_yaml(derived) == OmegaConf.to_yaml(OmegaConf.masked_copy(composed, "hydra")), job
        assert config_yaml(task) == OmegaConf.to_yaml(without_hydra(composed)), job
        assert files.task.dump(OmegaConf.to_container(task)) == OmegaConf.to_yaml(without_hydra(composed)), job
        assert config_yaml(OmegaConf.to_container(derived.hydra.overrides.task)) == \
            OmegaConf.to_yaml(composed.hydra.overrides.task), job
        for key in ("hydra.sweep.subdir", "hydra.job_logging.handlers.file.filename", "hydra.job.name"):
            assert select_value(derived, key) == OmegaConf.select(composed, key), key
    if form not in ("config groups", "glob over a group", "appended keys", "deleted key", "a group choice with a value"):
        assert len(configs.composed) == 1  # plain values only: Hydra composed the first job, the rest are derived


def test_texts_the_yaml_emitter_must_write_as_hydra_does():
    texts = ["plain", "a, b: c", "yes", "no", "1e3", "0x1F", "007", "null", "~", "'quoted'", '"double"', "#hash",
             "tab\there", "line\nbreak", "trailing ", " leading", "ünïcødé ✓", "x" * 200, "- dash", "{brace}", "*star",
             "&amp", "!bang", "%percent", "@at", "`tick", "a: b", "3.14", ".inf", "-.5", "+1", "True", "off", ""]
    config = OmegaConf.create({"values": texts, "nested": {"key with space": "v", "1": "one"}})
    assert config_yaml(config) == OmegaConf.to_yaml(config)


def test_a_fused_sweep_writes_the_hydra_files_the_basic_launcher_writes(tmp_path):
    args = ["-m", "model=tiny", "steps=1", "seed=0,1,2", 'prompt="a, b","c"', "hydra.sweep.dir=out"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for launcher in ("sdflow", "basic"):
        (tmp_path / launcher).mkdir()
        run = subprocess.run([sys.executable, "-m", "sdflow.cli", *args, f"hydra/launcher={launcher}"],
                             cwd=tmp_path / launcher, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
    for job in range(6):
        ours, theirs = (tmp_path / launcher / "out" / str(job) / ".hydra" for launcher in ("sdflow", "basic"))
        for name in ("config.yaml", "overrides.yaml"):
            assert (ours / name).read_text() == (theirs / name).read_text(), (job, name)
        # hydra.yaml: equal but where the two commands differ (the launcher chosen, the folder they ran in)
        mine, basic = (OmegaConf.load(folder / "hydra.yaml") for folder in (ours, theirs))
        for config in (mine, basic):
            for key in ("hydra.launcher", "hydra.runtime.cwd", "hydra.runtime.output_dir", "hydra.sweep.dir",
                        "hydra.overrides.hydra", "hydra.runtime.choices"):
                OmegaConf.update(config, key, None, force_add=True)
        assert OmegaConf.to_yaml(mine) == OmegaConf.to_yaml(basic), job


def test_the_workflow_as_it_ran_is_a_whole_dump_whatever_ran_before():
    """resolved_workflow_yaml keeps each node's block from plan to plan: the text must be what one dump gives."""
    import yaml

    from sdflow.run import compose_config, plan, resolved_workflow_yaml

    for overrides in (["seed=1"], ["seed=2"], ["seed=2", "guidance=2"], ["seed=2", "guidance=2.0"], ["steps=1"],
                      ["prompt=une fenêtre, ☀"], ["workflow=chain", "strength=0.5"], ["seed=[1,2]"]):
        planned = plan(None, compose_config(["model=tiny"] + overrides))
        nodes = {node_id: {"type": planned.nodes[node_id].spec.name,
                           **{name: str(ref) for name, ref in planned.nodes[node_id].inputs.items()},
                           **planned.nodes[node_id].params} for node_id in planned.order}
        whole = yaml.dump({"description": planned.workflow.description, "nodes": nodes}, Dumper=yaml.CSafeDumper,
                          sort_keys=False, allow_unicode=True)
        assert resolved_workflow_yaml(planned) == whole, overrides
