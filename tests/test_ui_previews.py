"""Step previews (sdflow/nodes/previews.py): from the CLI into the run folder, through a callback for the UI."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from sdflow.api import run_workflow
from sdflow.engine import ComponentCache

PROMPT = "a small red circle on the left, blue background"


def test_the_cli_writes_previews_into_the_run_folder(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    run = subprocess.run([sys.executable, "-m", "sdflow.cli", "preview_every=4", "steps=10", "seed=[0,1]"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    (folder,) = {p.parent.parent for p in (tmp_path / "outputs").rglob("previews/*.png")}
    assert sorted(p.name for p in (folder / "previews").iterdir()) == [
        "denoise_step004.png", "denoise_step008.png", "denoise_step010.png"]  # every 4th step, and the last
    assert Image.open(folder / "previews" / "denoise_step010.png").size == (128, 64)  # the batch, tiled
    assert len(list(folder.glob("text2img_*.png"))) == 2


@pytest.mark.parametrize("exact", [False, True])
def test_previews_follow_the_run_and_change_no_pixel(tmp_path, exact):
    cache = ComponentCache()
    events = []
    from sdflow.api import compose_config, plan_workflow, run_plan

    config = compose_config([f"prompt={PROMPT}", "steps=8", "preview_every=3", f"preview_exact={str(exact).lower()}"])
    result = run_plan(plan_workflow(config), config, tmp_path / "ui", cache=cache, progress=False,
                      on_preview=events.append)
    assert [(e.node, e.step, e.total) for e in events] == [("denoise", s, 8) for s in range(1, 9)]
    assert [e.step for e in events if e.image is not None] == [3, 6, 8]
    assert not (tmp_path / "ui" / "previews").exists()  # a caller's callback gets them instead of the folder

    plain = run_workflow("text2img", [f"prompt={PROMPT}", "steps=8"], output_dir=tmp_path / "plain", cache=cache)
    final = np.asarray(Image.open(result.saved[0]), dtype=np.float32) / 255
    assert np.array_equal(final, np.asarray(Image.open(plain.saved[0]), dtype=np.float32) / 255)
    last = np.asarray(events[-1].image, dtype=np.float32) / 255
    # the last step's preview is the image: exactly (VAE decode), or closely (the fitted latent-to-RGB map)
    assert np.abs(last - final).mean() < (1 / 255 if exact else 0.1)
    assert np.abs(np.asarray(events[2].image, dtype=np.float32) / 255 - final).mean() > np.abs(last - final).mean()
