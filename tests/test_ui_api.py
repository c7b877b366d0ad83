"""The HTTP API (sdflow/ui/http.py): submit, follow, fetch; problems as JSON; nothing outside its folders."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from sdflow.api import run_workflow
from sdflow.reproduce import reproduce
from sdflow.ui.http import create_api
from sdflow.ui.jobs import JobQueue
from sdflow.ui.limits import Folders, RequestRefused

from web_client import wait

PROMPT = "a large green square on the right, yellow background"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("ui")
    jobs = JobQueue(Folders(root / "outputs", root / "uploads", (root / "more",)))
    return TestClient(create_api(jobs), base_url="http://127.0.0.1"), jobs


def pixels(data_or_path):
    source = io.BytesIO(data_or_path) if isinstance(data_or_path, bytes) else data_or_path
    return np.asarray(Image.open(source).convert("RGB"))


def png_bytes(size=(64, 64), colour=(200, 30, 30)):
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_submit_follow_and_fetch_the_same_image_the_cli_makes(server, tmp_path):
    client, jobs = server
    response = client.post("/api/jobs", json={"workflow": "text2img", "values": {
        "prompt": PROMPT, "seed": [3, 4], "steps": 10, "preview_every": 5}})
    assert response.status_code == 202, response.text
    job = wait(client, response.json()["id"])
    assert job["status"] == "done", job
    assert (job["step"], job["total"], job["previews"]) == (10, 10, 2)
    assert [image["metadata"]["image"]["seed"] for image in job["images"]] == [3, 4]
    assert job["images"][0]["metadata"]["image"]["values"]["prompt.prompt"] == PROMPT
    assert "type: denoise" in job["images"][0]["workflow_yaml"]

    served = client.get(job["images"][1]["url"])
    assert served.headers["content-type"] == "image/png"
    on_disk = jobs.folders.outputs / job["images"][1]["file"]
    assert served.content == on_disk.read_bytes()
    assert client.get(f"/api/files/{job['images'][1]['file']}").content == on_disk.read_bytes()
    preview = client.get(job["preview_url"])
    assert Image.open(io.BytesIO(preview.content)).size == (128, 64)  # the last step's preview: 2 images tiled

    cli = run_workflow("text2img", [f"prompt={PROMPT}", "seed=4", "steps=10"], output_dir=tmp_path / "cli")
    assert np.array_equal(pixels(served.content), pixels(cli.saved[0]))  # previews change no pixel


def test_events_stream_progress_until_done(server):
    client, _ = server
    job_id = client.post("/api/jobs", json={"workflow": "text2img", "overrides": ["steps=6", "seed=1"]}).json()["id"]
    events = []
    with client.stream("GET", f"/api/jobs/{job_id}/events") as stream:
        for line in stream.iter_lines():
            if line.startswith("event: "):
                events.append(line[len("event: "):])
            elif line.startswith("data: "):
                events[-1] = (events[-1], json.loads(line[len("data: "):]))
    kind, last = events[-1]
    assert kind == "done" and len(last["images"]) == 1 and (last["step"], last["total"]) == (6, 6)
    steps = [body["step"] for kind, body in events if kind == "running"]
    assert steps and steps == sorted(steps)  # every change, as often as the stream looks (20 times a second)


def test_a_broken_workflow_is_refused_with_every_problem_as_json(server):
    client, jobs = server
    queued = len(jobs.jobs)
    text = """\
description: broken
nodes:
  model:
    type: load_model
    source: builtin:shapes
  denoise:
    type: denoize
  save:
    type: save_image
    image: modle.image
"""
    response = client.post("/api/jobs", json={"workflow_yaml": text})
    assert response.status_code == 422
    problems = response.json()["problems"]
    assert {(p["file"], p["node"], p["field"], p["line"]) for p in problems} >= {
        ("submitted.yaml", "denoise", "type", 7), ("submitted.yaml", "save", "image", 10)}
    assert any("did you mean 'denoise'" in p["message"] for p in problems)
    bad_values = client.post("/api/jobs", json={"workflow": "text2img", "values": {"steps": 0, "guidance": 500}})
    located = {(p["node"], p["field"]) for p in bad_values.json()["problems"]}
    assert located == {("denoise", "steps"), ("denoise", "guidance")}
    assert len(jobs.jobs) == queued  # nothing queued


@pytest.mark.parametrize("body", [
    {"workflow": "../../../etc/passwd"},
    {"workflow": "/etc/passwd"},
    {"workflow": "text2img", "overrides": ["workflow=/etc/passwd"]},
    {"workflow": "text2img", "overrides": ["hydra.run.dir=/tmp/elsewhere"]},
    {"workflow": "text2img", "overrides": ["model.path=/"]},
    {"workflow": "text2img", "overrides": ["prompt=${oc.env:HOME}"]},
    {"workflow": "text2img", "values": {"prompt": "${oc.env:HOME}"}},
    {"workflow": "img2img", "values": {"image": "/etc/hostname"}},
    {"workflow": "img2img", "values": {"image": "../../etc/hostname"}},
    {"workflow": "img2img", "overrides": ["image=/etc/hostname"]},
    {"workflow_yaml": "nodes:\n  load:\n    type: load_image\n    path: /etc/hostname\n"},
    {"workflow_yaml": "nodes:\n  load:\n    type: load_mask\n    path: ../../../etc/hostname\n"},
    {"workflow_yaml": "nodes:\n  model:\n    type: load_model\n    source: /\n"},
    {"workflow_yaml": "nodes:\n  model:\n    type: load_model\n    source: builtin:../../..\n"},
    {"workflow_yaml": "nodes:\n  model:\n    type: load_model\n    source: builtin:shapes\n    allow_pickle: true\n"},
    {"workflow_yaml": "nodes:\n  model:\n    type: load_model\n    source: builtin:shapes\n    config: ../../etc\n"},
    {"workflow": "text2img", "values": {"loras": [{"path": "/etc/hostname", "weight": 0.5}]}},
    {"workflow": "text2img", "values": {"vae": "/"}},
    {"workflow": "text2img", "values": {"allow_pickle": True}},
])
def test_nothing_outside_the_servers_folders_is_read(server, body):
    client, _ = server
    response = client.post("/api/jobs", json=body)
    assert response.status_code == 422, response.text
    messages = " ".join(p["message"] for p in response.json()["problems"])
    assert "does not exist" not in messages and "not a readable image" not in messages  # refused before looking


def test_files_are_served_only_from_the_gallery_folders(server, tmp_path):
    client, jobs = server
    outside = tmp_path / "secret.png"
    outside.write_bytes(png_bytes())
    jobs.folders.outputs.mkdir(parents=True, exist_ok=True)
    (jobs.folders.outputs / "link.png").symlink_to(outside)
    for path in ["%2e%2e/%2e%2e/etc/passwd", "..%2f..%2fetc%2fpasswd", "%2Fetc%2Fpasswd", "link.png",
                 f"%2e%2e/{outside.parent.name}/secret.png"]:
        assert client.get(f"/api/files/{path}").status_code == 404, path
    with pytest.raises(RequestRefused):
        jobs.folders.gallery_file(str(outside))


def test_uploads_are_capped_and_used_by_name(server, tmp_path):
    client, jobs = server
    name = client.post("/api/uploads", content=png_bytes(), headers={"content-type": "image/png"}).json()["name"]
    assert (jobs.folders.uploads / name).is_file()
    response = client.post("/api/jobs", json={"workflow": "img2img", "values": {"image": name, "steps": 4}})
    assert response.status_code == 202, response.text
    assert wait(client, response.json()["id"])["status"] == "done"

    not_an_image = client.post("/api/uploads", content=b"not an image", headers={"content-type": "image/png"})
    assert not_an_image.status_code == 422
    small = Folders(tmp_path / "o", tmp_path / "u", max_upload_bytes=10_000, max_upload_pixels=100 * 100)
    with pytest.raises(RequestRefused, match="pixels"):
        small.store_upload(png_bytes((101, 100)))
    with pytest.raises(RequestRefused, match="bytes"):
        small.store_upload(bytes(10_001))
    whole = io.BytesIO()
    Image.effect_noise((256, 256), 64).convert("RGB").save(whole, format="JPEG")
    truncated = client.post("/api/uploads", content=whole.getvalue()[: len(whole.getvalue()) // 2],
                            headers={"content-type": "image/jpeg"})
    assert truncated.status_code == 422 and "truncated" in truncated.text, truncated.text
    big = client.post("/api/uploads", content=bytes(jobs.folders.max_upload_bytes + 1),
                      headers={"content-type": "application/octet-stream"})
    assert big.status_code == 413


def test_other_sites_cannot_drive_it(server):
    client, _ = server
    assert client.get("/api/workflows", headers={"host": "evil.example"}).status_code == 403  # DNS rebinding
    form_post = client.post("/api/jobs", content='{"workflow": "text2img"}', headers={"content-type": "text/plain"})
    assert form_post.status_code == 415  # a cross-site form can send text/plain without asking first


def test_reproduce_and_run_again_from_the_gallery(server, tmp_path):
    client, jobs = server
    submitted = client.post("/api/jobs", json={"workflow": "text2img", "values": {"seed": 11, "steps": 5}})
    job = wait(client, submitted.json()["id"])
    original = jobs.folders.outputs / job["images"][0]["file"]
    again = reproduce(original, output_dir=tmp_path / "again")
    assert np.array_equal(pixels(again.remade), pixels(original))

    gallery = client.get("/api/gallery").json()
    assert job["images"][0]["file"] in [entry["file"] for entry in gallery]
    rerun = client.post("/api/reproduce", json={"file": job["images"][0]["file"]})
    assert rerun.status_code == 202, rerun.text
    done = wait(client, rerun.json()["id"])
    assert np.array_equal(pixels(jobs.folders.outputs / done["images"][0]["file"]), pixels(original))
