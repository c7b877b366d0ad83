"""The HTTP API for scripts: submit a run, follow it (polling or server-sent events), fetch images and metadata.

    POST /api/uploads                  an image (raw bytes) -> {"name": ...} to give as image/mask/depth_map
    POST /api/jobs                     {"workflow": NAME | "workflow_yaml": TEXT, "overrides": [...], "values": {...}}
                                       -> 202 {"id": ..., ...}; 422 {"problems": [{file, node, field, line, message}]}
    GET  /api/jobs/ID                  status, step/total, images with their metadata once done
    GET  /api/jobs/ID/events           server-sent events as it changes (looked at 20 times a second), the last
                                       when it is done or failed
    GET  /api/jobs/ID/preview          the latest step preview (PNG)
    GET  /api/jobs/ID/images/N         the N-th image the run wrote (PNG, metadata in its text chunks)
    GET  /api/workflows                names and descriptions; /api/workflows/NAME/form: its form fields
    GET  /api/gallery                  past runs' images, newest first; /api/files/PATH serves one
    POST /api/reproduce                {"file": PATH from the gallery} -> a job that runs its workflow again

Browsers cannot drive it from another site: requests must name a local host (no DNS rebinding) and
bodies must be JSON or image bytes (content types a cross-site form cannot send without asking first).
"""

from __future__ import annotations

import asyncio
import io
import json
from dataclasses import asdict

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse

from ..engine import ValidationError
from ..help import workflow_summaries
from .form import load_form
from .gallery import past_images, png_workflow, read_metadata
from .jobs import Job, JobQueue, RunRequest
from .limits import RequestRefused, check_workflow_name

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def problems_response(error: ValidationError) -> JSONResponse:
    return JSONResponse({"error": "invalid", "problems": [asdict(p) for p in error.problems]}, status_code=422)


def refused(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def job_json(jobs: JobQueue, job: Job) -> dict:
    """A job as the API shows it: its summary, and once done each image's URL, file and metadata."""
    body = job.summary()
    body["ahead"] = jobs.ahead_of(job) if job.status == "queued" else 0
    body["preview_url"] = f"/api/jobs/{job.id}/preview" if job.previews else None
    body["images"] = []
    for index, path in enumerate(job.images):
        record, workflow = read_metadata(path)
        body["images"].append({"url": f"/api/jobs/{job.id}/images/{index}", "file": jobs.folders.relative(path),
                               "metadata": record, "workflow_yaml": workflow})
    return body


def create_api(jobs: JobQueue, hosts: tuple[str, ...] | None = LOCAL_HOSTS) -> FastAPI:
    """The API's FastAPI app; the web UI is mounted beside it (sdflow/ui/app.py).

    ``hosts``: the Host names a request may name (a page on another site that rebinds its own name to
    127.0.0.1 names that name, and is refused); None: any (a server exposed on purpose, ``--host``).
    """
    app = FastAPI(title="sdflow", docs_url="/api/docs", openapi_url="/api/openapi.json", redoc_url=None)
    folders = jobs.folders

    @app.middleware("http")
    async def local_only(request: Request, call_next):
        host = (request.url.hostname or "").strip("[]")
        if hosts is not None and host not in hosts:
            return refused(f"host '{host}' is not served (start sdflow-ui with --host to serve it)", 403)
        return await call_next(request)

    def find(job_id: str) -> Job:
        job = jobs.jobs.get(job_id)
        if job is None:
            raise RequestRefused(f"no job '{job_id}'", 404)
        return job

    @app.exception_handler(RequestRefused)
    async def on_refused(request: Request, exc: RequestRefused):
        return refused(str(exc), exc.status)

    @app.exception_handler(ValidationError)
    async def on_invalid(request: Request, exc: ValidationError):
        return problems_response(exc)

    async def json_body(request: Request) -> dict:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise RequestRefused("send the request body as JSON (Content-Type: application/json)", 415)
        try:
            body = json.loads(await request.body())
        except ValueError as exc:
            raise RequestRefused(f"body is not JSON: {exc}", 400) from None
        if not isinstance(body, dict):
            raise RequestRefused("body must be a JSON object", 400)
        return body

    @app.get("/api/workflows")
    def workflows():
        return [{"name": name, "description": summary} for name, summary in workflow_summaries()]

    @app.get("/api/workflows/{name}/form")
    def form(name: str):
        problem = check_workflow_name(name)
        if problem:
            raise ValidationError([problem])
        from ..workflows import workflow_path

        return [field.to_json() for field in load_form(workflow_path(name), jobs.compose([]))]

    @app.post("/api/uploads")
    async def upload(request: Request):
        kind = request.headers.get("content-type", "").split(";")[0].strip()
        if not (kind.startswith("image/") or kind == "application/octet-stream"):
            raise RequestRefused("send the image's bytes as the body (Content-Type: image/png, or "
                                 "application/octet-stream)", 415)
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > folders.max_upload_bytes:
                raise RequestRefused(f"upload is over the limit of {folders.max_upload_bytes} bytes", 413)
        return {"name": folders.store_upload(bytes(data))}

    @app.post("/api/jobs", status_code=202)
    async def submit(request: Request):
        body = await json_body(request)
        unknown = set(body) - {"workflow", "workflow_yaml", "overrides", "values"}
        if unknown:
            raise RequestRefused(f"unknown fields {sorted(unknown)} (give workflow or workflow_yaml, overrides, "
                                 "values)", 400)
        overrides, values = body.get("overrides") or [], body.get("values") or {}
        if not isinstance(overrides, list) or not isinstance(values, dict):
            raise RequestRefused("overrides is a list of KEY=VALUE strings and values an object", 400)
        run = RunRequest(body.get("workflow"), body.get("workflow_yaml"), overrides, values)
        job = await asyncio.to_thread(jobs.submit, run)  # validation may build a built-in model: seconds, once
        return job_json(jobs, job)

    @app.get("/api/jobs/{job_id}")
    def status(job_id: str):
        return job_json(jobs, find(job_id))

    @app.get("/api/jobs/{job_id}/events")
    async def events(job_id: str):
        job = find(job_id)

        async def stream():
            seen = -1
            while True:
                if job.version != seen:
                    seen = job.version
                    body = job_json(jobs, job)
                    yield f"event: {body['status']}\ndata: {json.dumps(body)}\n\n"
                    if body["status"] in ("done", "failed"):  # as sent: the job may have finished since
                        return
                await asyncio.sleep(0.05)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    @app.get("/api/jobs/{job_id}/preview")
    def preview(job_id: str):
        job = find(job_id)
        if job.preview is None:
            raise RequestRefused("no preview yet (set values.preview_every to a step count)", 404)
        buffer = io.BytesIO()
        job.preview.save(buffer, format="PNG")
        return Response(buffer.getvalue(), media_type="image/png", headers={"Cache-Control": "no-store"})

    @app.get("/api/jobs/{job_id}/images/{index}")
    def image(job_id: str, index: int):
        job = find(job_id)
        if not 0 <= index < len(job.images):
            raise RequestRefused(f"job '{job_id}' has no image {index} ({len(job.images)} written)", 404)
        return FileResponse(job.images[index], media_type="image/png")

    @app.get("/api/gallery")
    def gallery(limit: int = 100):
        return [{"file": folders.relative(found.path), "url": f"/api/files/{folders.relative(found.path)}",
                 "modified": found.modified, "metadata": found.metadata}
                for found in past_images(folders.gallery, limit=max(1, min(limit, 1000)))]

    @app.get("/api/files/{path:path}")
    def file(path: str):
        return FileResponse(folders.gallery_file(path))

    @app.post("/api/reproduce", status_code=202)
    async def again(request: Request):
        body = await json_body(request)
        source = folders.gallery_file(str(body.get("file", "")))
        try:
            text = png_workflow(source)
        except (ValueError, OSError) as exc:
            raise RequestRefused(str(exc), 422) from None
        job = await asyncio.to_thread(jobs.submit, RunRequest(workflow_yaml=text))
        return job_json(jobs, job)

    return app
