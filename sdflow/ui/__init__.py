"""The web UI (``sdflow-ui``) and HTTP API: a front that checks requests and hands them to the run layer.

``form`` (a workflow's form from its declarations), ``limits`` (what a request may touch), ``jobs`` (validated,
queued runs), ``gallery`` (past runs), ``http`` (the FastAPI app) and ``app`` (the gradio UI and the
``sdflow-ui`` entry point). Only ``app`` imports gradio.
"""
