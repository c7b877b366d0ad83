"""Helpers for tests that drive the HTTP API through FastAPI's TestClient."""

from __future__ import annotations

import time


def wait(client, job_id: str, seconds: float = 120) -> dict:
    """The job's JSON once it is done or failed (polled as a script would)."""
    deadline = time.time() + seconds
    body: dict = {}
    while time.time() < deadline:
        body = client.get(f"/api/jobs/{job_id}").json()
        if body["status"] in ("done", "failed"):
            return body
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish: {body}")
