"""``sdflow-ui``: the web UI (gradio) and the HTTP API (FastAPI) on one local server.

The Run tab is the chosen workflow's form (sdflow/ui/form.py): a field for every config value its YAML
reads, typed from the node parameter it feeds. Run checks and validates the request exactly as the API
does, shows each problem beside the field it names, then follows the queued job: step, previews, images.
The Past runs tab lists the images in the output folders with what each records, and runs any again.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # a local tool: nothing is reported anywhere

import gradio as gr  # noqa: E402
import yaml  # noqa: E402
from PIL import Image  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from ..engine import ValidationError  # noqa: E402
from ..help import CONF, config_values, workflow_summaries  # noqa: E402
from ..workflows import workflow_path  # noqa: E402
from .form import Field, config_value, field_of, load_form, parse_seeds, sweep_values  # noqa: E402
from .gallery import past_images, png_workflow, read_metadata  # noqa: E402
from .http import LOCAL_HOSTS, create_api  # noqa: E402
from .jobs import Job, JobQueue, RunRequest  # noqa: E402
from .limits import Folders, RequestRefused  # noqa: E402

log = logging.getLogger("sdflow.ui")
FOLLOW_SECONDS = 0.5  # longest wait between two updates of a running job's status


def model_keys() -> set[str]:
    """Config values whose default comes from the model preset (width, height, guidance, ...)."""
    raw = OmegaConf.to_container(OmegaConf.load(CONF / "config.yaml"), resolve=False)
    return {k for k, v in raw.items() if isinstance(v, str) and "${" in v and "model." in v}


class Form:
    """Every workflow's fields, one gradio component per (key, kind), shown for the workflows that read it."""

    def __init__(self, jobs: JobQueue):
        self.jobs = jobs
        config = jobs.compose([])
        self.by_workflow: dict[str, list[Field]] = {}
        for name, _ in workflow_summaries():
            try:
                self.by_workflow[name] = load_form(workflow_path(name), config)
            except (ValidationError, OSError) as exc:  # a broken workflow file is listed, with why, when chosen
                log.warning("workflow %s: %s", name, exc)
                self.by_workflow[name] = []
        self.fields: dict[tuple[str, str], Field] = {}
        for fields in self.by_workflow.values():
            for f in fields:
                self.fields.setdefault((f.key, f.kind), f)
        self.components: dict[tuple[str, str], gr.components.Component] = {}
        self._configs: dict[str | None, object] = {}  # model preset -> its composed config
        self.errors: dict[str, gr.Markdown] = {}

    def render(self, workflow: str) -> None:
        """Text and image fields take a line each; the short ones (numbers, choices, seeds) share rows of three."""
        shown = {(f.key, f.kind) for f in self.by_workflow.get(workflow, [])}
        order = [key for key, _, _ in config_values()]
        fields = sorted(self.fields.values(), key=lambda f: (f.kind != "group", order.index(f.key)
                                                             if f.key in order else len(order)))
        while fields:
            wide = fields[0].kind in ("text", "file")
            short = itertools.takewhile(lambda f: f.kind not in ("text", "file"), fields)
            line = fields[:1] if wide else list(short)[:3]
            fields = fields[len(line):]
            with gr.Row(equal_height=False):
                for f in line:
                    with gr.Column(min_width=160):
                        self.components[f.key, f.kind] = component(f, (f.key, f.kind) in shown)
                        if f.key not in self.errors:
                            self.errors[f.key] = gr.Markdown("", visible=False, elem_id=f"error-{f.key}",
                                                             elem_classes=["field-error"])

    def values(self, workflow: str, given: list) -> tuple[dict, dict[str, str]]:
        """(typed values for the request, problems found while reading them, by key) from the components' values."""
        keys = list(self.components)
        shown = {(f.key, f.kind): f for f in self.by_workflow.get(workflow, [])}
        values, problems = {}, {}
        for (key, kind), value in zip(keys, given):
            if (key, kind) not in shown:
                continue
            if kind == "file":
                if value:
                    try:
                        values[key] = self.jobs.folders.store_upload(Path(value).read_bytes())
                    except RequestRefused as exc:
                        problems[key] = str(exc)
                else:
                    values[key] = None
            elif kind == "seeds":
                values[key] = parse_seeds(value)
            elif kind == "list":
                try:
                    values[key] = yaml.safe_load(value or "[]")
                except yaml.YAMLError:
                    values[key] = value  # validation says what it expected
            elif kind == "int" and isinstance(value, float) and value.is_integer():
                values[key] = int(value)
            else:
                values[key] = value
        return values, problems

    def changed(self, values: dict) -> dict:
        """Only the values that differ from the config's for the chosen model, so the rest stay as the config
        computes them (``refine_seed: ${seed}`` keeps following the seed)."""
        model = values.get("model")
        if model not in self._configs:
            self._configs[model] = self.jobs.compose([f"model={model}"] if model else [])
        config = self._configs[model]
        kinds = {key: kind for key, kind in self.components}
        return {key: value for key, value in values.items()
                if kinds.get(key) in ("group", "file") or key not in config or value != config_value(config, key)}


def component(f: Field, visible: bool):
    """The gradio component of a form field (ranges said, not enforced: validation names a value out of range)."""
    label = f.key
    info = f.doc
    if f.minimum is not None or f.maximum is not None:
        info = f"{info} (range {_num(f.minimum)} to {_num(f.maximum)})".strip()
    common = {"label": label, "info": info, "visible": visible, "elem_id": f"field-{f.key}"}
    if f.kind in ("group", "choice"):
        return gr.Dropdown(choices=list(f.choices or ()), value=f.default, **common)
    if f.kind == "bool":
        return gr.Checkbox(value=bool(f.default), label=label, info=info, visible=visible, elem_id=f"field-{f.key}")
    if f.kind in ("int", "float"):
        return gr.Number(value=f.default, precision=0 if f.kind == "int" else None, **common)
    if f.kind == "file":
        return gr.Image(type="filepath", label=f"{label} (upload)", visible=visible, elem_id=f"field-{f.key}",
                        sources=["upload", "clipboard"], height=160)
    if f.kind == "seeds":
        return gr.Textbox(value=json.dumps(f.default) if isinstance(f.default, list) else str(f.default),
                          placeholder="7, or 1, 2, 3 (one image per seed)", **common)
    if f.kind == "list":
        return gr.Textbox(value=json.dumps(f.default), placeholder="a YAML list: [a, b]", **common)
    return gr.Textbox(value="" if f.default is None else str(f.default), lines=2 if "prompt" in f.key else 1, **common)


def _num(value) -> str:
    return "any" if value is None else f"{value:g}"


def status_text(jobs: JobQueue, job: Job) -> str:
    if job.status == "queued":
        return f"**queued** ({jobs.ahead_of(job)} ahead)"
    if job.status == "running":
        return f"**running** {job.node}: step {job.step}/{job.total}" if job.total else "**running**: loading"
    if job.status == "failed":
        return f"**failed**: {job.error}"
    files = ", ".join(p.name for p in job.images)
    folder = job.output_dir.relative_to(Path.cwd()) if job.output_dir.is_relative_to(Path.cwd()) else job.output_dir
    warnings = "".join(f"\n\nwarning: {w}" for w in (job.record.warnings if job.record is not None else []))
    return (f"**done**: {len(job.images)} image{'s' if len(job.images) != 1 else ''} in `{folder}`: "
            f"{files}{warnings}")


def enlarged(image, size: int = 256):
    """A small preview (the default model's are 64 px) scaled up by whole pixels, so it can be seen."""
    if image is None or max(image.size) >= size:
        return image
    factor = size // max(image.size)
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def follow(jobs: JobQueue, job: Job):
    """(status, preview, images, metadata) after every change of ``job``, until it is finished."""
    version = -1
    while True:
        version = jobs.wait(job, version, FOLLOW_SECONDS)
        finished = job.finished  # read before the yield: the job may finish while gradio sends this update
        images = [str(p) for p in job.images] if job.status == "done" else None
        metadata = read_metadata(job.images[0])[0] if job.images else None
        yield status_text(jobs, job), enlarged(job.preview), images, metadata
        if finished:
            return


def build_ui(jobs: JobQueue) -> gr.Blocks:
    form = Form(jobs)
    names = list(form.by_workflow)
    first = "text2img" if "text2img" in names else names[0]
    descriptions = dict(workflow_summaries())
    per_model = model_keys()
    with gr.Blocks(title="sdflow") as ui:
        gr.Markdown("## sdflow\nDeclarative Stable Diffusion workflows: pick one, fill in its values, run.")
        with gr.Tab("Run"):
            with gr.Row():
                with gr.Column(scale=1):
                    workflow = gr.Dropdown(names, value=first, label="workflow", elem_id="workflow",
                                           info="built-in, and from SDFLOW_WORKFLOW_PATH folders")
                    description = gr.Markdown(descriptions.get(first, ""), elem_id="description")
                    form.render(first)
                    with gr.Accordion("Sweep: several seeds or prompts as one batch", open=False):
                        sweep_seeds = gr.Textbox(label="seeds", placeholder="0, 1, 2, 3", elem_id="sweep-seeds")
                        sweep_prompts = gr.Textbox(label="prompts, one per line", lines=3, elem_id="sweep-prompts")
                with gr.Column(scale=1):
                    run = gr.Button("Run", variant="primary", elem_id="run")
                    with gr.Row():
                        preview_every = gr.Number(value=5, precision=0, label="preview every N steps (0: none)",
                                                  elem_id="preview-every")
                        preview_exact = gr.Checkbox(value=False, label="exact previews (VAE decode)",
                                                    elem_id="preview-exact")
                    problems = gr.Markdown("", elem_id="problems")
                    status = gr.Markdown("", elem_id="status")
                    preview = gr.Image(label="step preview", type="pil", format="png", interactive=False,
                                       elem_id="preview", height=256)
                    result = gr.Gallery(label="images", elem_id="result", columns=4, height="auto", format="png",
                                        preview=False, object_fit="contain")
                    metadata = gr.JSON(label="metadata (sdflow text chunk of the first image)", elem_id="metadata")
        with gr.Tab("Past runs"):
            refresh = gr.Button("Refresh", elem_id="refresh")
            past = gr.Gallery(label="images in the output folders, newest first", columns=8, height=360,
                              elem_id="past", allow_preview=False)
            past_paths = gr.State([])
            chosen = gr.State(None)
            with gr.Row():
                with gr.Column():
                    past_metadata = gr.JSON(label="sdflow (metadata)")
                with gr.Column():
                    past_workflow = gr.Code(label="sdflow_workflow (runs as is)", language="yaml")
            again = gr.Button("Run again with these settings", elem_id="again")
            again_status = gr.Markdown("")
            again_images = gr.Gallery(label="made again", columns=4, height=200, format="png")

        inputs = list(form.components.values())
        errors = list(form.errors.values())

        def choose_workflow(name):
            shown = {(f.key, f.kind) for f in form.by_workflow.get(name, [])}
            return ([descriptions.get(name, "")] + [gr.update(visible=key in shown) for key in form.components]
                    + [gr.update(value="", visible=False) for _ in errors] + [""])

        workflow.change(choose_workflow, workflow, [description] + inputs + errors + [problems],
                        api_visibility="private")

        model_field = form.components.get(("model", "group"))
        if model_field is not None:
            def choose_model(model):
                config = jobs.compose([f"model={model}"])
                return [gr.update(value=OmegaConf.select(config, key)) if key in per_model else gr.update()
                        for key, _ in form.components]

            model_field.change(choose_model, model_field, inputs, api_visibility="private")

        def start(name, seeds, prompts, every, exact, *given):
            values, read_problems = form.values(name, list(given))
            values = form.changed(sweep_values(values, seeds or "", prompts or ""))
            values["preview_every"] = int(every or 0)
            values["preview_exact"] = bool(exact)
            fields = form.by_workflow.get(name, [])
            messages: dict[str, list[str]] = {key: [msg] for key, msg in read_problems.items()}
            general: list[str] = []
            job = None
            if not read_problems:
                try:
                    job = jobs.submit(RunRequest(workflow=name, values=values))
                except ValidationError as exc:
                    for problem in exc.problems:
                        key = field_of(problem, fields)
                        text = problem.message if key else str(problem)
                        (messages.setdefault(key, []) if key else general).append(text)
            error_updates = [gr.update(value="\n\n".join(f"⚠ {m}" for m in messages.get(key, [])),
                                       visible=key in messages) for key in form.errors]
            summary = "" if job else "**Not run**: " + (
                f"{sum(map(len, messages.values())) + len(general)} problem(s), shown beside their fields."
                + "".join(f"\n\n- {g}" for g in general))
            if job is None:
                yield error_updates + [summary, "", None, None, None]
                return
            for state, image, images, record in follow(jobs, job):
                yield error_updates + [summary, state, image, images, record]

        run.click(start, [workflow, sweep_seeds, sweep_prompts, preview_every, preview_exact] + inputs,
                  errors + [problems, status, preview, result, metadata], concurrency_limit=None,
                  api_visibility="private")

        def list_past():
            found = past_images(jobs.folders.gallery, limit=200)
            items = [(str(p.path), p.path.parent.name + "/" + p.path.name) for p in found]
            return items, [str(p.path) for p in found]

        def select_past(paths, event: gr.SelectData):
            path = paths[event.index]
            record, workflow_yaml = read_metadata(path)
            return record, workflow_yaml, path

        def run_again(path):
            if not path:
                yield "choose an image first", None
                return
            if not read_metadata(path)[1]:  # a sweep's grid: it holds its jobs' images, not a workflow
                yield "**Not run**: this is a sweep's grid; choose one of its images to run again", None
                return
            try:
                job = jobs.submit(RunRequest(workflow_yaml=png_workflow(path)))
            except ValidationError as exc:
                yield "**Not run**: " + "".join(f"\n\n- {p}" for p in exc.problems), None
                return
            for state, _, images, _ in follow(jobs, job):
                yield state, images

        refresh.click(list_past, None, [past, past_paths], api_visibility="private")
        ui.load(list_past, None, [past, past_paths], api_visibility="private")
        past.select(select_past, past_paths, [past_metadata, past_workflow, chosen], api_visibility="private")
        again.click(run_again, chosen, [again_status, again_images], concurrency_limit=None, api_visibility="private")
    return ui


def create_app(folders: Folders, hosts: tuple[str, ...] | None = LOCAL_HOSTS):
    """The server's ASGI app: the API under /api, the UI at /. Returns (app, the job queue).

    ``hosts``: the Host names requests may name (None: any, for a server exposed on purpose)."""
    jobs = JobQueue(folders)
    app = create_api(jobs, hosts)
    ui = build_ui(jobs)
    app = gr.mount_gradio_app(app, ui, path="/", allowed_paths=[str(p) for p in folders.gallery],
                              max_file_size=folders.max_upload_bytes, footer_links=[])
    return app, jobs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="sdflow-ui", description="sdflow's web UI and HTTP API on one local server.")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; there is no login)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--output-dir", default="outputs", help="runs go under OUTPUT_DIR/ui/ (default outputs)")
    parser.add_argument("--gallery", action="append", default=[],
                        help="another folder of sdflow images to list under Past runs (repeatable; default: multirun)")
    parser.add_argument("--uploads", default=None, help="where uploaded images are kept (default OUTPUT_DIR/.uploads)")
    parser.add_argument("--max-upload-mb", type=float, default=20.0)
    parser.add_argument("--max-upload-pixels", type=int, default=4096 * 4096)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from ..runtime_env import quiet_third_party

    quiet_third_party()
    output = Path(args.output_dir)
    folders = Folders(output, Path(args.uploads) if args.uploads else output / ".uploads",
                      tuple(args.gallery or ["multirun"]), int(args.max_upload_mb * 2**20), args.max_upload_pixels)
    exposed = args.host not in LOCAL_HOSTS
    if exposed:
        log.warning("listening on %s: anyone who can reach it can run jobs and read the output folders (no login)",
                    args.host)
    app, _ = create_app(folders, None if exposed else LOCAL_HOSTS)
    import uvicorn

    print(f"sdflow-ui: http://{args.host}:{args.port}/  (API: /api, docs: /api/docs); Ctrl-C stops it", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
