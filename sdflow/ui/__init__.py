"""The web UI (``sdflow-ui``) and HTTP API, and the step previews the CLI shares with them.

``previews`` (step previews), ``form`` (a workflow's form from its declarations), ``limits`` (what a
request may touch), ``jobs`` (validated, queued runs), ``gallery`` (past runs, ``reproduce``), ``http``
(the FastAPI app) and ``app`` (the gradio UI and the ``sdflow-ui`` entry point). Only ``app`` imports gradio.
"""
