"""sdflow-info: the node reference comes from the declarations, graphs and grids come from real runs."""

from __future__ import annotations

from PIL import Image

from sdflow.api import compose_config, plan_workflow, run_workflow
from sdflow.engine.draw import to_mermaid
from sdflow.info import image_grid, node_reference


def test_node_reference_lists_every_declared_field():
    reference = node_reference()
    assert "## `denoise`" in reference and "## `load_model`" in reference
    assert "| `steps` | int; range [1, 1000]; default 30 |" in reference
    assert "`latents` (LATENTS)" in reference


def test_graph_of_the_chain_shows_every_node_and_edge():
    plan = plan_workflow(compose_config(["workflow=chain", "model=tiny"]))
    chart = to_mermaid(plan)
    assert chart.startswith("flowchart LR")
    for node_id in plan.order:
        assert f'    {node_id}["{node_id}' in chart
    assert chart.count("-->") == plan.graph.number_of_edges()
    assert 'draft -->|"latents : LATENTS"| draft_image' in chart


def test_grid_tiles_every_image_of_a_sweep_folder(tmp_path):
    for job, seed in enumerate([1, 2, 3]):
        run_workflow("text2img", ["model=tiny", "steps=2", f"seed={seed}"], output_dir=tmp_path / str(job))
    grid = image_grid(tmp_path, cell=32)
    with Image.open(grid) as image:
        assert image.size == (2 * 32, 2 * (32 + 14))
        first_cell = image.crop((0, 14, 32, 46))
        with Image.open(next((tmp_path / "0").glob("*.png"))) as source:
            expected = source.convert("RGB").resize((32, 32))
        assert first_cell.tobytes() == expected.tobytes()


def test_docs_node_reference_is_up_to_date():
    from pathlib import Path

    committed = (Path(__file__).resolve().parent.parent / "docs" / "nodes.md").read_text()
    assert committed.strip() == node_reference().strip(), "regenerate it: sdflow-info nodes > docs/nodes.md"
