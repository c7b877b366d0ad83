"""Validation answers in about a second: importing the nodes and planning a built-in workflow loads neither
torch, diffusers nor transformers (they take seconds to import); only running a node does."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HEAVY = ("torch", "diffusers", "transformers")

PLAN = """
import json, sys
import sdflow.nodes, sdflow.api
from sdflow.api import compose_config, plan_workflow
for overrides in json.loads(sys.argv[1]):
    plan_workflow(compose_config(overrides))
print(json.dumps([name for name in {heavy!r} if name in sys.modules]))
"""


def heavy_modules_after(code: str, *args: str) -> list[str]:
    """Run ``code`` in a fresh interpreter (this one has torch loaded already); it prints the heavy modules it loaded."""
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=dict(os.environ),
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_the_nodes_loads_no_torch():
    code = f"import json, sys\nimport sdflow.nodes, sdflow.api\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    assert heavy_modules_after(code) == []


@pytest.fixture(scope="module")
def init_image(tmp_path_factory):
    from PIL import Image

    path = tmp_path_factory.mktemp("image") / "init.png"
    Image.new("RGB", (64, 64), (200, 40, 40)).save(path)
    return path


def test_planning_built_in_workflows_loads_no_torch(tiny_sd, tiny_upscaler, init_image):
    # tiny_sd and tiny_upscaler: the tiny models already built (building one needs torch, once per machine).
    jobs = [["workflow=text2img"], ["workflow=text2img", "model=tiny"], ["workflow=chain", "model=tiny"],
            ["workflow=img2img", "model=tiny", f"image={init_image}"],
            ["workflow=text2img", "model=tiny", "prompt=[a red circle, a blue square]", "seed=[1,2]",
             "guidance=[1.0,5.0]"]]
    assert heavy_modules_after(PLAN.format(heavy=HEAVY), json.dumps(jobs)) == []


def test_scheduler_choices_are_what_diffusers_offers():
    from sdflow.nodes.scheduler import SCHEDULER_CLASSES, diffusers_scheduler_classes

    assert list(SCHEDULER_CLASSES) == diffusers_scheduler_classes(), (
        "diffusers' schedulers changed: update SCHEDULER_CLASSES in sdflow/nodes/scheduler.py")
