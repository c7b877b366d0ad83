"""The web UI (``sdflow-ui``) and HTTP API: a front that checks requests and hands them to the run layer.

``form`` (a workflow's form from its declarations), ``limits`` (what a request may touch), ``jobs`` (validated,
queued runs), ``gallery`` (past runs), ``http`` (the FastAPI app) and ``app`` (the gradio UI and the server).
Only ``app`` and ``http`` import the web stack (gradio, FastAPI, uvicorn: the ui extra); ``main`` checks it is there.
"""

WEB_STACK = ("gradio", "fastapi", "uvicorn")  # the ui extra's modules


def main(argv: list[str] | None = None) -> None:
    """``sdflow-ui``; without the ui extra, one line that says how to install it (exit status 1)."""
    from ..extras import missing_extra

    missing = missing_extra("ui", WEB_STACK, "sdflow-ui")
    if missing:
        raise SystemExit(missing)
    from .app import main as serve

    serve(argv)
