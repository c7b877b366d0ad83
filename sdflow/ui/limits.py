"""What a web request may touch: its folders, its uploads, the config keys it may set, the files it may name.

The CLI trusts its user with the machine; the server does not trust its requests. On top of the CLI's
own rules (node types from the registry only, no resolvers in workflow files or values), a request
- names workflows only by name, from the workflow folders (a path is refused);
- sets only the top-level config values and group presets a form can show, never ``hydra.*``, a model
  path or ``allow_pickle``;
- gives image files only as uploads the server stored (capped in bytes and pixels), by their names;
- loads models only from ``builtin:`` names and the sources the model presets name;
and everything the server reads back (gallery, images) lies inside its configured folders.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..engine import REGISTRY, Problem, Workflow, resolver_in
from ..help import CONF, config_values, group_choices

# What a request may give a node parameter follows the parameter's declared role (sdflow.engine.Param.role):
FILE_ROLE = "input_file"  # names files to read (an image, a mask, a depth map; lists of LoRA or embedding files,
#                           each {path: ...}): every file a request names must be one of its uploads (images)
SOURCE_ROLE = "model_source"  # names a model to load: builtin:NAME or a model preset's source ("" where the default)
NAME_ROLE = "model_config"  # takes a shipped name or a folder: only a name
TRUST_ROLE = "trust"  # loosens a safety rule (allow_pickle): a request leaves it off
GUARDED_ROLES = (FILE_ROLE, SOURCE_ROLE, NAME_ROLE, TRUST_ROLE)
# Config values only the server's own config sets: a path, a trust switch, the workflow itself.
SERVER_ONLY_KEYS = ("workflow", "allow_pickle", "refiner", "grid")
REQUEST_GROUPS = ("model", "scheduler", "runtime")
UPLOAD_NAME = re.compile(r"^[0-9a-f]{32}\.(png|jpg|webp|bmp|tif)$")
UPLOAD_FORMATS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "BMP": "bmp", "TIFF": "tif"}
WORKFLOW_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")
MAX_WORKFLOW_BYTES = 256 * 1024
SETTABLE = ("settable: the top-level values of sdflow/conf/config.yaml but " + ", ".join(SERVER_ONLY_KEYS)
            + f", and the presets of {', '.join(REQUEST_GROUPS)}; GET /api/workflows/NAME/form lists a workflow's")


class RequestRefused(ValueError):
    """A request the server will not serve (too large, not an image, outside its folders); ``status``: HTTP code."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


@dataclass
class Folders:
    """The server's folders: runs are written under ``outputs``; uploads kept in ``uploads``; the gallery
    lists (and the API serves) PNGs under ``gallery`` (``outputs`` and any others, read only)."""

    outputs: Path
    uploads: Path
    gallery: tuple[Path, ...] = ()
    max_upload_bytes: int = 20 * 2**20
    max_upload_pixels: int = 4096 * 4096
    _resolved: tuple[Path, ...] = field(default=(), init=False, repr=False)

    def __post_init__(self):
        self.outputs = Path(self.outputs).resolve()
        self.uploads = Path(self.uploads).resolve()
        self.gallery = tuple(dict.fromkeys([self.outputs] + [Path(g).resolve() for g in self.gallery]))

    def store_upload(self, data: bytes) -> str:
        """Keep an uploaded image; returns its name (content-addressed, so the same file gets the same name)."""
        from PIL import Image, UnidentifiedImageError

        if len(data) > self.max_upload_bytes:
            raise RequestRefused(f"upload of {len(data)} bytes is over the limit of {self.max_upload_bytes}", 413)
        try:
            with Image.open(io.BytesIO(data)) as image:  # reads the header only: the size before any pixels
                width, height, kind = image.width, image.height, image.format
                if width * height > self.max_upload_pixels:
                    raise RequestRefused(f"image of {width}x{height} pixels is over the limit of "
                                         f"{self.max_upload_pixels} pixels", 413)
                # decoded whole (its size is bounded above): a truncated JPEG is refused here, not when a run reads it
                image.load()
        except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
            raise RequestRefused(f"not a readable image: {exc}") from None
        if kind not in UPLOAD_FORMATS:
            raise RequestRefused(f"image format {kind} is not accepted (give {', '.join(UPLOAD_FORMATS)})")
        name = f"{hashlib.sha256(data).hexdigest()[:32]}.{UPLOAD_FORMATS[kind]}"
        self.uploads.mkdir(parents=True, exist_ok=True)
        target = self.uploads / name
        if not target.exists():
            fd, tmp = tempfile.mkstemp(prefix=".upload-", dir=self.uploads)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, target)
        return name

    def upload_path(self, name: str) -> Path | None:
        """The stored upload called ``name``, or None (not an upload name, or no such upload)."""
        if not isinstance(name, str) or not UPLOAD_NAME.match(name):
            return None
        path = self.uploads / name
        return path if path.is_file() else None

    def gallery_file(self, relative: str) -> Path:
        """The PNG ``relative`` names under one of the gallery folders; anything that leaves them is refused."""
        for root in self.gallery:
            candidate = (root / relative).resolve()  # symlinks followed: one pointing out is outside
            if inside(candidate, root) and candidate.suffix == ".png" and candidate.is_file():
                return candidate
        raise RequestRefused(f"no image '{relative}' in the server's folders", 404)

    def relative(self, path: Path) -> str:
        """``path`` as the API names it: relative to the gallery folder that holds it."""
        path = Path(path).resolve()
        for root in self.gallery:
            if inside(path, root):
                return path.relative_to(root).as_posix()
        raise RequestRefused(f"'{path}' is outside the server's folders", 404)


def inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_workflow_name(name: Any) -> Problem | None:
    from ..workflows import available_workflows

    if not isinstance(name, str) or not WORKFLOW_NAME.match(name):
        return Problem("request", None, "workflow", f"a workflow is given by name (letters, digits, '_', '-'), "
                       f"given {name!r}; send your own workflow's text as workflow_yaml")
    if name not in available_workflows():
        return Problem("request", None, "workflow", f"no workflow named '{name}' "
                       f"(known: {', '.join(available_workflows())})")
    return None


def settable_keys() -> set[str]:
    """Top-level config values a request may set."""
    return {key for key, _, _ in config_values()} - set(SERVER_ONLY_KEYS)


def check_overrides(overrides: list[str]) -> list[Problem]:
    """``KEY=VALUE`` overrides: a settable key, or a config group with one of its presets; no resolvers."""
    problems = []
    keys = settable_keys()
    for override in overrides:
        key, sep, value = str(override).partition("=")
        if not sep:
            problems.append(Problem("overrides", None, None, f"expected KEY=VALUE, given {override!r}"))
        elif key in REQUEST_GROUPS:
            if value not in group_choices(key):
                problems.append(Problem("overrides", None, key, f"'{value}' is not a {key} preset "
                                        f"(choose from {', '.join(group_choices(key))})"))
        elif key not in keys:
            problems.append(Problem("overrides", None, key, f"'{key}' cannot be set by a request ({SETTABLE})"))
        elif resolver_in(value):
            problems.append(Problem("overrides", None, key, f"'{resolver_in(value)}': no resolvers in values"))
    return problems


def check_values(values: dict[str, Any]) -> list[Problem]:
    """Typed values (JSON): settable keys, each a scalar or a list of scalars, text without resolvers."""
    problems = []
    keys = settable_keys()
    for key, value in values.items():
        items = value if isinstance(value, list) else [value]
        if key not in keys:
            problems.append(Problem("values", None, key, f"'{key}' cannot be set by a request ({SETTABLE})"))
        elif not all(v is None or isinstance(v, (str, int, float, bool)) for v in items):
            problems.append(Problem("values", None, key, f"expected a number, text, true/false or a list of them, "
                                    f"given {type(value).__name__}"))
        elif any(isinstance(v, str) and resolver_in(v) for v in items):
            problems.append(Problem("values", None, key, "no resolvers (${...}) in values"))
    return problems


def preset_sources() -> set[str]:
    """Every model source the model presets name (their path, upscaler, latent_upscaler, refiner)."""
    sources = set()
    for preset in (CONF / "model").glob("*.yaml"):
        data = yaml.safe_load(preset.read_text(encoding="utf-8")) or {}
        sources.update(v for k, v in data.items() if k in ("path", "upscaler", "latent_upscaler", "refiner") and v)
    return sources


def check_files(workflow: Workflow, folders: Folders, only: set[tuple[str, str]] | None = None) -> list[Problem]:
    """Files and models a workflow (after interpolation) would read: only uploads, builtin and preset models.

    ``only``: the (node, field) pairs to check (a server's own workflow: those that interpolate request
    values); None checks every one (a workflow a request sent). Runs before validation (plan's ``screen``),
    because validation itself opens the files and model folders it is given.
    """
    from ..models.sources import builtin_names

    problems = []
    sources = preset_sources() | {f"builtin:{name}" for name in builtin_names()}
    for entry in workflow.nodes.values():
        spec = REGISTRY.get(entry.type) if isinstance(entry.type, str) else None
        for name in _fields(entry, FILE_ROLE, only):
            for path in file_paths(entry.fields[name]):
                if not (isinstance(path, str) and inside(Path(path).resolve(), folders.uploads)):
                    problems.append(workflow.problem(entry.id, name, f"{path!r} is not an uploaded file: upload images "
                                                     "first (POST /api/uploads) and give the name it returns"))
        for name in _fields(entry, SOURCE_ROLE, only):
            value = entry.fields[name]
            default = spec.params[name].default if spec and name in spec.params else None
            if value not in sources and not (value == "" and default == ""):
                problems.append(workflow.problem(entry.id, name, f"model source {value!r} is not one the server "
                                                 "loads: builtin:NAME or a model preset's source (model=NAME)"))
        for name in _fields(entry, NAME_ROLE, only):
            if not isinstance(entry.fields[name], str) or not re.fullmatch(r"[A-Za-z0-9_]*", entry.fields[name]):
                problems.append(workflow.problem(entry.id, name, f"{entry.fields[name]!r}: give a shipped name, "
                                                 "not a folder"))
        for name in _fields(entry, TRUST_ROLE, only):
            if entry.fields[name] is not False:
                problems.append(workflow.problem(entry.id, name, f"{name} stays false for a request to the server"))
    return problems


def file_paths(value: Any) -> list:
    """The files a file parameter names: its value, or each entry (a path, or a mapping with a ``path``) of a list."""
    if value is None:
        return []
    if isinstance(value, list):
        return [entry.get("path") if isinstance(entry, dict) else entry for entry in value]
    return [value]


def _fields(entry, role: str, only: set | None) -> list[str]:
    """The fields of a workflow node whose parameters are declared with ``role`` (in ``only``, if given)."""
    spec = REGISTRY.get(entry.type) if isinstance(entry.type, str) else None
    names = spec.params_with_role(role) if spec is not None else ()
    return [name for name in names if name in entry.fields and (only is None or (entry.id, name) in only)]
